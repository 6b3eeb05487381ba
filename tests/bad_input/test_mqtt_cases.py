"""The MQTT rows of the catalogue: bad edge partitions sent to a vehicle's PartitionUpdater
over the embedded Mosquitto broker.

The coordinator's own ``publish_partitions`` ships the real Dundee energy model's edge file as
v1 and v2, signed; the car installs both. Then each bad message of the catalogue is published
and must be refused under its reason (the agent's ``evfl_agent_partitions_refused`` counter)
with a log line naming the problem, while v2 keeps answering exactly as before. A good v9
published at the end must still install: a refusal never wedges the updater.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections import Counter

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.edge_runtime import EdgeRuntime
from agent.metrics import agent_registry
from agent.model_store import ModelStore
from agent.ota import PartitionUpdater
from coordinator.partitions import publish_partitions
from coordinator.version_serving import parity_samples
from proto.blob_codec import pack_blob
from proto.mqtt import MqttPublisher, MqttSettings, chunk_topic, file_topic, manifest_topic
from proto.partition_messages import build_manifest, file_messages
from proto.signing import KeyRing, Signer
from tests.bad_input.catalogue import by_wire
from tests.bad_input.conftest import sample, xfail_marks

THRESHOLDS = (0.5, 1.0)
WAIT = 20.0
SMALL = 4096  # max_payload_bytes of the hand-made chunked publishes


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def ota_run(tmp_path_factory, mqtt, energy_global, partition_files):
    tmp = tmp_path_factory.mktemp("ota")
    task = f"ota-{uuid.uuid4().hex[:8]}"
    settings = MqttSettings(
        host=mqtt.host, port=mqtt.port, reconnect_min_delay=0.1, reconnect_max_delay=1.0,
        max_payload_bytes=8 * 1024 * 1024,
    )  # fmt: skip
    signer = Signer("coordinator-1", Ed25519PrivateKey.generate())
    keyring = KeyRing({"coordinator-1": signer.public_key})
    norm = energy_global.preprocessing.normalization
    norm_json = json.dumps(norm.to_dict())
    from models.export import serving_partitions

    # v1 and every crafted version carry the edge file of the trained Dundee model; v2 that of
    # slightly moved weights, so the file a bad message targets is never the one held already.
    edge = partition_files["edge"]
    parity = parity_samples(partition_files, energy_global.x_test[:4])["edge"]
    rng = np.random.default_rng(2)
    moved = [w + rng.normal(0.0, 0.05, w.shape).astype(w.dtype) for w in energy_global.weights]
    edge2 = serving_partitions(energy_global.config, moved, ("edge",))["edge"]
    parity2 = parity_samples({**partition_files, "edge": edge2}, energy_global.x_test[:4])["edge"]
    raw_row = energy_global.x_test[:1] * norm.x_std + norm.x_mean

    def manifest(version, data=edge, key=signer):
        return build_manifest(
            task, version, "edge", "tflite", "float32", data, THRESHOLDS, norm_json, parity, key
        )

    store, runtime = ModelStore(tmp / "agent"), EdgeRuntime()
    updater = PartitionUpdater(settings, [task], keyring, store, runtime)
    registry = agent_registry(dict, lambda: updater.refusals, dict, lambda: 0, lambda: 0)
    lines = _Lines()
    logging.getLogger("evfl.agent.ota").addHandler(lines)
    observed: dict[str, dict] = {}
    with MqttPublisher(settings) as publisher:

        def ship(version, data=edge, samples=parity):
            publish_partitions(
                publisher, settings, task, version, {"edge": ("tflite", "float32", data)},
                THRESHOLDS, norm_json, {"edge": samples}, signer,
            )  # fmt: skip

        def send(topic, payload):
            publisher.publish(topic, payload)

        ship(1)
        updater.start(timeout=WAIT)
        try:
            assert updater.wait_for_version(task, 1, WAIT), updater
            ship(2, edge2, parity2)
            assert updater.wait_for_version(task, 2, WAIT), updater
            serving = runtime.active(task)
            answer = runtime.predict_local(task, raw_row).result.mean

            def manifest_tampered():
                m = manifest(4)
                m.exit_policy.thresholds[0] = 99.0
                send(manifest_topic(task, "edge"), m.SerializeToString())

            def tflite_tampered():
                m = manifest(5)
                altered = bytearray(edge)
                altered[len(altered) // 2] ^= 0xFF
                blob, _ = pack_blob(bytes(altered), compress=False)
                blob.sha256 = m.sha256
                send(file_topic(task, "edge"), blob.SerializeToString())
                send(manifest_topic(task, "edge"), m.SerializeToString())

            def signed_garbage():
                garbage = random.Random(6).randbytes(3000)
                m = manifest(6, garbage)
                for topic, payload in file_messages(m, garbage, settings.max_payload_bytes):
                    send(topic, payload)
                send(manifest_topic(task, "edge"), m.SerializeToString())

            def chunk_truncated():
                m = manifest(7)
                messages = file_messages(m, edge, SMALL)
                from proto import tensors_pb2

                first = tensors_pb2.Chunk.FromString(messages[0][1])
                first.data = first.data[: len(first.data) // 2]  # its sha256 stays the old one
                send(manifest_topic(task, "edge"), m.SerializeToString())
                send(messages[0][0], first.SerializeToString())

            def chunk_reordered():
                m = manifest(8)
                messages = file_messages(m, edge, SMALL)
                send(manifest_topic(task, "edge"), m.SerializeToString())
                send(chunk_topic(task, "edge", 0), messages[1][1])

            cases = {
                "manifest-garbage-bytes": lambda: send(
                    manifest_topic(task, "edge"), random.Random(1).randbytes(500)
                ),
                "manifest-replayed-old": lambda: send(
                    manifest_topic(task, "edge"), manifest(1).SerializeToString()
                ),
                "manifest-unsigned": lambda: send(
                    manifest_topic(task, "edge"), manifest(4, key=None).SerializeToString()
                ),
                "manifest-tampered": manifest_tampered,
                "manifest-oversize": lambda: send(
                    manifest_topic(task, "edge"), b"\x0a" + b"\xff" * (5 * 1024 * 1024)
                ),
                "tflite-tampered": tflite_tampered,
                "tflite-signed-garbage": signed_garbage,
                "chunk-truncated": chunk_truncated,
                "chunk-reordered": chunk_reordered,
                "chunk-garbage-bytes": lambda: send(
                    chunk_topic(task, "edge", 2), random.Random(2).randbytes(700)
                ),
            }
            for c in by_wire("mqtt"):
                reason = c.labels["reason"]
                before = sample(registry, c)
                seen = len(lines.lines)
                target = updater.refusals[reason] + 1
                cases[c.id]()
                assert updater.wait_for_refusals(reason, target, WAIT), (
                    c.id, updater, lines.lines[seen:],
                )  # fmt: skip
                observed[c.id] = {
                    "delta": sample(registry, c) - before,
                    "lines": lines.lines[seen:],
                    "serving": runtime.active(task),
                    "answer": runtime.predict_local(task, raw_row).result.mean,
                }
            ship(9)
            installed_after = updater.wait_for_version(task, 9, WAIT)
        finally:
            updater.stop()
            logging.getLogger("evfl.agent.ota").removeHandler(lines)
    return {
        "observed": observed, "serving": serving, "answer": answer, "task": task,
        "refusals": Counter(updater.refusals), "errors": updater.errors,
        "installed_after": installed_after, "active_after": runtime.active(task),
    }  # fmt: skip


@pytest.mark.parametrize(
    "c", [pytest.param(c, id=c.id, marks=xfail_marks(c)) for c in by_wire("mqtt")]
)
def test_bad_partition_message_is_refused_counted_and_the_served_version_kept(c, ota_run):
    seen = ota_run["observed"][c.id]
    reason = c.labels["reason"]
    # (1) one log line naming the task, the refusal reason and the problem
    refusals = [line for line in seen["lines"] if "edge update refused" in line]
    assert len(refusals) == 1, seen["lines"]
    assert f"task {ota_run['task']} " in refusals[0]
    assert f"refused: {reason}: " in refusals[0] and c.words in refusals[0], refusals[0]
    # (2) counted once, in the agent's Prometheus registry
    assert seen["delta"] == 1
    # (3) v2 keeps serving the same answer, and a good version later still installs
    assert seen["serving"] == ota_run["serving"]
    assert seen["answer"] == ota_run["answer"]
    assert ota_run["installed_after"] and ota_run["active_after"][0] == 9
    assert ota_run["errors"] == 0
