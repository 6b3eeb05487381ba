"""Partition manifests and files on the wire: signing, verification and reassembly (no broker)."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proto import partitions_pb2, tensors_pb2
from proto.mqtt import chunk_topic, file_topic, manifest_topic
from proto.partition_messages import (
    FileAssembler,
    PartitionReader,
    StaleManifest,
    build_manifest,
    file_messages,
    read_manifest,
    verify_file,
)
from proto.signing import KeyRing, Signer
from proto.tensor_codec import decode_bundle
from proto.wire_errors import (
    BadSignature,
    ChunkError,
    HashMismatch,
    MalformedMessage,
    PayloadTooLarge,
)

TASK = "dundee-energy"
SIGNER = Signer("coordinator-1", Ed25519PrivateKey.generate())
KEYRING = KeyRing({"coordinator-1": SIGNER.public_key})
NORMALIZATION = '{"mean": [1.0, 2.0], "std": [0.5, 0.25]}'
SMALL_PAYLOAD = 1024


def _file(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _manifest(
    data: bytes, version: int = 1, partition: str = "edge", signer: Signer | None = SIGNER
) -> partitions_pb2.PartitionManifest:
    parity = [("input", np.arange(6, dtype=np.float32).reshape(2, 3))]
    return build_manifest(
        TASK, version, partition, "tflite", "float32", data, (0.4, float("inf")),
        NORMALIZATION, parity, signer,
    )  # fmt: skip


def _wire(manifest: partitions_pb2.PartitionManifest) -> bytes:
    return manifest.SerializeToString(deterministic=True)


# ----------------------------------------------------------------------------- manifests


def test_signed_manifest_reads_back_with_hash_size_topic_and_parity() -> None:
    data = _file(5000, 1)
    got = read_manifest(_wire(_manifest(data)), KEYRING, topic=manifest_topic(TASK, "edge"))
    assert (got.task_id, got.version, got.partition, got.format, got.variant) == (
        TASK, 1, "edge", "tflite", "float32",
    )  # fmt: skip
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    assert got.size == len(data)
    assert got.file_topic == file_topic(TASK, "edge")
    assert list(got.exit_policy.thresholds) == [0.4, float("inf")]
    assert got.normalization_json == NORMALIZATION
    [(name, array)] = decode_bundle(got.parity)
    assert name == "input"
    np.testing.assert_array_equal(array, np.arange(6, dtype=np.float32).reshape(2, 3))
    verify_file(got, data)


def test_tampered_manifest_is_refused() -> None:
    manifest = _manifest(_file(100, 1))
    manifest.sha256 = hashlib.sha256(b"a different model").hexdigest()
    with pytest.raises(BadSignature, match="does not verify"):
        read_manifest(_wire(manifest), KEYRING)
    raised = _manifest(_file(100, 1))
    raised.exit_policy.thresholds[0] = 1e9  # make the edge exit answer everything
    with pytest.raises(BadSignature):
        read_manifest(_wire(raised), KEYRING)


def test_unsigned_or_unknown_key_manifest_is_refused() -> None:
    unsigned = _wire(_manifest(_file(100, 1), signer=None))
    with pytest.raises(BadSignature, match="unsigned"):
        read_manifest(unsigned, KEYRING)
    assert read_manifest(unsigned, None, require_signed=False).size == 100
    stranger = Signer("coordinator-1", Ed25519PrivateKey.generate())
    with pytest.raises(BadSignature):
        read_manifest(_wire(_manifest(_file(100, 1), signer=stranger)), KEYRING)
    # A present signature is checked even when signatures are optional.
    with pytest.raises(BadSignature):
        read_manifest(_wire(_manifest(_file(100, 1), signer=stranger)), KEYRING, False)


def test_manifest_replayed_on_another_partitions_topic_is_refused() -> None:
    fog = _wire(_manifest(_file(100, 1), partition="fog"))
    with pytest.raises(MalformedMessage, match="arrived on topic"):
        read_manifest(fog, KEYRING, topic=manifest_topic(TASK, "edge"))


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"\xff\xff\xff", MalformedMessage),
        (b"", MalformedMessage),
        (b"\x00" * (5 * 1024 * 1024), PayloadTooLarge),
    ],
)
def test_garbage_manifest_raises_a_wire_error(payload: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        read_manifest(payload, KEYRING)


def test_file_of_another_hash_or_size_is_refused() -> None:
    data = _file(3000, 1)
    manifest = _manifest(data)
    with pytest.raises(HashMismatch, match="sha256"):
        verify_file(manifest, bytes([data[0] ^ 1]) + data[1:])
    with pytest.raises(HashMismatch, match="bytes"):
        verify_file(manifest, data + b"\x00")


# ----------------------------------------------------------------------------- reassembly


def test_small_file_travels_inline_large_one_as_chunks_before_its_list() -> None:
    small = _manifest(_file(500, 1))
    assert [t for t, _ in file_messages(small, _file(500, 1), SMALL_PAYLOAD)] == [
        file_topic(TASK, "edge")
    ]
    data = _file(5000, 2)
    messages = file_messages(_manifest(data), data, SMALL_PAYLOAD)
    topics = [t for t, _ in messages]
    assert topics == [chunk_topic(TASK, "edge", i) for i in range(len(topics) - 1)] + [
        file_topic(TASK, "edge")
    ]
    assert len(topics) == 1 + 7  # 5000 bytes in chunks of 1024 - 256 framing
    assert all(len(p) <= SMALL_PAYLOAD for _, p in messages)


def test_assembler_takes_chunks_in_any_order_with_stale_ones_and_duplicates() -> None:
    old, new = _file(9000, 1), _file(4000, 2)  # the old file had more chunks
    old_messages = file_messages(_manifest(old, 1), old, SMALL_PAYLOAD)
    new_manifest = _manifest(new, 2)
    new_messages = file_messages(new_manifest, new, SMALL_PAYLOAD)
    # What a late reader finds: the new file, plus the old chunks on higher-index topics.
    retained = dict(old_messages) | dict(new_messages)
    assert len(retained) > len(new_messages)
    arrivals = list(retained.items()) + new_messages[:3]  # and some re-sent duplicates
    random.Random(7).shuffle(arrivals)

    assembler = FileAssembler(file_topic(TASK, "edge"))
    results = [assembler.offer(topic, payload) for topic, payload in arrivals[:5]]
    results.append(assembler.set_manifest(new_manifest))  # the manifest comes in midway
    results += [assembler.offer(topic, payload) for topic, payload in arrivals[5:]]
    assert [r for r in results if r is not None] == [new]
    assert assembler.offer(*new_messages[0]) is None  # returned once only


def test_assembler_never_mixes_chunks_of_two_versions() -> None:
    v1, v2 = _file(6000, 1), _file(6000, 2)  # same chunk count: every topic is overwritten
    m1, m2 = _manifest(v1, 1), _manifest(v2, 2)
    msgs1, msgs2 = file_messages(m1, v1, SMALL_PAYLOAD), file_messages(m2, v2, SMALL_PAYLOAD)
    assembler = FileAssembler(file_topic(TASK, "edge"))
    assembler.set_manifest(m1)
    # v1 was only partly in when v2 replaced it on every topic; then v1's list comes late.
    got = [assembler.offer(topic, payload) for topic, payload in msgs1[:3] + msgs2 + msgs1[-1:]]
    assert got == [None] * len(got)  # v1 is never completed with v2's chunks
    assert assembler.set_manifest(m2) == v2


def test_assembler_refuses_corrupt_chunks_and_recovers_when_good_ones_come() -> None:
    data = _file(5000, 3)
    manifest = _manifest(data)
    messages = file_messages(manifest, data, SMALL_PAYLOAD)
    assembler = FileAssembler(file_topic(TASK, "edge"))
    assembler.set_manifest(manifest)

    chunk = tensors_pb2.Chunk.FromString(messages[1][1])
    chunk.data = b"x" + chunk.data[1:]
    with pytest.raises(HashMismatch, match="its sha256"):
        assembler.offer(messages[1][0], chunk.SerializeToString())
    chunk.sha256 = hashlib.sha256(chunk.data).hexdigest()  # self-consistent, but not the file
    with pytest.raises(ChunkError, match="arrived on the topic"):
        assembler.offer(messages[2][0], chunk.SerializeToString())
    assembler.offer(messages[1][0], chunk.SerializeToString())
    with pytest.raises(HashMismatch, match="chunk list"):
        for topic, payload in messages[:1] + messages[2:]:
            assembler.offer(topic, payload)
    assert assembler.offer(*messages[1]) == data  # the retained copy comes again


def test_assembler_bounds_what_it_holds_for_other_files() -> None:
    assembler = FileAssembler(file_topic(TASK, "edge"), max_files=2)
    for seed in range(6):
        data = _file(3000, seed)
        messages = file_messages(_manifest(data, seed + 1), data, SMALL_PAYLOAD)
        assembler.offer(*messages[0])
    assert assembler.evicted == 4
    with pytest.raises(ValueError, match="neither"):
        assembler.offer(manifest_topic(TASK, "edge"), b"")


# ----------------------------------------------------------------------------- reader


def test_reader_returns_each_version_once_and_refuses_rollbacks() -> None:
    reader = PartitionReader(TASK, "edge", KEYRING)
    manifest_on = reader.topics[0]
    v1, v2 = _file(3000, 1), _file(2000, 2)
    m1, m2 = _manifest(v1, 1), _manifest(v2, 2)
    for topic, payload in file_messages(m1, v1, SMALL_PAYLOAD):
        assert reader.offer(topic, payload) is None
    got = reader.offer(manifest_on, _wire(m1))
    assert got is not None and got.data == v1 and got.manifest.version == 1
    assert reader.offer(manifest_on, _wire(m1)) is None  # re-sent after a reconnect

    assert reader.offer(manifest_on, _wire(m2)) is None  # the file is not in yet
    results = [reader.offer(t, p) for t, p in file_messages(m2, v2, SMALL_PAYLOAD)]
    assert [r.data for r in results if r is not None] == [v2]
    with pytest.raises(StaleManifest, match="older"):
        reader.offer(manifest_on, _wire(m1))
    with pytest.raises(StaleManifest, match="another file"):
        reader.offer(manifest_on, _wire(_manifest(v1, 2)))


def test_reader_ignores_the_version_it_already_runs() -> None:
    data = _file(500, 1)
    reader = PartitionReader(TASK, "edge", KEYRING, installed_version=3)
    for topic, payload in file_messages(_manifest(data, 3), data, SMALL_PAYLOAD):
        reader.offer(topic, payload)
    assert reader.offer(reader.topics[0], _wire(_manifest(data, 3))) is None
    got = reader.offer(reader.topics[0], _wire(_manifest(data, 4)))  # same file, new version
    assert got is not None and got.manifest.version == 4 and got.data == data
