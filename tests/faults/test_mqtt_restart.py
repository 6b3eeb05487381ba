"""Fault: the MQTT broker restarts empty (Mosquitto without persistence) between versions.

A real coordinator ships version 1's signed partitions as retained MQTT messages and a real
agent installs its edge partition. Then the broker restarts on the same port with nothing
retained and no sessions. A car that comes online now would find nothing to install.

Nothing lost: the coordinator notices its publisher connected afresh and ships the latest
version again, so a second agent started after the restart installs version 1 (before any
version 2 exists); the first agent re-subscribed on its own, and when version 2 is committed
both agents converge to it.
"""

from __future__ import annotations

import time

from proto import agent_pb2, agent_pb2_grpc
from proto.grpc_channel import open_channel
from proto.mqtt import MqttSettings, MqttSubscriber, manifest_topic
from proto.partition_messages import read_manifest
from proto.signing import generate_keypair, load_keyring
from tests.faults.conftest import report, wait_for
from tests.faults.federation_run import FederationRun

ROUNDS = 2
PARTITIONS = ("edge", "fog", "cloud")


def _retained(mqtt, task: str, keys) -> dict[str, int]:
    """The partition versions the broker holds as retained manifests right now."""
    ring = load_keyring(keys)
    topics = [manifest_topic(task, p) for p in PARTITIONS]
    seen: dict[str, int] = {}
    with MqttSubscriber(MqttSettings(host=mqtt.host, port=mqtt.port), topics) as sub:
        deadline = time.monotonic() + 3
        while len(seen) < len(PARTITIONS) and time.monotonic() < deadline:
            message = sub.get(timeout=0.5)
            if message is not None and message.retain:
                manifest = read_manifest(message.payload, ring)
                seen[manifest.partition] = manifest.version
    return seen


def _agent_version(agent, task: str) -> int:
    stub = agent_pb2_grpc.VehicleAgentStub(open_channel(f"unix:{agent.workdir / 'agent.sock'}"))
    status = stub.Status(agent_pb2.AgentStatusRequest(), timeout=10)
    return next((m.version for m in status.models if m.task_id == task), -1)


def test_mqtt_restarting_empty_agents_still_converge_to_the_latest_version(
    tmp_path, kafka, mqtt, dundee
):
    from evfl.launch import agent_program

    keys = tmp_path / "keys"
    private, _public = generate_keypair(keys, "coordinator-fault")
    broker = (mqtt.host, mqtt.port)
    run = FederationRun(
        tmp_path, dundee, kafka.bootstrap_servers, ROUNDS, broker, private, stations=1
    )
    cars = [
        agent_program(tmp_path / f"car{i}", f"car-{i}", [run.task], "127.0.0.1:1", broker, keys)
        for i in range(2)
    ]
    programs = [*run.programs, *cars]
    try:
        cars[0].start(wait_ready=False)
        run.start_stations(coordinator_too=True)
        run.upload(0, 0)
        cars[0].wait_ready()
        wait_for("car 0 to install v1", lambda: _agent_version(cars[0], run.task) == 1, programs)
        before = {
            "retained_manifests": len(_retained(mqtt, run.task, keys)),
            "ships_of_v1": run.log_count(r"version 1: partitions on MQTT"),
            "car0_version": 1,
            "car1_version": -1,
            "versions": run.log_count(r"committed version \d+ "),
        }
        assert _retained(mqtt, run.task, keys) == dict.fromkeys(PARTITIONS, 1)

        mqtt.restart()  # same port, no persistence: nothing retained any more
        wait_for(
            "the coordinator to ship v1 again",
            lambda: run.log_count(r"version 1: partitions on MQTT") > before["ships_of_v1"],
            programs,
            timeout=60,
        )
        assert _retained(mqtt, run.task, keys) == dict.fromkeys(PARTITIONS, 1)
        cars[1].start()  # a car that comes online after the restart
        wait_for("car 1 to install v1", lambda: _agent_version(cars[1], run.task) == 1, programs)
        assert run.log_count(r"committed version 2 ") == 0  # v1 came from the re-shipping

        run.upload(0, 1)  # round 2's data: version 2 follows
        assert run.coordinator.wait(timeout=300) == 0, run.coordinator.log_tail()
        for car in cars:
            wait_for(
                "the cars to install v2", lambda c=car: _agent_version(c, run.task) == 2, programs
            )
        retained = _retained(mqtt, run.task, keys)
        assert retained == dict.fromkeys(PARTITIONS, ROUNDS)
        after = {
            "retained_manifests": len(retained),
            "ships_of_v1": run.log_count(r"version 1: partitions on MQTT"),
            "car0_version": _agent_version(cars[0], run.task),
            "car1_version": _agent_version(cars[1], run.task),
            "versions": run.log_count(r"committed version \d+ "),
        }
        assert after["versions"] == ROUNDS + 1
    finally:
        for p in programs:
            p.kill()
    report(
        "MQTT broker restarted empty between versions",
        "coordinator re-shipped v1 on reconnect; new car got v1; both cars converged to v2",
        before,
        after,
    )
