"""Property-based fuzzing of every decoder in proto/ that had none: random bytes and mutations
of valid messages raise only WireError subclasses, never another exception, never hang.

Already fuzzed elsewhere (not repeated here): ``bundle_from_bytes`` (garbage, every
truncation, every bit flip: tests/test_tensor_codec.py), ``unpack_blob`` with garbage chunks
(tests/test_blob_codec.py) and ``KeyRing.verify`` with garbage signatures
(tests/test_signing.py). Fuzzed here: ``decode_tensor``, ``hidden_of``, ``unpack_blob`` /
``unpack_stored`` / ``blob_to_weights`` from whole Blob messages, ``ChunkAssembler``,
``read_update``, ``read_announcement``, ``parse_chunk``, ``read_manifest``, ``verify_file``,
``FileAssembler.offer``, ``PartitionReader.offer``, ``session_from_proto`` and
``constraints_from_proto``.

A deadline of a few seconds per example is the hang guard, not a speed requirement.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proto import federation_pb2, inference_pb2, sessions_pb2, tensors_pb2
from proto.blob_codec import ChunkAssembler, blob_to_weights, pack_blob, unpack_blob, unpack_stored
from proto.constraints_codec import constraints_from_proto
from proto.federation_codec import (
    ExitScore,
    build_announcement,
    build_update,
    parse_chunk,
    read_announcement,
    read_update,
)
from proto.infer_messages import hidden_of
from proto.limits import WireLimits
from proto.mqtt import chunk_topic, file_topic, manifest_topic
from proto.partition_messages import (
    FileAssembler,
    PartitionReader,
    build_manifest,
    file_messages,
    read_manifest,
    verify_file,
)
from proto.session_codec import session_from_proto
from proto.signing import KeyRing, Signer
from proto.tensor_codec import decode_tensor, encode_tensor
from proto.wire_errors import WireError

FUZZ = settings(
    max_examples=80,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TASK = "fuzz-task"
SIGNER = Signer("coordinator-1", Ed25519PrivateKey.generate())
KEYRING = KeyRing({"coordinator-1": SIGNER.public_key})
SMALL = WireLimits(inline_bytes=2048, chunk_bytes=512, max_chunks=64, max_raw_bytes=1 << 20)
_RNG = np.random.default_rng(0)
WEIGHTS = [
    _RNG.standard_normal((8, 4)).astype(np.float32),
    _RNG.standard_normal(4).astype(np.float32),
]
SCORES = [ExitScore("edge", 3, 1.0, 1.0, 1.0)]


def _update_bytes() -> bytes:
    message, _ = build_update(TASK, "dd:a", 1, 2, "dd:a:1", 10, SCORES, WEIGHTS, 0.1, SIGNER)
    return message.SerializeToString()


def _announcement_bytes() -> bytes:
    message, _ = build_announcement(
        TASK, 1, 2, {"layers": []}, {"mean": 0}, WEIGHTS, federation_pb2.DataConstraints(),
        (0.5, 1.0), 0, 0, SIGNER,
    )  # fmt: skip
    return message.SerializeToString()


FILE = np.random.default_rng(1).bytes(1500)  # a file that travels as three 512-byte chunks
MANIFEST = build_manifest(
    TASK, 3, "edge", "tflite", "float32", FILE, (0.5,), '{"mean": 0}',
    [("input", np.ones((1, 2), np.float32))], SIGNER,
)  # fmt: skip
FILE_MESSAGES = file_messages(MANIFEST, FILE, 512 + 256)
UPDATE = _update_bytes()
ANNOUNCEMENT = _announcement_bytes()
INLINE_BLOB, _ = pack_blob(b"payload " * 40)
CHUNKED_BLOB, CHUNKS = pack_blob(np.random.default_rng(2).bytes(3000), SMALL, compress=False)
TENSOR = encode_tensor(np.arange(12, dtype=np.float32).reshape(3, 4), "hidden")
SESSION = sessions_pb2.Session(
    session_id="s1", station_id="dd:a", start_unix_ms=1_500_000_000_000,
    end_unix_ms=1_500_003_600_000, timezone="Europe/London", energy_kwh=7.5, latitude=56.4,
    longitude=-2.9,
)  # fmt: skip


@st.composite
def mutated(draw, valid: bytes) -> bytes:
    """A valid message damaged: bits flipped, cut short, bytes inserted or overwritten."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "overwrite"]))
        if not data:
            data += draw(st.binary(min_size=1, max_size=8))
            continue
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            piece = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(piece)] = piece
    return bytes(data)


def garbage_or(valid: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=600), mutated(valid))


def only_wire_errors(call, *args, **kwargs) -> None:
    """Run a decoder; a WireError is a correct answer, any other exception fails the test."""
    with contextlib.suppress(WireError):
        call(*args, **kwargs)


