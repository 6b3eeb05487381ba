"""Shipping partition files over a real MQTT broker (Mosquitto, and amqtt where forced).

Every reader here connects after the publish, as a vehicle that was off would: all it gets
is what the broker retained.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.partitions import publish_partitions
from evfl.brokers import EmbeddedMqtt, free_port
from proto.mqtt import (
    InvalidMqttSettings,
    MqttPayloadTooLarge,
    MqttPublisher,
    MqttPublishFailed,
    MqttSettings,
    MqttSubscriber,
    manifest_topic,
)
from proto.partition_messages import PartitionReader, ReceivedPartition, build_manifest
from proto.signing import KeyRing, Signer
from proto.wire_errors import BadSignature, WireError

SIGNER = Signer("coordinator-1", Ed25519PrivateKey.generate())
KEYRING = KeyRing({"coordinator-1": SIGNER.public_key})
THRESHOLDS = (0.3, 0.6)
NORMALIZATION = '{"mean": [0.0], "std": [1.0]}'
SMALL_PAYLOAD = 4 * 1024

EdgeFile = tuple[bytes, list[tuple[str, np.ndarray]]]  # tflite bytes, parity samples


def _edge_file(units: int) -> EdgeFile:
    """A real edge .tflite of a tiny untrained model, with inputs and the outputs it gives."""
    from models.export import serving_partitions
    from models.model_config import LayerSpec, ModelConfig
    from models.partitioned import build_model, weights_of
    from models.tflite_runner import TfliteRunner

    config = ModelConfig(
        input_shape=(10,),
        layers=(LayerSpec("dense", units), LayerSpec("dense", 8), LayerSpec("dense", 8)),
        cuts=(1, 2),
    )
    data = serving_partitions(config, weights_of(build_model(config)), ("edge",), 2)["edge"]
    x = np.random.default_rng(units).standard_normal((3, 10), dtype=np.float32)
    runner = TfliteRunner(data, workers=1)
    results = [runner.run(x[i : i + 1]) for i in range(len(x))]
    parity = [("input", x)]
    parity += [(name, np.concatenate([r[name] for r in results])) for name in runner.output_names]
    return data, parity


@pytest.fixture(scope="module")
def small_edge() -> EdgeFile:
    return _edge_file(64)  # about 4 KB: 2 chunks at 4 KiB


@pytest.fixture(scope="module")
def large_edge() -> EdgeFile:
    return _edge_file(256)  # about 13 KB: several chunks at 4 KiB


def _task() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def _publish(
    settings: MqttSettings,
    task: str,
    version: int,
    edge: EdgeFile,
    publisher: MqttPublisher | None = None,
) -> None:
    data, parity = edge
    with MqttPublisher(settings) if publisher is None else nullcontext(publisher) as client:
        manifests = publish_partitions(
            client, settings, task, version, {"edge": ("tflite", "float32", data)},
            THRESHOLDS, NORMALIZATION, {"edge": parity}, SIGNER,
        )  # fmt: skip
    assert [(m.partition, m.version, m.size) for m in manifests] == [("edge", version, len(data))]


def _settings(broker: EmbeddedMqtt, **overrides: object) -> MqttSettings:
    return MqttSettings(
        host=broker.host, port=broker.port, reconnect_min_delay=0.1, reconnect_max_delay=1.0,
        **overrides,  # type: ignore[arg-type]
    )  # fmt: skip


def _drain(
    subscriber: MqttSubscriber, reader: PartitionReader, seconds: float, until_received: bool
) -> tuple[list[ReceivedPartition], list[WireError], list[str]]:
    """Feed the reader for ``seconds`` (or until a file is complete); what it made of it."""
    received: list[ReceivedPartition] = []
    errors: list[WireError] = []
    topics: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (until_received and received):
        message = subscriber.get(timeout=0.05)
        if message is None:
            continue
        topics.append(message.topic)
        try:
            got = reader.offer(message.topic, message.payload)
        except WireError as exc:
            errors.append(exc)
            continue
        if got is not None:
            received.append(got)
    return received, errors, topics


def _late_read(
    settings: MqttSettings, task: str, seconds: float = 10.0, until_received: bool = True
) -> tuple[list[ReceivedPartition], list[WireError], list[str]]:
    reader = PartitionReader(task, "edge", KEYRING)
    with MqttSubscriber(settings, reader.topics) as subscriber:
        return _drain(subscriber, reader, seconds, until_received)


def _assert_runs_like_its_parity(got: ReceivedPartition, edge: EdgeFile) -> None:
    from models.tflite_runner import TfliteRunner
    from proto.tensor_codec import decode_bundle

    assert got.data == edge[0]
    parity = dict(decode_bundle(got.manifest.parity))
    runner = TfliteRunner(got.data, workers=1)
    for i in range(len(parity["input"])):
        out = runner.run(parity["input"][i : i + 1])
        for name in runner.output_names:
            np.testing.assert_allclose(out[name], parity[name][i : i + 1], rtol=0, atol=1e-6)


def _wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# ----------------------------------------------------------------------------- Mosquitto


def test_late_subscriber_gets_signed_edge_file_and_runs_it(
    mqtt: EmbeddedMqtt, small_edge: EdgeFile
) -> None:
    settings, task = _settings(mqtt), _task()
    _publish(settings, task, 1, small_edge)

    received, errors, topics = _late_read(settings, task)
    assert errors == []
    [got] = received
    assert (got.manifest.task_id, got.manifest.version, got.manifest.variant) == (
        task, 1, "float32",
    )  # fmt: skip
    assert got.manifest.signature.key_id == "coordinator-1"
    assert list(got.manifest.exit_policy.thresholds) == list(THRESHOLDS)
    assert not any("/file/" in t for t in topics)  # 4 KB travels inline at 256 KiB
    _assert_runs_like_its_parity(got, small_edge)


def test_file_above_the_payload_limit_is_chunked_and_reassembled(
    mqtt: EmbeddedMqtt, large_edge: EdgeFile
) -> None:
    settings, task = _settings(mqtt, max_payload_bytes=SMALL_PAYLOAD), _task()
    _publish(settings, task, 1, large_edge)

    received, errors, topics = _late_read(settings, task)
    assert errors == []
    [got] = received
    chunks = {t for t in topics if "/file/" in t}
    assert len(chunks) == -(-len(large_edge[0]) // (SMALL_PAYLOAD - 256))
    _assert_runs_like_its_parity(got, large_edge)


def _newest_version_only(broker: EmbeddedMqtt, large_edge: EdgeFile, small_edge: EdgeFile) -> None:
    settings, task = _settings(broker, max_payload_bytes=SMALL_PAYLOAD), _task()
    _publish(settings, task, 1, large_edge)
    _publish(settings, task, 2, small_edge)  # fewer chunks: v1's later ones stay behind

    received, errors, topics = _late_read(settings, task, seconds=1.5, until_received=False)
    assert errors == []
    assert [(r.manifest.version, r.data) for r in received] == [(2, small_edge[0])]
    v1_chunks = -(-len(large_edge[0]) // (SMALL_PAYLOAD - 256))
    assert len({t for t in topics if "/file/" in t}) == v1_chunks  # stale ones included
    _assert_runs_like_its_parity(received[0], small_edge)


def test_late_subscriber_gets_the_newest_version_only(
    mqtt: EmbeddedMqtt, large_edge: EdgeFile, small_edge: EdgeFile
) -> None:
    _newest_version_only(mqtt, large_edge, small_edge)


def test_unsigned_or_tampered_manifest_on_the_topic_is_refused(
    mqtt: EmbeddedMqtt, small_edge: EdgeFile
) -> None:
    settings, task = _settings(mqtt), _task()
    _publish(settings, task, 1, small_edge)
    data, parity = small_edge
    unsigned = build_manifest(
        task, 2, "edge", "tflite", "float32", data, THRESHOLDS, NORMALIZATION, parity, None
    )
    tampered = build_manifest(
        task, 2, "edge", "tflite", "float32", data, THRESHOLDS, NORMALIZATION, parity, SIGNER
    )
    tampered.exit_policy.thresholds[0] = float("inf")  # the edge would answer everything

    for forged, reason in ((unsigned, "unsigned"), (tampered, "does not verify")):
        with MqttPublisher(settings) as publisher:
            publisher.publish(manifest_topic(task, "edge"), forged.SerializeToString())
        received, errors, _ = _late_read(settings, task, seconds=1.0, until_received=False)
        assert received == []
        assert [type(e) for e in errors] == [BadSignature]
        assert reason in str(errors[0])


def test_subscriber_resubscribes_after_a_broker_restart(
    tmp_path: Path, small_edge: EdgeFile, large_edge: EdgeFile
) -> None:
    with EmbeddedMqtt(tmp_path) as broker:
        settings, task = _settings(broker), _task()
        reader = PartitionReader(task, "edge", KEYRING)
        with (
            MqttSubscriber(settings, reader.topics) as subscriber,
            MqttPublisher(settings) as publisher,
        ):
            _publish(settings, task, 1, small_edge, publisher)
            before, errors, _ = _drain(subscriber, reader, 10.0, until_received=True)
            broker.restart()  # forgets every session, subscription and retained message
            assert _wait_for(lambda: subscriber.subscriptions >= 2, 15), "no re-subscription"
            _publish(settings, task, 2, large_edge, publisher)  # the same, reconnected, client
            after, more_errors, _ = _drain(subscriber, reader, 10.0, until_received=True)
    assert errors + more_errors == []
    assert [r.manifest.version for r in before + after] == [1, 2]
    _assert_runs_like_its_parity(after[0], large_edge)


# ----------------------------------------------------------------------------- amqtt


def test_amqtt_chunks_and_replaces_versions_like_mosquitto(
    tmp_path: Path, large_edge: EdgeFile, small_edge: EdgeFile
) -> None:
    with EmbeddedMqtt(tmp_path, prefer="amqtt") as broker:
        assert broker.kind == "amqtt"
        _newest_version_only(broker, large_edge, small_edge)


# ----------------------------------------------------------------------------- no broker


def test_settings_mask_the_password_and_refuse_half_tls() -> None:
    settings = MqttSettings(username="coordinator", password="hunter2")
    assert "hunter2" not in repr(settings) and "***" in repr(settings)
    with pytest.raises(InvalidMqttSettings, match="tls"):
        MqttSettings(ca_file="/etc/evfl/ca.pem")
    with pytest.raises(InvalidMqttSettings, match="max_payload_bytes"):
        MqttSettings(max_payload_bytes=10)


def test_publish_fails_on_oversize_payloads_and_unreachable_brokers() -> None:
    settings = MqttSettings(port=free_port(), max_payload_bytes=1024, connect_timeout=0.5)
    publisher = MqttPublisher(settings)
    with pytest.raises(MqttPayloadTooLarge):
        publisher.publish("evfl/t/edge/file", bytes(2048))
    with pytest.raises(MqttPublishFailed, match="no CONNACK"):
        publisher.publish("evfl/t/edge/file", b"x", timeout=0.5)
    publisher.close()
