"""The station as a real process against the real embedded Kafka-compatible broker.

upload -> stored -> announcement -> incremental training -> update on the topic, decoded and
checked; SIGTERM stops it cleanly; SIGKILL after an ack loses nothing.
"""

from __future__ import annotations

import time
import urllib.request
import uuid

import pytest

from models.constraints import constraints_for
from models.datasets.record import iter_sessions
from proto import sessions_pb2, station_pb2
from proto.constraints_codec import constraints_to_proto
from proto.federation_codec import build_announcement, read_update
from proto.kafka import (
    Publisher,
    Subscriber,
    announce_topic,
    ensure_topics,
    task_topic_specs,
    updates_topic,
)
from proto.session_codec import session_to_proto
from tests.integration.processes import fog_program, station_stub


@pytest.fixture
def fog(tmp_path, kafka, energy_global):
    task = f"it-{uuid.uuid4().hex[:8]}"
    program = fog_program(tmp_path, energy_global.station, kafka.bootstrap_servers, [task])
    program.task = task
    yield program
    program.kill()


def _upload(stub, sessions):
    protos = [session_to_proto(s) for s in sessions]
    batches = (
        sessions_pb2.SessionBatch(sessions=protos[i : i + 100]) for i in range(0, len(protos), 100)
    )
    return stub.UploadSessions(batches, timeout=60)


def test_upload_announce_train_and_update_on_the_topic(fog, kafka, energy_global):
    fog.start()
    stub = station_stub(fog.port)
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
    ack = _upload(station_stub(fog.port), sessions[:300])
    assert len(ack.committed) == 300
    fog.kill()  # SIGKILL, right after the ack

    fog.start()
    stub = station_stub(fog.port)
    assert stub.Status(station_pb2.StatusRequest(), timeout=10).sessions_stored == 300
    again = _upload(stub, sessions)  # the agent re-sends everything it has not seen acked
    assert len(again.duplicate) == 300 and len(again.committed) == 100
    assert stub.Status(station_pb2.StatusRequest(), timeout=10).sessions_stored == 400
