"""Blobs round-trip inline or chunked, and every damaged, missing or oversized part is refused."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tracemalloc

import numpy as np
import pytest
import zstandard
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from proto import tensors_pb2
from proto.blob_codec import (
    ChunkAssembler,
    blob_to_weights,
    pack_blob,
    unpack_blob,
    unpack_stored,
    weights_to_blob,
)
from proto.limits import WireLimits
from proto.wire_errors import ChunkError, HashMismatch, MalformedMessage, PayloadTooLarge, WireError

FAST = settings(max_examples=50, deadline=None)
# Small limits so a few KiB already travel as chunks.
SMALL = WireLimits(max_raw_bytes=64 * 1024, inline_bytes=1024, chunk_bytes=256, max_chunks=512)


def chunked(size: int = 4000, seed: int = 0) -> tuple[bytes, tensors_pb2.Blob, list]:
    """An incompressible payload that needs several chunks under SMALL."""
    payload = np.random.default_rng(seed).bytes(size)
    blob, chunks = pack_blob(payload, SMALL)
    assert len(chunks) > 1
    return payload, blob, chunks


@FAST
@given(st.binary(max_size=3000), st.booleans())
def test_inline_round_trip(payload: bytes, compress: bool) -> None:
    blob, chunks = pack_blob(payload, compress=compress)
    assert chunks == []
    assert blob.raw_size == len(payload)
    wire = tensors_pb2.Blob.FromString(blob.SerializeToString())
    assert unpack_blob(wire) == payload


def test_compressible_payload_is_compressed_with_size_and_checksum() -> None:
    payload = b"charging session " * 1000
    blob, _ = pack_blob(payload)
    assert blob.compression == tensors_pb2.ZSTD
    assert len(blob.data) < len(payload) // 10
    assert zstandard.frame_content_size(blob.data) == len(payload)
    assert zstandard.get_frame_parameters(blob.data).has_checksum
    assert blob.sha256 == hashlib.sha256(blob.data).hexdigest()


@FAST
@given(st.data())
def test_chunks_in_any_order_with_duplicates(data: st.DataObject) -> None:
    payload, blob, chunks = chunked(data.draw(st.integers(1100, 6000)))
    order = data.draw(st.permutations(range(len(chunks))))
    repeats = data.draw(st.lists(st.sampled_from(range(len(chunks))), max_size=6))
    shuffled = [chunks[i] for i in order] + [chunks[i] for i in repeats]
    assert not blob.data
    assert [ref.index for ref in blob.chunks] == list(range(len(chunks)))
    assert unpack_blob(blob, shuffled, SMALL) == payload


def test_chunks_survive_serialization() -> None:
    payload, blob, chunks = chunked()
    wire_chunks = [tensors_pb2.Chunk.FromString(c.SerializeToString()) for c in chunks]
    wire_blob = tensors_pb2.Blob.FromString(blob.SerializeToString())
    assert unpack_blob(wire_blob, wire_chunks, SMALL) == payload


def test_missing_chunk_is_named() -> None:
    _, blob, chunks = chunked()
    with pytest.raises(ChunkError, match=r"missing chunks \[2\]"):
        unpack_blob(blob, chunks[:2] + chunks[3:], SMALL)
    with pytest.raises(ChunkError, match="missing"):
        unpack_blob(blob, [], SMALL)


def _copy(chunk: tensors_pb2.Chunk) -> tensors_pb2.Chunk:
    return tensors_pb2.Chunk.FromString(chunk.SerializeToString())


def test_wrong_chunk_hash_is_rejected() -> None:
    _, blob, chunks = chunked()
    bad = _copy(chunks[1])
    bad.sha256 = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(HashMismatch):
        unpack_blob(blob, [chunks[0], bad, *chunks[2:]], SMALL)


@FAST
@given(st.data())
def test_bit_flipped_chunk_is_rejected(data: st.DataObject) -> None:
    _, blob, chunks = chunked()
    index = data.draw(st.integers(0, len(chunks) - 1))
    bit = data.draw(st.integers(0, len(chunks[index].data) * 8 - 1))
    bad = _copy(chunks[index])
    flipped = bytearray(bad.data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    bad.data = bytes(flipped)
    with pytest.raises(HashMismatch):
        unpack_blob(blob, [*chunks[:index], bad, *chunks[index + 1 :]], SMALL)


def test_truncated_chunk_is_rejected() -> None:
    _, blob, chunks = chunked()
    bad = _copy(chunks[0])
    bad.data = bad.data[:-1]
    with pytest.raises(HashMismatch):
        unpack_blob(blob, [bad, *chunks[1:]], SMALL)


def test_forged_but_self_consistent_chunk_fails_the_chunk_list() -> None:
    _, blob, chunks = chunked()
    bad = _copy(chunks[0])
    bad.data = bytes(len(bad.data))
    bad.sha256 = hashlib.sha256(bad.data).hexdigest()
    with pytest.raises(HashMismatch, match="chunk list"):
        unpack_blob(blob, [bad, *chunks[1:]], SMALL)


def test_foreign_chunk_is_rejected() -> None:
    _, blob, chunks = chunked(seed=1)
    _, _, others = chunked(seed=2)
    with pytest.raises(ChunkError, match="belongs to blob"):
        unpack_blob(blob, [*chunks, others[0]], SMALL)


def test_inline_blob_with_chunks_is_rejected() -> None:
    blob, _ = pack_blob(b"small")
    _, _, others = chunked()
    with pytest.raises(ChunkError, match="inline"):
        unpack_blob(blob, others[:1])


def test_inconsistent_chunk_counts_and_indices_are_rejected() -> None:
    _, blob, chunks = chunked()
    recount = _copy(chunks[0])
    recount.count += 1
    with pytest.raises(ChunkError):
        unpack_blob(blob, [recount, *chunks[1:]], SMALL)
    out_of_range = _copy(chunks[0])
    out_of_range.index = out_of_range.count
    with pytest.raises(ChunkError, match="out of range"):
        unpack_blob(blob, [out_of_range, *chunks[1:]], SMALL)


def test_tampered_blob_fields_are_rejected() -> None:
    blob, _ = pack_blob(b"station 42 " * 50)
    for mutate, error in [
        (lambda b: setattr(b, "sha256", "0" * 64), HashMismatch),
        (lambda b: setattr(b, "sha256", ""), MalformedMessage),
        (lambda b: setattr(b, "raw_size", b.raw_size + 1), MalformedMessage),
        (lambda b: setattr(b, "raw_size", 2**40), PayloadTooLarge),
        (lambda b: setattr(b, "compression", 7), MalformedMessage),
    ]:
        bad = tensors_pb2.Blob.FromString(blob.SerializeToString())
        mutate(bad)
        with pytest.raises(error):
            unpack_blob(bad)


def test_uncompressed_size_must_match() -> None:
    blob, _ = pack_blob(b"abc", compress=False)
    assert blob.compression == tensors_pb2.COMPRESSION_NONE
    blob.raw_size = 2
    with pytest.raises(MalformedMessage):
        unpack_blob(blob)


def test_oversized_payloads_are_refused_when_packing() -> None:
    with pytest.raises(PayloadTooLarge):
        pack_blob(bytes(SMALL.max_raw_bytes + 1), SMALL)
    few_chunks = WireLimits(inline_bytes=1024, chunk_bytes=256, max_chunks=4)
    with pytest.raises(PayloadTooLarge, match="chunks"):
        pack_blob(os.urandom(2000), few_chunks)


def _bomb(raw_size: int, with_content_size: bool) -> bytes:
    """A zstd frame of ``raw_size`` zero bytes, compressed piece by piece (never held whole)."""
    cctx = zstandard.ZstdCompressor(level=1, write_content_size=with_content_size)
    cobj = cctx.compressobj(size=raw_size if with_content_size else -1)
    piece = bytes(1024 * 1024)
    parts = [cobj.compress(piece) for _ in range(raw_size // len(piece))]
    parts.append(cobj.flush())
    return b"".join(parts)


def _bomb_blob(stored: bytes, raw_size: int) -> tensors_pb2.Blob:
    return tensors_pb2.Blob(
        compression=tensors_pb2.ZSTD,
        raw_size=raw_size,
        sha256=hashlib.sha256(stored).hexdigest(),
        data=stored,
    )


BOMB_SIZE = 200 * 1024 * 1024
LIMITED = WireLimits(max_raw_bytes=1024 * 1024, inline_bytes=1024 * 1024)


@pytest.mark.parametrize("with_content_size", [True, False], ids=["declared", "undeclared"])
def test_zstd_bomb_is_refused_without_allocating_it(with_content_size: bool) -> None:
    stored = _bomb(BOMB_SIZE, with_content_size)
    assert len(stored) < 100_000
    honest = _bomb_blob(stored, BOMB_SIZE)
    lying = _bomb_blob(stored, 1000)  # claims a small payload
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge):
            unpack_blob(honest, limits=LIMITED)
        with pytest.raises(PayloadTooLarge):
            unpack_blob(lying, limits=LIMITED)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024


def test_trailing_garbage_after_the_frame_is_rejected() -> None:
    blob, _ = pack_blob(b"x" * 100)
    stored = blob.data + b"garbage"
    with pytest.raises(MalformedMessage):
        unpack_stored(_bomb_blob(stored, 100), stored)


def test_weights_round_trip_through_chunks() -> None:
    rng = np.random.default_rng(3)
    weights = [rng.standard_normal((40, 30)).astype(np.float32), np.arange(5, dtype=np.int64)]
    blob, chunks = weights_to_blob(weights, SMALL)
    assert chunks
    got = blob_to_weights(blob, reversed(chunks), SMALL)
    assert len(got) == 2
    for a, b in zip(got, weights, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype


def test_weights_blob_with_a_corrupt_bundle_is_rejected() -> None:
    blob, _ = pack_blob(b"not a tensor bundle")
    with pytest.raises(WireError):
        blob_to_weights(blob)


def test_assembler_interleaves_blobs_and_ignores_late_duplicates() -> None:
    p1, b1, c1 = chunked(seed=1)
    p2, b2, c2 = chunked(seed=2)
    assembler = ChunkAssembler(SMALL)
    results = {}
    for chunk in [x for pair in zip(reversed(c1), c2, strict=True) for x in pair]:
        stored = assembler.add(chunk)
        if stored is not None:
            results[chunk.blob_sha256] = stored
    assert unpack_stored(b1, results[b1.sha256], SMALL) == p1
    assert unpack_stored(b2, results[b2.sha256], SMALL) == p2
    assert len(assembler) == 0
    assert assembler.add(c1[0]) is None  # late duplicate: no new pending blob
    assert len(assembler) == 0
    forged = _copy(c1[0])
    forged.data = b"forged"
    forged.sha256 = hashlib.sha256(b"forged").hexdigest()
    with pytest.raises(ChunkError):
        assembler.add(forged)


def test_assembler_rejects_a_duplicate_with_different_data() -> None:
    _, _, chunks = chunked()
    assembler = ChunkAssembler(SMALL)
    assert assembler.add(chunks[0]) is None
    other = _copy(chunks[0])
    other.data = b"different"
    other.sha256 = hashlib.sha256(other.data).hexdigest()
    with pytest.raises(ChunkError, match="different data"):
        assembler.add(other)


def test_assembler_detects_a_foreign_chunk_once_complete() -> None:
    """Without the Blob, a self-consistent forged chunk is caught by the blob's own sha256."""
    _, _, chunks = chunked()
    forged = _copy(chunks[-1])
    forged.data = b"forged"
    forged.sha256 = hashlib.sha256(b"forged").hexdigest()
    assembler = ChunkAssembler(SMALL)
    for chunk in chunks[:-1]:
        assert assembler.add(chunk) is None
    with pytest.raises(HashMismatch):
        assembler.add(forged)
    assert len(assembler) == 0


