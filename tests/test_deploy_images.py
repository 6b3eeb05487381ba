"""The Dockerfiles pass hadolint and agree with the programs: extra, ports, probe, user, context.

No Docker engine on CI machines: the images are checked as text, and against the config files
that compose.yaml and the Kubernetes manifests give them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coordinator.config import load_config as load_coordinator
from fog_node.config import load_config as load_fog

ROOT = Path(__file__).parents[1]
DOCKER = ROOT / "deploy" / "docker"
BIN = Path(sys.executable).parent
# image -> (the one extra it installs, its program's config loader)
IMAGES = {
    "fog.Dockerfile": ("fog", load_fog),
    "coordinator.Dockerfile": ("coordinator", load_coordinator),
}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, args = pending.partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def args_of(dockerfile: Path, keyword: str) -> list[str]:
    return [a for k, a in instructions(dockerfile) if k == keyword]


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def test_hadolint_is_clean_with_no_rule_ignored():
    config = ROOT / ".hadolint.yaml"
    settings = yaml.safe_load(config.read_text())
    assert "ignored" not in settings  # an ignored rule needs a justifying comment there
    assert settings["failure-threshold"] == "info"  # warnings and style findings fail too
    files = sorted(str(p) for p in DOCKER.glob("*.Dockerfile"))
    assert len(files) == len(IMAGES)
    result = subprocess.run(
        [str(BIN / "hadolint"), "--config", str(config), "--no-color", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_base_image_is_pinned_and_shared_by_both_stages(name):
    bases = [a.split()[0] for a in args_of(DOCKER / name, "FROM")]
    assert len(bases) == 2  # build stage + runtime stage
    assert len(set(bases)) == 1
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", bases[0])


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_installs_only_its_own_extra(name):
    extra, _ = IMAGES[name]
    installs = [a for a in args_of(DOCKER / name, "RUN") if "pip install" in a]
    assert len(installs) == 1
    assert re.findall(r'"\.\[([a-z,]+)\]"', installs[0]) == [extra]
    assert "--constraint constraints.txt" in installs[0]


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_runs_as_a_numeric_non_root_user(name):
    users = [a for k, a in final_stage(DOCKER / name) if k == "USER"]
    assert len(users) == 1
    uid, _, gid = users[0].partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0


def _config_path(name: str) -> Path:
    cmd = json.loads(args_of(DOCKER / name, "CMD")[-1])
    return Path(cmd[cmd.index("--config") + 1])


def _ports(name: str) -> list[int]:
    (expose,) = args_of(DOCKER / name, "EXPOSE")
    return [int(p) for p in expose.split()]


def _config_ports(name: str, config_file: Path) -> tuple[int, int]:
    _, load = IMAGES[name]
    config = load(config_file)
    listen = config.listen if name == "fog.Dockerfile" else config.cloud_listen
    return int(listen.rpartition(":")[2]), int(config.metrics_listen.rpartition(":")[2])


COMPOSE_CONFIGS = {
    "fog.Dockerfile": sorted((ROOT / "deploy" / "compose").glob("fog-*.toml")),
    "coordinator.Dockerfile": [ROOT / "deploy" / "compose" / "coordinator.toml"],
}


K8S_CONFIG_MAPS = {
    "fog.Dockerfile": "fog-config.yaml",
    "coordinator.Dockerfile": "coordinator-config.yaml",
}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_exposed_ports_are_the_configured_ports(name, tmp_path):
    """EXPOSE lists the gRPC then the metrics port of every config shipped for this image."""
    config_map = yaml.safe_load((ROOT / "deploy" / "k8s" / K8S_CONFIG_MAPS[name]).read_text())
    k8s_configs = []
    for key, text in config_map["data"].items():
        (tmp_path / key).write_text(text)
        k8s_configs.append(tmp_path / key)
    configs = [*COMPOSE_CONFIGS[name], *k8s_configs]
    assert len(configs) >= 2
    for config_file in configs:
        assert list(_config_ports(name, config_file)) == _ports(name), config_file


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_healthcheck_probes_grpc_health_on_the_grpc_port(name):
    (check,) = args_of(DOCKER / name, "HEALTHCHECK")
    cmd = json.loads(check[check.index("CMD") + 3 :].strip())
    assert cmd[:3] == ["python", "-m", "proto.health_probe"]
    target = cmd[cmd.index("--target") + 1]
    assert target == f"127.0.0.1:{_ports(name)[0]}"


def test_build_context_admits_what_the_dockerfiles_copy_and_nothing_secret():
    allowed = {
        line[1:].strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    rules = [s for s in (ROOT / ".dockerignore").read_text().splitlines() if s[:1] not in "#"]
    assert rules[0] == "*"  # an allowlist: whatever is not named stays out
    for name in IMAGES:
        for args in args_of(DOCKER / name, "COPY"):
            if args.startswith("--from="):
                continue
            *sources, _dest = args.split()
            for source in sources:
                assert source in allowed, f"{name}: {source} is not in the build context"
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
    assert ".venv" not in allowed and "runs" not in allowed and "deploy" not in allowed


def test_constraints_pin_every_package():
    lines = [
        line
        for line in (DOCKER / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+!\-]+", s) for s in lines)
    names = {line.split("==")[0].lower().replace("_", "-") for line in lines}
    assert {"tensorflow", "grpcio", "grpcio-health-checking", "confluent-kafka"} <= names