def _parsed(kind, data: bytes):
    """The message the bytes parse to, or None: a protobuf parse error is the transport's."""
    try:
        return kind.FromString(data)
    except (DecodeError, ValueError):
        return None


# --- tensors and inference requests -----------------------------------------------------------


TENSOR_FIELDS = st.builds(
    tensors_pb2.Tensor,
    name=st.text(max_size=8),
    dtype=st.integers(-5, 20),
    shape=st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(-3, 40), max_size=6),
    data=st.binary(max_size=256),
)


@FUZZ
@given(st.one_of(TENSOR_FIELDS, mutated(TENSOR.SerializeToString()).map(
    lambda b: _parsed(tensors_pb2.Tensor, b) or tensors_pb2.Tensor())))  # fmt: skip
def test_decode_tensor_raises_only_wire_errors(tensor) -> None:
    only_wire_errors(decode_tensor, tensor, SMALL)


@FUZZ
@given(TENSOR_FIELDS, st.text(max_size=8), st.integers(-(2**63), 2**63 - 1), st.booleans())
def test_hidden_of_raises_only_wire_errors(tensor, task_id, version, with_hidden) -> None:
    request = inference_pb2.InferRequest(task_id=task_id, model_version=version, request_id="r")
    if with_hidden:
        request.hidden.CopyFrom(tensor)
    only_wire_errors(hidden_of, request, SMALL)


# --- blobs and chunks -------------------------------------------------------------------------


@FUZZ
@given(
    st.one_of(
        garbage_or(INLINE_BLOB.SerializeToString()), mutated(CHUNKED_BLOB.SerializeToString())
    ),
    st.lists(
        st.sampled_from(CHUNKS)
        | st.binary(max_size=300).map(
            lambda b: _parsed(tensors_pb2.Chunk, b) or tensors_pb2.Chunk()
        ),
        max_size=8,
    ),
)
def test_blobs_from_damaged_messages_raise_only_wire_errors(data, chunks) -> None:
    blob = _parsed(tensors_pb2.Blob, data)
    if blob is None:
        return
    only_wire_errors(unpack_blob, blob, chunks, SMALL)
    only_wire_errors(unpack_stored, blob, blob.data, SMALL)
    only_wire_errors(blob_to_weights, blob, chunks, SMALL)


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.sampled_from(CHUNKS),
            mutated(CHUNKS[0].SerializeToString()).map(
                lambda b: _parsed(tensors_pb2.Chunk, b) or tensors_pb2.Chunk()
            ),
        ),
        max_size=10,
    ),
    mutated(CHUNKED_BLOB.SerializeToString()),
)
def test_chunk_assembler_takes_any_sequence_raising_only_wire_errors(chunks, blob_bytes) -> None:
    assembler = ChunkAssembler(SMALL, max_pending=2)
    blob = _parsed(tensors_pb2.Blob, blob_bytes)
    if blob is not None:
        only_wire_errors(assembler.expect, blob)
    for chunk in chunks:
        only_wire_errors(assembler.add, chunk)
    assert len(assembler) <= 2


# --- federation messages (Kafka) --------------------------------------------------------------


@FUZZ
@given(garbage_or(UPDATE), st.booleans())
def test_read_update_raises_only_wire_errors(data, signed) -> None:
    keyring = KEYRING if signed else None
    only_wire_errors(read_update, data, keyring, signed, (), SMALL)


@FUZZ
@given(garbage_or(ANNOUNCEMENT), st.booleans())
def test_read_announcement_raises_only_wire_errors(data, signed) -> None:
    keyring = KEYRING if signed else None
    only_wire_errors(read_announcement, data, keyring, signed, CHUNKS, SMALL)


@FUZZ
@given(garbage_or(CHUNKS[0].SerializeToString()))
def test_parse_chunk_raises_only_wire_errors(data) -> None:
    only_wire_errors(parse_chunk, data)


# --- partitions (MQTT) ------------------------------------------------------------------------


@FUZZ
@given(garbage_or(MANIFEST.SerializeToString()), st.booleans(), st.booleans())
def test_read_manifest_raises_only_wire_errors(data, require_signed, on_topic) -> None:
    topic = manifest_topic(TASK, "edge") if on_topic else None
    only_wire_errors(read_manifest, data, KEYRING, require_signed, topic=topic, limits=SMALL)


@FUZZ
@given(garbage_or(FILE))
def test_verify_file_raises_only_wire_errors(data) -> None:
    only_wire_errors(verify_file, MANIFEST, data, SMALL)