def test_expected_blob_checks_each_chunk_on_arrival() -> None:
    _, blob, chunks = chunked()
    assembler = ChunkAssembler(SMALL)
    assembler.expect(blob)
    assert assembler.missing(blob.sha256) == list(range(len(chunks)))
    forged = _copy(chunks[1])
    forged.data = bytes(len(forged.data))
    forged.sha256 = hashlib.sha256(forged.data).hexdigest()
    with pytest.raises(HashMismatch):
        assembler.add(forged)
    assert assembler.missing(blob.sha256) == list(range(len(chunks)))


def test_assembler_evicts_the_oldest_incomplete_blob() -> None:
    blobs = [chunked(seed=seed) for seed in range(4)]
    assembler = ChunkAssembler(SMALL, max_pending=2)
    for _, _, chunks in blobs:
        assembler.add(chunks[0])
    assert len(assembler) == 2
    assert assembler.evicted == 2
    assert assembler.missing(blobs[0][1].sha256) is None  # evicted
    # The newest blobs still complete.
    payload, blob, chunks = blobs[3]
    stored = None
    for chunk in chunks[1:]:
        stored = assembler.add(chunk) or stored
    assert stored is not None
    assert unpack_stored(blob, stored, SMALL) == payload
    # The evicted one cannot complete any more: its first chunk is gone.
    for chunk in blobs[0][2][1:]:
        assert assembler.add(chunk) is None
    assert len(assembler) <= 2


