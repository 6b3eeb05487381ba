"""deploy/compose.yaml follows the Compose spec and gives each program a config it accepts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coordinator.config import load_config as load_coordinator
from coordinator.task_spec import load_task
from fog_node.config import load_config as load_fog

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # resolves the x-station anchors


def _dockerfile(service: dict) -> Path:
    return ROOT / "deploy" / service["build"]["context"] / service["build"]["dockerfile"]


def _image_cmd(service: dict) -> list[str]:
    text = _dockerfile(service).read_text()
    cmd = re.search(r"^CMD (\[.*?\])\s*$", text, re.MULTILINE | re.DOTALL)
    assert cmd is not None
    return json.loads(cmd.group(1).replace("\\\n", ""))


def _binds(service: dict) -> dict[str, Path]:
    """Container path -> host file, for the bind mounts (sources starting with . or /)."""
    out = {}
    for spec in service.get("volumes", []):
        source, target, *_ = spec.split(":")
        if source.startswith((".", "/")):
            out[target] = (DEPLOY / source).resolve()
    return out


def _evfl_services(compose: dict, dockerfile: str) -> dict[str, dict]:
    return {
        name: s
        for name, s in compose["services"].items()
        if "build" in s and s["build"]["dockerfile"].endswith(dockerfile)
    }


def test_compose_file_follows_the_compose_spec():
    result = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_mounted_file_exists(compose):
    for name, service in compose["services"].items():
        for target, source in _binds(service).items():
            assert source.is_file(), f"{name}: {source} (for {target}) does not exist"


def test_every_station_gets_a_valid_config_of_its_own(compose):
    stations = _evfl_services(compose, "fog.Dockerfile")
    assert len(stations) == 3
    ids, stores = set(), set()
    for name, service in stations.items():
        cmd = service.get("command") or _image_cmd(service)
        config_file = _binds(service)[cmd[cmd.index("--config") + 1]]
        config = load_fog(config_file)
        assert name == f"station-{config.station_id}"
        assert config.kafka.bootstrap_servers == "kafka:9092"
        assert config.cloud.target == "coordinator:50070"
        store = [v.split(":")[0] for v in service["volumes"] if v.endswith(str(config.state_dir))]
        assert len(store) == 1 and store[0] in compose["volumes"]  # a named volume
        ids.add(config.station_id)
        stores.add(store[0])
    assert len(ids) == len(stores) == len(stations)


def test_the_coordinator_gets_a_valid_config_and_task(compose):
    (service,) = _evfl_services(compose, "coordinator.Dockerfile").values()
    cmd = service.get("command") or _image_cmd(service)
    binds = _binds(service)
    config = load_coordinator(binds[cmd[cmd.index("--config") + 1]])
    assert config.kafka.bootstrap_servers == "kafka:9092"
    assert (config.mqtt.host, config.mqtt.port) == ("mosquitto", 1883)
    task = load_task(binds[cmd[cmd.index("--task") + 1]])
    assert task.task_id == "dundee-energy"
    assert not config.tasks  # the task comes from --task once, not twice
    registry = [v.split(":")[0] for v in service["volumes"] if v.endswith(str(config.registry_dir))]
    assert len(registry) == 1 and registry[0] in compose["volumes"]


def test_the_brokers_listen_where_the_programs_look(compose):
    kafka = compose["services"]["kafka"]["environment"]
    assert "PLAINTEXT://kafka:9092" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert "broker" in kafka["KAFKA_PROCESS_ROLES"] and "controller" in kafka["KAFKA_PROCESS_ROLES"]
    mosquitto = compose["services"]["mosquitto"]
    conf = _binds(mosquitto)["/mosquitto/config/mosquitto.conf"].read_text()
    assert re.search(r"^listener 1883\b", conf, re.MULTILINE)


def test_published_station_ports_reach_the_grpc_port(compose):
    for name, service in _evfl_services(compose, "fog.Dockerfile").items():
        (published,) = service["ports"]
        host, _, container_port = published.split(":")
        cmd = _image_cmd(service)
        config = load_fog(_binds(service)[cmd[cmd.index("--config") + 1]])
        assert host == "127.0.0.1", name  # plaintext: never on every interface
        assert int(container_port) == int(config.listen.rpartition(":")[2])
    host_ports = [s["ports"][0].split(":")[1] for s in compose["services"].values() if "ports" in s]
    assert len(host_ports) == len(set(host_ports))


def test_images_are_pinned_and_start_order_waits_for_health(compose):
    for name, service in compose["services"].items():
        image = service["image"]
        assert re.search(r":\d+\.\d+\.\d+$", image), f"{name}: {image} is not pinned"
        for dependency, how in service.get("depends_on", {}).items():
            assert how["condition"] == "service_healthy", name
            other = compose["services"][dependency]
            # a health check of its own, or the image's HEALTHCHECK (the evfl images)
            assert "healthcheck" in other or "HEALTHCHECK" in _dockerfile(other).read_text()
