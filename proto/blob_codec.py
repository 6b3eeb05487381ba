"""A payload (usually a serialized TensorBundle) as a ``Blob``: zstd-compressed, inline or chunked.

Small blobs travel inside their message. Larger ones travel as separate ``Chunk`` messages (a
Kafka record or MQTT message has a size cap) while the ``Blob`` keeps one ``ChunkRef`` per chunk,
so a signed message pins every chunk by hash. Receivers verify every hash and bound every size
before they allocate: a decompression bomb raises ``PayloadTooLarge`` instead of eating memory.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import zstandard

from proto import tensors_pb2
from proto.limits import WireLimits
from proto.tensor_codec import bundle_from_bytes, bundle_to_bytes
from proto.wire_errors import ChunkError, HashMismatch, MalformedMessage, PayloadTooLarge

__all__ = [
    "ChunkAssembler",
    "blob_to_weights",
    "pack_blob",
    "unpack_blob",
    "unpack_stored",
    "weights_to_blob",
]

_DEFAULT_LIMITS = WireLimits()
_ZSTD_LEVEL = 3
_READ_PIECE = 1024 * 1024
# Our own frames use a window of at most 2 MiB (level 3); refusing larger windows bounds the
# decoder's memory whatever a peer declares.
_MAX_WINDOW = 16 * 1024 * 1024


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tag(sha256: str) -> str:
    """A short, printable form of a (possibly hostile) hash string for error messages."""
    return repr(sha256[:12])


def pack_blob(
    payload: bytes, limits: WireLimits = _DEFAULT_LIMITS, compress: bool = True
) -> tuple[tensors_pb2.Blob, list[tensors_pb2.Chunk]]:
    """Compress a payload; inline if it fits ``limits.inline_bytes``, else chunked.

    Returns the Blob and the Chunk messages to send alongside it (empty when inline).
    """
    if len(payload) > limits.max_raw_bytes:
        raise PayloadTooLarge(
            f"payload of {len(payload)} bytes exceeds the limit of {limits.max_raw_bytes}"
        )
    if compress:
        cctx = zstandard.ZstdCompressor(
            level=_ZSTD_LEVEL, write_content_size=True, write_checksum=True
        )
        stored = cctx.compress(payload)
        compression = tensors_pb2.ZSTD
    else:
        stored = bytes(payload)
        compression = tensors_pb2.COMPRESSION_NONE
    blob = tensors_pb2.Blob(compression=compression, raw_size=len(payload), sha256=_sha256(stored))
    if len(stored) <= limits.inline_bytes:
        blob.data = stored
        return blob, []
    count = math.ceil(len(stored) / limits.chunk_bytes)
    if count > limits.max_chunks:
        raise PayloadTooLarge(
            f"payload needs {count} chunks of {limits.chunk_bytes} bytes, "
            f"the limit is {limits.max_chunks}"
        )
    chunks = []
    for index in range(count):
        piece = stored[index * limits.chunk_bytes : (index + 1) * limits.chunk_bytes]
        digest = _sha256(piece)
        blob.chunks.add(index=index, size=len(piece), sha256=digest)
        chunks.append(
            tensors_pb2.Chunk(
                blob_sha256=blob.sha256, index=index, count=count, sha256=digest, data=piece
            )
        )
    return blob, chunks


def _decompress(stored: bytes, raw_size: int, limits: WireLimits) -> bytes:
    try:
        declared = zstandard.frame_content_size(stored)
    except zstandard.ZstdError:
        raise MalformedMessage("blob data is not a zstd frame") from None
    if declared > limits.max_raw_bytes:
        raise PayloadTooLarge(
            f"zstd frame declares {declared} bytes, the limit is {limits.max_raw_bytes}"
        )
    if declared not in (-1, raw_size):
        raise MalformedMessage(
            f"zstd frame declares {declared} bytes but the blob declares raw_size {raw_size}"
        )
    out = bytearray()
    dctx = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW)
    try:
        with dctx.stream_reader(stored, read_across_frames=True) as reader:
            while len(out) <= raw_size:
                piece = reader.read(min(raw_size + 1 - len(out), _READ_PIECE))
                if not piece:
                    break
                out += piece
    except zstandard.ZstdError as exc:
        raise MalformedMessage(f"blob data does not decompress: {exc}") from None
    if len(out) > raw_size:
        raise PayloadTooLarge(f"blob decompresses to more than its declared {raw_size} bytes")
    if len(out) < raw_size:
        raise MalformedMessage(f"blob decompresses to {len(out)} bytes, declared {raw_size}")
    return bytes(out)


def unpack_stored(
    blob: tensors_pb2.Blob, stored: bytes, limits: WireLimits = _DEFAULT_LIMITS
) -> bytes:
    """Verify a blob's stored bytes (inline data or joined chunks) and decompress them."""
    if blob.raw_size > limits.max_raw_bytes:
        raise PayloadTooLarge(
            f"blob declares {blob.raw_size} raw bytes, the limit is {limits.max_raw_bytes}"
        )
    if len(stored) > limits.max_stored_bytes:
        raise PayloadTooLarge(
            f"blob stores {len(stored)} bytes, the limit is {limits.max_stored_bytes}"
        )
    if not blob.sha256:
        raise MalformedMessage("blob has no sha256")
    if _sha256(stored) != blob.sha256:
        raise HashMismatch(f"blob {_tag(blob.sha256)}: sha256 does not match its stored bytes")
    if blob.compression == tensors_pb2.COMPRESSION_NONE:
        if len(stored) != blob.raw_size:
            raise MalformedMessage(
                f"uncompressed blob stores {len(stored)} bytes, declared {blob.raw_size}"
            )
        return bytes(stored)
    if blob.compression != tensors_pb2.ZSTD:
        raise MalformedMessage(f"blob has unknown compression {blob.compression}")
    return _decompress(stored, blob.raw_size, limits)