def test_assembler_bounds_chunk_count_and_size() -> None:
    assembler = ChunkAssembler(SMALL)
    too_many = tensors_pb2.Chunk(
        blob_sha256="a" * 64, index=0, count=SMALL.max_chunks + 1, sha256="", data=b""
    )
    with pytest.raises(PayloadTooLarge):
        assembler.add(too_many)
    big = bytes(SMALL.chunk_bytes + 1)
    too_big = tensors_pb2.Chunk(
        blob_sha256="a" * 64, index=0, count=2, sha256=hashlib.sha256(big).hexdigest(), data=big
    )
    with pytest.raises(PayloadTooLarge):
        assembler.add(too_big)
    with pytest.raises(MalformedMessage):
        assembler.add(tensors_pb2.Chunk(index=0, count=1))
    assert len(assembler) == 0


@FAST
@given(st.binary(max_size=300))
def test_garbage_chunks_raise_only_wire_errors(garbage: bytes) -> None:
    _, blob, chunks = chunked()
    try:
        chunk = tensors_pb2.Chunk.FromString(garbage)
    except DecodeError:  # not a Chunk at all: the transport's parse error, not ours
        return
    chunk.blob_sha256 = blob.sha256
    with contextlib.suppress(WireError):  # anything else fails the test
        unpack_blob(blob, [chunk, *chunks], SMALL)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"chunk_bytes": 0}, ValueError),
        ({"max_chunks": -1}, ValueError),
        ({"inline_bytes": 100, "chunk_bytes": 200}, ValueError),
        ({"max_tensors": 1.5}, TypeError),
        ({"max_tensors": True}, TypeError),
    ],
)
def test_limits_refuse_nonsense(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        WireLimits(**kwargs)
