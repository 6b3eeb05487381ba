"""deploy/k8s validates against a Kubernetes release, strictly, and hangs together.

Beyond the schema: each config in a ConfigMap loads through its program's loader, the files it
names are mounted, the probes ask the programs' own health service names on the configured
port, every ConfigMap and Secret a pod uses is defined, and the pods cannot gain privileges.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

from coordinator.config import load_config as load_coordinator
from coordinator.main import CLOUD_SERVICE
from fog_node.config import load_config as load_fog
from fog_node.main import STATION_SERVICE

ROOT = Path(__file__).parents[1]
K8S = ROOT / "deploy" / "k8s"
BIN = Path(sys.executable).parent
KUBERNETES_VERSION = "1.33.0"  # native gRPC probes are GA since 1.27
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
SECRETS_EXAMPLE = K8S / "examples" / "secrets.yaml"


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict]:
    out = {}
    for path in [*MANIFESTS, SECRETS_EXAMPLE]:
        for doc in yaml.safe_load_all(path.read_text()):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def _config(objects, name: str, key: str, loader, tmp_path: Path):
    path = tmp_path / key
    path.write_text(objects[("ConfigMap", name)]["data"][key])
    return loader(path)


def _pod(objects, kind: str, name: str) -> dict:
    return objects[(kind, name)]["spec"]["template"]["spec"]


def _mount_covers(container: dict, path: str) -> bool:
    p = PurePosixPath(path)
    for mount in container["volumeMounts"]:
        root = PurePosixPath(mount["mountPath"])
        if p == root or root in p.parents:
            return True
    return False


def test_manifests_validate_strictly():
    result = subprocess.run(
        [
            str(BIN / "kubernetes-validate"),
            "--strict",
            "--quiet",
            "--kubernetes-version",
            KUBERNETES_VERSION,
            *map(str, MANIFESTS),
            str(SECRETS_EXAMPLE),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout + result.stderr


def test_kustomization_lists_every_manifest_but_the_placeholder_secrets():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]


def test_placeholder_secrets_hold_no_key_material(objects):
    secrets = [doc for (kind, _), doc in objects.items() if kind == "Secret"]
    assert secrets
    for secret in secrets:
        assert "data" not in secret  # nothing base64-encoded to hide a real key in
        for value in secret["stringData"].values():
            assert value.startswith("REPLACE-ME") and "-----BEGIN" not in value


def test_task_config_map_is_the_shipped_task_file(objects):
    task = objects[("ConfigMap", "evfl-tasks")]["data"]["dundee-energy.toml"]
    assert task == (ROOT / "tasks" / "dundee-energy.toml").read_text()


def test_every_referenced_config_map_and_secret_exists(objects):
    for kind, name in (("Deployment", "evfl-coordinator"), ("StatefulSet", "evfl-fog")):
        pod = _pod(objects, kind, name)
        for volume in pod["volumes"]:
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in objects
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in objects
        for container in pod["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret = objects[("Secret", ref["name"])]
                    assert ref["key"] in secret["stringData"]


def test_coordinator_config_loads_and_its_files_are_mounted(objects, tmp_path, monkeypatch):
    monkeypatch.setenv("EVFL_COORDINATOR_KAFKA__SASL_PASSWORD", "from-the-secret")
    config = _config(
        objects, "evfl-coordinator-config", "coordinator.toml", load_coordinator, tmp_path
    )
    (container,) = _pod(objects, "Deployment", "evfl-coordinator")["containers"]
    args = container["args"]
    assert _mount_covers(container, args[args.index("--config") + 1])
    assert _mount_covers(container, args[args.index("--task") + 1])
    files = [
        config.registry_dir,
        config.kafka.ssl_ca_location,
        config.mqtt.ca_file,
        config.signing.key_file,
        config.signing.keyring_dir,
    ]
    for path in files:
        assert path and _mount_covers(container, str(path)), path
    assert not config.tasks  # the task comes from --task once, not twice
    env = {e["name"] for e in container["env"]}
    assert {"EVFL_COORDINATOR_KAFKA__SASL_PASSWORD", "EVFL_COORDINATOR_MQTT__PASSWORD"} <= env
    _assert_grpc_probes(container, config.cloud_listen, CLOUD_SERVICE)
    _assert_ports(container, config.cloud_listen, config.metrics_listen)


def test_each_station_pod_has_a_config_key_and_identity_of_its_own(objects, tmp_path):
    statefulset = objects[("StatefulSet", "evfl-fog")]
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config_arg = container["args"][container["args"].index("--config") + 1]
    assert config_arg.endswith("/$(POD_NAME).toml") and _mount_covers(container, config_arg)
    pod_names = [f"evfl-fog-{i}" for i in range(statefulset["spec"]["replicas"])]
    config_map = objects[("ConfigMap", "evfl-fog-config")]["data"]
    assert sorted(config_map) == sorted(f"{n}.toml" for n in pod_names)
    private_keys = objects[("Secret", "evfl-fog-keys")]["stringData"]
    assert sorted(private_keys) == sorted(f"{n}.key.pem" for n in pod_names)
    trusted = objects[("Secret", "evfl-station-public-keys")]["stringData"]
    station_ids, key_ids = set(), set()
    for name in pod_names:
        config = _config(objects, "evfl-fog-config", f"{name}.toml", load_fog, tmp_path)
        station_ids.add(config.station_id)
        key_ids.add(config.signing.key_id)
        assert f"{config.signing.key_id}.pub.pem" in trusted  # the coordinator can verify it
        for path in (
            config.state_dir,
            config.kafka.ssl_ca_location,
            config.signing.key_file,
            config.signing.keyring_dir,
        ):
            assert path and _mount_covers(container, str(path)), path
        assert config.cloud.target == "evfl-coordinator:50070"
        _assert_grpc_probes(container, config.listen, STATION_SERVICE)
        _assert_ports(container, config.listen, config.metrics_listen)
    assert len(station_ids) == len(key_ids) == len(pod_names)
    key_mount = next(m for m in container["volumeMounts"] if m["name"] == "signing")
    assert key_mount["subPathExpr"] == "$(POD_NAME).key.pem"  # not the neighbours' keys
    claim = statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    store = next(m for m in container["volumeMounts"] if m["name"] == claim)
    assert store["mountPath"] == "/var/lib/evfl-fog"
    assert statefulset["spec"]["serviceName"] == "evfl-fog"
    assert objects[("Service", "evfl-fog")]["spec"]["clusterIP"] == "None"  # headless


def _assert_grpc_probes(container: dict, listen: str, service_name: str) -> None:
    port = int(listen.rpartition(":")[2])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == port, probe
    assert container["readinessProbe"]["grpc"]["service"] == service_name


def _assert_ports(container: dict, listen: str, metrics_listen: str) -> None:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": int(listen.rpartition(":")[2]),
        "metrics": int(metrics_listen.rpartition(":")[2]),
    }


@pytest.mark.parametrize(
    ("kind", "name"), [("Deployment", "evfl-coordinator"), ("StatefulSet", "evfl-fog")]
)
def test_pods_run_unprivileged_with_limits(objects, kind, name):
    pod = _pod(objects, kind, name)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert "memory" in container["resources"]["limits"]
        assert _mount_covers(container, "/tmp")  # scratch space on a read-only root


def test_services_route_to_the_named_container_ports(objects):
    for kind, name in (("Deployment", "evfl-coordinator"), ("StatefulSet", "evfl-fog")):
        (container,) = _pod(objects, kind, name)["containers"]
        names = {p["name"] for p in container["ports"]}
        service = objects[("Service", name)]
        labels = objects[(kind, name)]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} == names
