"""The station as a real process against the real embedded Kafka-compatible broker.

upload -> stored -> announcement -> incremental training -> update on the topic, decoded and
checked; SIGTERM stops it cleanly; SIGKILL after an ack loses nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from evfl.brokers import free_port
from models.constraints import constraints_for
from models.datasets.record import iter_sessions
from proto import sessions_pb2, station_pb2, station_pb2_grpc
from proto.constraints_codec import constraints_to_proto
from proto.federation_codec import build_announcement, read_update
from proto.grpc_channel import open_channel
from proto.kafka import (
    Publisher,
    Subscriber,
    announce_topic,
    ensure_topics,
    task_topic_specs,
    updates_topic,
)
from proto.session_codec import session_to_proto

READY_TIMEOUT_S = 180  # TensorFlow's import on a busy 2-core machine


class FogProcess:
    def __init__(self, workdir: Path, station: str, bootstrap: str, task: str) -> None:
        self.workdir = workdir
        self.metrics_port = free_port()
        self.config = workdir / "fog.toml"
        self.config.write_text(
            f'station_id = "{station}"\n'
            f'state_dir = "{workdir / "state"}"\n'
            'listen = "127.0.0.1:0"\n'
            f'metrics_listen = "127.0.0.1:{self.metrics_port}"\n'
            f'tasks = ["{task}"]\n'
            "[kafka]\n"
            f'bootstrap_servers = "{bootstrap}"\n'
            "enable_idempotence = false\n"
            "[training]\n"
            "epochs = 2\n"
            "time_budget_s = 60\n"
        )
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> FogProcess:
        ready = self.workdir / "ready"
        ready.unlink(missing_ok=True)
        log = open(self.workdir / "fog.log", "ab")  # noqa: SIM115 (kept open for the child)
        env = {**os.environ, "EVFL_READY_FILE": str(ready)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "evfl.cli",
                "fog",
                "serve",
                "--config",
                str(self.config),
                "--log-format",
                "text",
            ],
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"fog service did not start:\n{self.log_tail()}")
            time.sleep(0.2)
        self.port = int(ready.read_text())
        return self

    def log_tail(self, n: int = 40) -> str:
        path = self.workdir / "fog.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""
        )

    def stub(self) -> station_pb2_grpc.StationServiceStub:
        return station_pb2_grpc.StationServiceStub(open_channel(f"127.0.0.1:{self.port}"))

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def fog(tmp_path, kafka, energy_global):
    task = f"it-{uuid.uuid4().hex[:8]}"
    process = FogProcess(tmp_path, energy_global.station, kafka.bootstrap_servers, task)
    process.task = task
    yield process
    process.kill()


def _upload(stub, sessions):
    protos = [session_to_proto(s) for s in sessions]
    batches = (
        sessions_pb2.SessionBatch(sessions=protos[i : i + 100]) for i in range(0, len(protos), 100)
    )
    return stub.UploadSessions(batches, timeout=60)


def test_upload_announce_train_and_update_on_the_topic(fog, kafka, energy_global):
    fog.start()
    stub = fog.stub()
    sessions = list(iter_sessions(energy_global.station_sessions.head(500)))
    ack = _upload(stub, sessions)
    assert len(ack.committed) == 500

    settings = kafka.settings()
    ensure_topics(settings, task_topic_specs(fog.task))
    g = energy_global
    now = int(time.time() * 1000)
    announcement, chunks = build_announcement(
        fog.task,
        1,
        1,
        g.config.to_dict(),
        g.preprocessing.to_dict(),
        g.weights,
        constraints_to_proto(constraints_for(g.preprocessing, 50)),
        (float("inf"), float("inf")),
        now + 300_000,
        now,
    )
    assert not chunks
    with Publisher(settings) as publisher:
        publisher.publish(announce_topic(fog.task), announcement.SerializeToString())

    with Subscriber(settings, f"check-{uuid.uuid4().hex[:6]}") as updates:
        updates.assign_from_beginning([updates_topic(fog.task)])
        deadline = time.monotonic() + 180
        record = None
        while record is None and time.monotonic() < deadline:
            record = updates.poll(1.0)
    assert record is not None, f"no update on the topic:\n{fog.log_tail()}"
    update = read_update(record.value)
    msg = update.message
    assert (msg.task_id, msg.station_id, msg.base_version) == (fog.task, g.station, 1)
    assert record.key == g.station.encode()
    assert 0 < msg.sample_count <= 500
    assert [m.exit for m in msg.metrics] == ["edge", "fog", "cloud"]
    assert all(m.count > 0 and m.mae > 0 for m in msg.metrics)
    assert [w.shape for w in update.weights] == [w.shape for w in g.weights]

    status = stub.Status(station_pb2.StatusRequest(), timeout=10)
    (task,) = status.tasks
    assert (task.trained_version, task.serving_version, task.updates_sent) == (1, 1, 1)
    assert task.last_compatibility.startswith("compatible: ")

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{fog.metrics_port}/metrics").read()
    assert b"evfl_fog_sessions_stored_total 500.0" in metrics
    assert b"evfl_fog_updates_sent_total 1.0" in metrics

    assert fog.terminate() == 0
    assert "stopped" in fog.log_tail()


def test_sigkill_after_an_ack_loses_nothing_and_a_resend_duplicates_nothing(fog, energy_global):
    fog.start()
    sessions = list(iter_sessions(energy_global.station_sessions.head(400)))
    ack = _upload(fog.stub(), sessions[:300])
    assert len(ack.committed) == 300
    fog.kill()  # SIGKILL, right after the ack

    fog.start()
    stub = fog.stub()
    assert stub.Status(station_pb2.StatusRequest(), timeout=10).sessions_stored == 300
    again = _upload(stub, sessions)  # the agent re-sends everything it has not seen acked
    assert len(again.duplicate) == 300 and len(again.committed) == 100
    assert stub.Status(station_pb2.StatusRequest(), timeout=10).sessions_stored == 400
