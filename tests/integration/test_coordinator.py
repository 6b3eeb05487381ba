"""The coordinator with three real stations, the embedded Kafka-compatible broker and MQTT.

Real processes on loopback: one coordinator, one fog service per station for the three busiest
Dundee charge points, each fed its own real sessions in time order, a chunk per round (the
data keeps arriving, as in the Kafka-ML evaluation). The coordinator is killed with SIGKILL in
the middle of round 2 and restarted. Then: every version 0..3 exists exactly once, each
aggregated version equals FedAvg computed directly from the updates the registry recorded,
the global model beats the initial one on held-out data, and the last version's signed
partitions are retained on MQTT.
"""

from __future__ import annotations

import itertools
import time
import uuid

import numpy as np
import pytest

from coordinator.registry import Registry
from models.datasets.record import iter_sessions
from proto import sessions_pb2
from proto.federation_codec import read_update
from proto.mqtt import MqttSettings, MqttSubscriber, manifest_topic
from proto.partition_messages import read_manifest
from proto.session_codec import session_to_proto
from proto.signing import generate_keypair, load_keyring
from tests.integration.processes import Program, fog_program, station_status, station_stub

ROUNDS = 3
STATIONS = 3


def _chunks(dundee, station, cutoff, n):
    """The station's real sessions before the held-out period, in time order, in n chunks."""
    s = dundee.sessions
    mine = s[(s["station_id"] == station) & (s["start"] < cutoff)].sort_values("start")
    bounds = np.linspace(0, len(mine), n + 1).astype(int)
    return [list(iter_sessions(mine.iloc[a:b])) for a, b in itertools.pairwise(bounds)]


def _upload(port, sessions):
    protos = [session_to_proto(x) for x in sessions]
    batches = (
        sessions_pb2.SessionBatch(sessions=protos[i : i + 200]) for i in range(0, len(protos), 200)
    )
    ack = station_stub(port).UploadSessions(batches, timeout=60)
    assert len(ack.committed) == len(sessions), ack.rejected[:3]


def _wait(what, predicate, timeout, programs):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for p in programs:
            if p.proc is not None and p.proc.poll() not in (None, 0):
                pytest.fail(f"{p.name} exited while waiting for {what}:\n{p.log_tail()}")
        time.sleep(0.5)
    logs = "\n\n".join(f"--- {p.name}\n{p.log_tail(25)}" for p in programs)
    pytest.fail(f"timed out waiting for {what}\n{logs}")


@pytest.mark.slow
def test_rounds_with_three_stations_survive_a_coordinator_kill(tmp_path, kafka, mqtt, dundee):
    task = f"it-{uuid.uuid4().hex[:8]}"
    sessions = dundee.sessions
    stations = [str(s) for s in sessions["station_id"].value_counts().index[:STATIONS]]
    starts = sessions["start"].sort_values()
    cutoff = starts.iloc[int(0.8 * len(starts))]  # the task's time split holds out what follows
    chunks = {s: _chunks(dundee, s, cutoff, ROUNDS + 1) for s in stations}

    key, _public = generate_keypair(tmp_path / "keys", "coordinator-it")
    (tmp_path / "task.toml").write_text(
        f'task_id = "{task}"\ndataset = "dundee"\ntarget = "energy"\nsplit = "time"\n'
        f"rounds = {ROUNDS}\nstations = {stations!r}\nmin_updates = {STATIONS}\n".replace("'", '"')
        + "round_deadline_s = 600\nreannounce_s = 5\nmin_samples = 50\n"
    )
    (tmp_path / "coordinator.toml").write_text(
        f'registry_dir = "{tmp_path / "registry"}"\ncloud_listen = "127.0.0.1:0"\n'
        f'[kafka]\nbootstrap_servers = "{kafka.bootstrap_servers}"\nenable_idempotence = false\n'
        f'[mqtt]\nhost = "{mqtt.host}"\nport = {mqtt.port}\n'
        f'[signing]\nkey_file = "{key}"\nkey_id = "coordinator-it"\n'
    )
    argv = [
        "coordinator",
        "run",
        "--task",
        str(tmp_path / "task.toml"),
        "--config",
        str(tmp_path / "coordinator.toml"),
    ]
    coordinator = Program(tmp_path / "coordinator", argv, "coordinator").start()
    fogs = [
        fog_program(tmp_path / f"fog{i}", s, kafka.bootstrap_servers, [task], coordinator.port)
        for i, s in enumerate(stations)
    ]
    programs = [coordinator, *fogs]
    try:
        for fog in fogs:
            fog.start()
        for fog, station in zip(fogs, stations, strict=True):
            _upload(fog.port, chunks[station][0])

        def trained(version):
            # Every station, including one that has not seen an announcement yet: uploading
            # round r's data before a station trained on r-1 would fold it into that round.
            statuses = [station_status(f.port).tasks for f in fogs]
            return all(tasks and tasks[0].trained_version >= version for tasks in statuses)

        for r in range(1, ROUNDS + 1):
            # Every station trained on version r-1 and sent its update for round r.
            _wait(f"updates for round {r}", lambda r=r: trained(r - 1), 300, programs)
            for fog, station in zip(fogs, stations, strict=True):
                _upload(fog.port, chunks[station][r])
            if r == 2:
                coordinator.kill()  # SIGKILL mid-round: round 2's updates are on the topic
                coordinator.start()
        assert coordinator.wait(timeout=600) == 0, coordinator.log_tail()
        log = coordinator.log_path.read_text()
        assert "round 2: resumed with" in log or "round 2: accepted" in log

        with Registry(tmp_path / "registry") as registry:
            versions = registry.versions(task)
            assert [v.version for v in versions] == list(range(ROUNDS + 1))
            assert all(v.update_count == STATIONS for v in versions[1:])
            for r in range(1, ROUNDS + 1):
                stored = registry.round_updates(task, r)
                assert sorted(u.station_id for u in stored) == sorted(stations)
                updates = [read_update(u.payload) for u in stored]
                counts = np.array([u.message.sample_count for u in updates], np.float64)
                got = registry.version(task, r).weights()
                for i, w in enumerate(got):
                    direct = np.average(
                        np.stack([u.weights[i] for u in updates]).astype(np.float64),
                        axis=0,
                        weights=counts,
                    )
                    np.testing.assert_allclose(w, direct, rtol=1e-5, atol=1e-6)
            first, last = versions[0].metrics["cloud"], versions[-1].metrics["cloud"]
            assert last["mae"] < first["mae"]
            assert registry.tasks()[0].status == "ended"

        for fog in fogs:
            (state,) = station_status(fog.port).tasks
            assert state.trained_version == ROUNDS - 1 and state.updates_sent == ROUNDS
            assert state.last_compatibility == "task ended"

        ring = load_keyring(tmp_path / "keys")
        topics = [manifest_topic(task, p) for p in ("edge", "fog", "cloud")]
        with MqttSubscriber(MqttSettings(host=mqtt.host, port=mqtt.port), topics) as sub:
            sub.connect()
            seen = {}
            deadline = time.monotonic() + 20
            while len(seen) < 3 and time.monotonic() < deadline:
                message = sub.get(timeout=1)
                if message is not None:
                    manifest = read_manifest(message.payload, ring)
                    seen[manifest.partition] = manifest
        assert {p: m.version for p, m in seen.items()} == {
            p: ROUNDS for p in ("edge", "fog", "cloud")
        }
        assert len(seen["edge"].exit_policy.thresholds) == 2
    finally:
        for p in programs:
            p.kill()
