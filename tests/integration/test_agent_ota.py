"""A vehicle takes new edge partitions over a real MQTT broker, and refuses bad ones.

The coordinator's own ``publish_partitions`` ships versions 1 and 2 of the real Dundee energy
model, signed. The agent's PartitionUpdater installs each one and the EdgeRuntime answers
with it. Then an attacker (or a bug) sends: a file altered in transit, manifests signed by
keys the car does not trust or not at all, the fog manifest on the edge topic, a replay of
version 1, and a signed file whose parity outputs it does not reproduce. Each is refused and
counted under its reason, version 2 keeps serving, and after a reboot it serves at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections import Counter

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.edge_runtime import EdgeRuntime
from agent.model_store import ModelStore
from agent.ota import PartitionUpdater
from coordinator.partitions import publish_partitions
from coordinator.version_serving import parity_samples
from evfl.brokers import EmbeddedMqtt
from models.model_config import PARTITIONS
from proto.blob_codec import pack_blob
from proto.mqtt import MqttPublisher, MqttSettings, file_topic, manifest_topic
from proto.partition_messages import build_manifest
from proto.signing import Signer, generate_keypair, load_keyring, load_signer
from proto.tensor_codec import decode_bundle

THRESHOLDS = (0.5, 1.0)
WAIT = 20.0


def _perturbed(weights: list[np.ndarray], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [w + rng.normal(0.0, 0.05, w.shape).astype(w.dtype) for w in weights]


@pytest.fixture(scope="module")
def shipped(energy_global):
    """Per version: the TFLite files of all partitions and the parity samples the coordinator
    sends with them (its own runs of each file on real test rows)."""
    from models.export import serving_partitions

    out = {}
    for version, weights in ((1, energy_global.weights), (2, _perturbed(energy_global.weights, 2))):
        files = serving_partitions(energy_global.config, weights, PARTITIONS)
        out[version] = (files, parity_samples(files, energy_global.x_test[:8]))
    return out


def test_agent_installs_signed_versions_refuses_bad_ones_and_serves_after_a_reboot(
    tmp_path, mqtt: EmbeddedMqtt, energy_global, shipped, caplog
):
    caplog.set_level(logging.INFO, logger="evfl.agent.ota")
    task = f"ota-{uuid.uuid4().hex[:10]}"
    settings = MqttSettings(
        host=mqtt.host, port=mqtt.port, reconnect_min_delay=0.1, reconnect_max_delay=1.0
    )
    private, _ = generate_keypair(tmp_path / "coordinator-keys", "coordinator-1")
    signer = load_signer(private, "coordinator-1")
    keyring = load_keyring(tmp_path / "coordinator-keys")  # the car holds the public key only
    norm = energy_global.preprocessing.normalization
    norm_json = json.dumps(norm.to_dict())
    rows = energy_global.x_test[:8]
    raw_row = rows[0] * norm.x_std + norm.x_mean

    def publish(publisher, version, files, parity):
        return publish_partitions(
            publisher, settings, task, version,
            {name: ("tflite", "float32", data) for name, data in files.items()},
            THRESHOLDS, norm_json, parity, signer,
        )  # fmt: skip

    def edge_manifest(version, data, parity, key):
        return build_manifest(
            task, version, "edge", "tflite", "float32", data, THRESHOLDS, norm_json, parity, key
        )

    state = tmp_path / "agent-state"
    store, runtime = ModelStore(state), EdgeRuntime()
    assert runtime.restore(store) == {}
    updater = PartitionUpdater(settings, [task], keyring, store, runtime)
    with MqttPublisher(settings) as publisher:
        # Version 1 is on the broker before the car comes online: it gets the retained copy.
        (files1, parity1), (files2, parity2) = shipped[1], shipped[2]
        manifests1 = publish(publisher, 1, files1, parity1)
        updater.start()
        try:
            assert updater.wait_for_version(task, 1, WAIT), updater
            answer = runtime.predict_local(task, raw_row)
            assert answer.version == 1
            want_hidden = dict(decode_bundle(manifests1[0].parity))["edge_hidden"][:1]
            np.testing.assert_allclose(answer.result.hidden, want_hidden, rtol=0, atol=1e-4)

            # Version 2 arrives while the car is online and is swapped in.
            publish(publisher, 2, files2, parity2)
            assert updater.wait_for_version(task, 2, WAIT), updater
            answer2 = runtime.predict_local(task, raw_row)
            assert answer2.version == 2 and answer2.result.mean != answer.result.mean
            serving = (2, hashlib.sha256(files2["edge"]).hexdigest())
            assert runtime.active(task) == serving

            # (a) A valid signed manifest for v3, but the file on the wire was altered: the
            # attacker's message claims the manifest's hash over different bytes.
            genuine = files1["edge"]
            manifest3 = edge_manifest(3, genuine, parity1["edge"], signer)
            altered = bytearray(genuine)
            altered[len(altered) // 2] ^= 0xFF
            blob, chunks = pack_blob(bytes(altered), compress=False)
            assert chunks == []
            blob.sha256 = manifest3.sha256
            publisher.publish(file_topic(task, "edge"), blob.SerializeToString())
            publisher.publish(manifest_topic(task, "edge"), manifest3.SerializeToString())
            assert updater.wait_for_refusals("bad_hash", 1, WAIT), updater

            # (b) Manifests for v4 signed by an unknown key, by an impostor under the trusted
            # key id, and not at all.
            for key in (
                Signer("rogue", Ed25519PrivateKey.generate()),
                Signer("coordinator-1", Ed25519PrivateKey.generate()),
                None,
            ):
                forged = edge_manifest(4, files2["edge"], parity2["edge"], key)
                publisher.publish(manifest_topic(task, "edge"), forged.SerializeToString())
            assert updater.wait_for_refusals("bad_signature", 2, WAIT), updater
            assert updater.wait_for_refusals("unsigned", 1, WAIT), updater

            # The coordinator's validly signed fog manifest, replayed on the edge topic.
            fog1 = next(m for m in manifests1 if m.partition == "fog")
            publisher.publish(manifest_topic(task, "edge"), fog1.SerializeToString())
            assert updater.wait_for_refusals("wrong_partition", 1, WAIT), updater

            # (c) The signed manifest of version 1, replayed.
            edge1 = next(m for m in manifests1 if m.partition == "edge")
            publisher.publish(manifest_topic(task, "edge"), edge1.SerializeToString())
            assert updater.wait_for_refusals("stale", 1, WAIT), updater

            # (d) Signed v5 whose parity samples come from other weights: the file loads and
            # its hash matches, but it does not compute what the manifest says it does.
            publish(publisher, 5, {"edge": files2["edge"]}, {"edge": parity1["edge"]})
            assert updater.wait_for_refusals("self_test_failed", 1, WAIT), updater

            assert runtime.active(task) == serving
            assert runtime.predict_local(task, raw_row).version == 2
            assert updater.refusals == Counter(
                bad_hash=1, bad_signature=2, unsigned=1, wrong_partition=1, stale=1,
                self_test_failed=1,
            )  # fmt: skip
            assert updater.installs == Counter({task: 2}) and updater.errors == 0
        finally:
            updater.stop()

    refused = [
        r.getMessage()
        for r in caplog.records
        if r.name == "evfl.agent.ota" and r.levelno == logging.WARNING
    ]
    assert len(refused) == sum(updater.refusals.values()), refused
    for reason, version in (
        ("bad_hash", 3), ("bad_signature", 4), ("unsigned", 4), ("wrong_partition", 1),
        ("stale", 1), ("self_test_failed", 5),
    ):  # fmt: skip
        assert any(f"task {task} v{version}:" in m and reason in m for m in refused), refused

    # A reboot: the new process serves version 2 from disk before any MQTT message.
    rebooted = EdgeRuntime()
    assert rebooted.restore(ModelStore(state)) == {task: 2}
    assert rebooted.active(task) == serving
    again = rebooted.predict_local(task, raw_row)
    assert (again.version, again.result.mean) == (2, answer2.result.mean)