FILE_TOPICS = [manifest_topic(TASK, "edge"), file_topic(TASK, "edge")] + [
    chunk_topic(TASK, "edge", i) for i in range(4)
]
MESSAGES = [(manifest_topic(TASK, "edge"), MANIFEST.SerializeToString()), *FILE_MESSAGES]


@st.composite
def message_stream(draw):
    """Messages of one partition's topics: genuine, damaged, misplaced or garbage, any order."""
    out = []
    for _ in range(draw(st.integers(1, 8))):
        topic, payload = draw(st.sampled_from(MESSAGES))
        kind = draw(st.sampled_from(["genuine", "damaged", "misplaced", "garbage"]))
        if kind == "damaged":
            payload = draw(mutated(payload))
        elif kind == "misplaced":
            topic = draw(st.sampled_from(FILE_TOPICS))
        elif kind == "garbage":
            topic, payload = draw(st.sampled_from(FILE_TOPICS)), draw(st.binary(max_size=300))
        out.append((topic, payload))
    return out


@FUZZ
@given(message_stream())
def test_partition_reader_and_file_assembler_raise_only_wire_errors(stream) -> None:
    reader = PartitionReader(TASK, "edge", KEYRING, limits=SMALL)
    assembler = FileAssembler(file_topic(TASK, "edge"), SMALL, max_files=2)
    assembler.set_manifest(MANIFEST)
    for topic, payload in stream:
        only_wire_errors(reader.offer, topic, payload)
        if topic != manifest_topic(TASK, "edge"):
            got = None
            with contextlib.suppress(WireError):
                got = assembler.offer(topic, payload)
            assert got is None or got == FILE  # never a file other than the manifest's


# --- sessions and constraints ------------------------------------------------------------------

ZONES = st.sampled_from(
    ["Europe/London", "UTC", "", "Europe", "America", "Etc", "posix", "right/UTC", "../x", "a\x00b",
     "Europe/London/", "Mars/Base"]
) | st.text(max_size=20)  # fmt: skip
FLOATS = st.floats(allow_nan=True, allow_infinity=True)


@FUZZ
@given(
    st.one_of(
        st.builds(
            sessions_pb2.Session,
            session_id=st.text(max_size=5), station_id=st.text(max_size=5),
            start_unix_ms=st.integers(-(2**63), 2**63 - 1),
            end_unix_ms=st.integers(-(2**63), 2**63 - 1), timezone=ZONES, energy_kwh=FLOATS,
            latitude=FLOATS, longitude=FLOATS, charging_time_h=FLOATS,
        ),
        mutated(SESSION.SerializeToString()).map(lambda b: _parsed(sessions_pb2.Session, b)),
    )
)  # fmt: skip
def test_session_from_proto_raises_only_wire_errors(message) -> None:
    if message is None:
        return
    only_wire_errors(session_from_proto, message)


CONSTRAINTS = st.builds(
    federation_pb2.DataConstraints,
    target=st.text(max_size=6),
    min_samples=st.integers(-(2**63), 2**63 - 1),
    window_start_unix_ms=st.integers(-(2**63), 2**63 - 1),
    window_end_unix_ms=st.integers(-(2**63), 2**63 - 1),
)


@FUZZ
@given(CONSTRAINTS)
def test_constraints_from_proto_raises_only_wire_errors(message) -> None:
    only_wire_errors(constraints_from_proto, message)


@FUZZ
@given(
    st.builds(
        federation_pb2.DataConstraints,
        target=st.text(max_size=6),
        min_samples=st.integers(-(2**63), 2**63 - 1),
        window_start_unix_ms=st.integers(-(2**40), 2**40),
        window_end_unix_ms=st.integers(-(2**40), 2**40),
    ),
    st.lists(st.tuples(st.text(max_size=4), st.integers(-3, 12), st.lists(
        st.integers(-(2**63), 2**63 - 1), max_size=3)), max_size=3),
)  # fmt: skip
def test_constraints_within_the_datetime_range_raise_only_wire_errors(message, features) -> None:
    for name, dtype, shape in features:
        message.features.add(name=name, dtype=dtype, shape=shape)
    only_wire_errors(constraints_from_proto, message)


def test_a_megabyte_of_garbage_is_refused_by_every_bytes_decoder() -> None:
    """The large end of random input, once, for each decoder that takes raw bytes."""
    garbage = np.random.default_rng(9).bytes(1 << 20)
    for decode in (
        lambda: read_update(garbage),
        lambda: read_announcement(garbage),
        lambda: parse_chunk(garbage),
        lambda: read_manifest(garbage, KEYRING, limits=SMALL),
        lambda: FileAssembler(FILE_TOPICS[1], SMALL).offer(FILE_TOPICS[1], garbage),
    ):
        with pytest.raises(WireError):
            decode()