@dataclass
class _Pending:
    """The chunks of one blob received so far."""

    count: int | None = None
    refs: tuple[tuple[int, str], ...] | None = None  # (size, sha256) per index, from the Blob
    parts: dict[int, tensors_pb2.Chunk] = field(default_factory=dict)
    size: int = 0

    def missing(self) -> list[int]:
        total = self.count if self.count is not None else 0
        return [i for i in range(total) if i not in self.parts]


class ChunkAssembler:
    """Reassembles blobs from chunks that arrive separately, out of order or more than once.

    Memory is bounded: at most ``max_pending`` incomplete blobs (the oldest is evicted to make
    room), each of at most ``limits.max_chunks`` chunks and ``limits.max_stored_bytes`` bytes.
    The chunk hashes of the last ``remember`` completed blobs are kept, so late duplicates are
    checked and ignored rather than starting a new blob.
    """

    def __init__(
        self, limits: WireLimits = _DEFAULT_LIMITS, max_pending: int = 4, remember: int = 64
    ) -> None:
        if max_pending <= 0 or remember < 0:
            raise ValueError("max_pending must be positive and remember non-negative")
        self.limits = limits
        self.max_pending = max_pending
        self.remember = remember
        self.evicted = 0
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._done: OrderedDict[str, tuple[str, ...]] = OrderedDict()

    def __repr__(self) -> str:
        return (
            f"ChunkAssembler(pending={len(self._pending)}/{self.max_pending}, "
            f"evicted={self.evicted})"
        )

    def __len__(self) -> int:
        """Number of incomplete blobs held."""
        return len(self._pending)

    def missing(self, blob_sha256: str) -> list[int] | None:
        """Chunk indices still missing for a pending blob; None if the blob is not pending."""
        pending = self._pending.get(blob_sha256)
        return None if pending is None else pending.missing()

    def _open(self, key: str) -> _Pending:
        pending = self._pending.get(key)
        if pending is None:
            while len(self._pending) >= self.max_pending:
                self._pending.popitem(last=False)
                self.evicted += 1
            pending = self._pending[key] = _Pending()
        return pending

    def _check_count(self, key: str, count: int) -> None:
        if count == 0:
            raise ChunkError(f"blob {_tag(key)}: chunk count is 0")
        if count > self.limits.max_chunks:
            raise PayloadTooLarge(
                f"blob {_tag(key)} has {count} chunks, the limit is {self.limits.max_chunks}"
            )

    def expect(self, blob: tensors_pb2.Blob) -> None:
        """Pin the chunks of a chunked blob to the sizes and hashes its ``ChunkRef``s list.

        Chunks of an expected blob are checked one by one as they arrive, not only once the
        blob is complete. An inline blob has no chunks, so expecting it does nothing.
        """
        if not blob.chunks:
            return
        key = blob.sha256
        if not key:
            raise MalformedMessage("chunked blob has no sha256")
        self._check_count(key, len(blob.chunks))
        refs = []
        for i, ref in enumerate(blob.chunks):
            if ref.index != i:
                raise ChunkError(f"blob {_tag(key)}: chunk list has index {ref.index} at {i}")
            if ref.size > self.limits.chunk_bytes:
                raise PayloadTooLarge(
                    f"blob {_tag(key)}: chunk {i} of {ref.size} bytes exceeds the limit of "
                    f"{self.limits.chunk_bytes}"
                )
            refs.append((ref.size, ref.sha256))
        done = self._done.get(key)
        if done is not None:
            if done != tuple(sha for _, sha in refs):
                raise ChunkError(f"blob {_tag(key)}: chunk list differs from the completed blob")
            return
        pending = self._open(key)
        if pending.count is not None and pending.count != len(refs):
            raise ChunkError(
                f"blob {_tag(key)}: chunk list has {len(refs)} entries, chunks say {pending.count}"
            )
        for index, chunk in pending.parts.items():
            if refs[index] != (len(chunk.data), chunk.sha256):
                del self._pending[key]
                raise HashMismatch(
                    f"blob {_tag(key)}: received chunk {index} does not match the chunk list"
                )
        pending.count = len(refs)
        pending.refs = tuple(refs)

    def add(self, chunk: tensors_pb2.Chunk) -> bytes | None:
        """Take one chunk; return the blob's stored bytes once all chunks are in and verified.

        Pass the result with its Blob to :func:`unpack_stored` to decompress it. Returns None
        while chunks are missing and for duplicates of chunks already taken.
        """
        key = chunk.blob_sha256
        if not key:
            raise MalformedMessage("chunk has no blob_sha256")
        self._check_count(key, chunk.count)
        if chunk.index >= chunk.count:
            raise ChunkError(
                f"blob {_tag(key)}: chunk index {chunk.index} out of range for {chunk.count} chunks"
            )
        if len(chunk.data) > self.limits.chunk_bytes:
            raise PayloadTooLarge(
                f"blob {_tag(key)}: chunk {chunk.index} of {len(chunk.data)} bytes exceeds the "
                f"limit of {self.limits.chunk_bytes}"
            )
        if _sha256(chunk.data) != chunk.sha256:
            raise HashMismatch(f"blob {_tag(key)}: chunk {chunk.index} does not match its sha256")

        done = self._done.get(key)
        if done is not None:
            if len(done) != chunk.count or done[chunk.index] != chunk.sha256:
                raise ChunkError(
                    f"blob {_tag(key)}: chunk {chunk.index} differs from the completed blob"
                )
            return None

        pending = self._pending.get(key)
        if pending is not None:
            self._check_against(key, pending, chunk)
        else:
            pending = self._open(key)
        if chunk.index in pending.parts:
            return None  # a consistent duplicate (checked above)
        if pending.size + len(chunk.data) > self.limits.max_stored_bytes:
            del self._pending[key]
            raise PayloadTooLarge(
                f"blob {_tag(key)}: chunks exceed the limit of {self.limits.max_stored_bytes} bytes"
            )
        pending.count = chunk.count
        pending.parts[chunk.index] = chunk
        pending.size += len(chunk.data)
        if len(pending.parts) < chunk.count:
            return None

        del self._pending[key]
        ordered = [pending.parts[i] for i in range(chunk.count)]
        stored = b"".join(c.data for c in ordered)
        if _sha256(stored) != key:
            raise HashMismatch(f"blob {_tag(key)}: joined chunks do not match the blob's sha256")
        if self.remember:
            self._done[key] = tuple(c.sha256 for c in ordered)
            while len(self._done) > self.remember:
                self._done.popitem(last=False)
        return stored

    @staticmethod
    def _check_against(key: str, pending: _Pending, chunk: tensors_pb2.Chunk) -> None:
        if pending.count is not None and chunk.count != pending.count:
            raise ChunkError(
                f"blob {_tag(key)}: chunk {chunk.index} says {chunk.count} chunks, "
                f"earlier ones say {pending.count}"
            )
        if pending.refs is not None and pending.refs[chunk.index] != (
            len(chunk.data),
            chunk.sha256,
        ):
            raise HashMismatch(
                f"blob {_tag(key)}: chunk {chunk.index} does not match the blob's chunk list"
            )
        seen = pending.parts.get(chunk.index)
        if seen is not None and seen.sha256 != chunk.sha256:
            raise ChunkError(
                f"blob {_tag(key)}: chunk {chunk.index} arrived twice with different data"
            )


def unpack_blob(
    blob: tensors_pb2.Blob,
    chunks: Iterable[tensors_pb2.Chunk] = (),
    limits: WireLimits = _DEFAULT_LIMITS,
) -> bytes:
    """The payload of a blob, from its inline data or from its chunks (any order, duplicates OK).

    Every chunk must belong to this blob; any bad input raises a WireError.
    """
    if blob.raw_size > limits.max_raw_bytes:
        raise PayloadTooLarge(
            f"blob declares {blob.raw_size} raw bytes, the limit is {limits.max_raw_bytes}"
        )
    if not blob.chunks:
        for chunk in chunks:
            raise ChunkError(f"blob {_tag(blob.sha256)} travels inline, got chunk {chunk.index}")
        return unpack_stored(blob, blob.data, limits)
    if blob.data:
        raise MalformedMessage(f"blob {_tag(blob.sha256)} has both inline data and chunks")
    assembler = ChunkAssembler(limits, max_pending=1)
    assembler.expect(blob)
    stored = None
    for chunk in chunks:
        if chunk.blob_sha256 != blob.sha256:
            raise ChunkError(
                f"chunk {chunk.index} belongs to blob {_tag(chunk.blob_sha256)}, "
                f"not {_tag(blob.sha256)}"
            )
        joined = assembler.add(chunk)
        if joined is not None:
            stored = joined
    if stored is None:
        missing = assembler.missing(blob.sha256) or []
        raise ChunkError(
            f"blob {_tag(blob.sha256)} is missing chunks {missing[:10]} of {len(blob.chunks)}"
        )
    return unpack_stored(blob, stored, limits)


def weights_to_blob(
    arrays: Sequence[np.ndarray] | Sequence[tuple[str, np.ndarray]],
    limits: WireLimits = _DEFAULT_LIMITS,
) -> tuple[tensors_pb2.Blob, list[tensors_pb2.Chunk]]:
    """Arrays as a TensorBundle in a Blob, plus the chunks to send when it does not fit inline."""
    return pack_blob(bundle_to_bytes(arrays), limits)


def blob_to_weights(
    blob: tensors_pb2.Blob,
    chunks: Iterable[tensors_pb2.Chunk] = (),
    limits: WireLimits = _DEFAULT_LIMITS,
) -> list[np.ndarray]:
    """The arrays of a TensorBundle carried in a Blob, every hash and size verified."""
    return [array for _, array in bundle_from_bytes(unpack_blob(blob, chunks, limits), limits)]
