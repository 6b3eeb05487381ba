"""Partition manifests and files as MQTT messages: build and sign, read and verify, reassemble.

The signed manifest pins the file by sha256 and size; the file itself travels unsigned on the
manifest's ``file_topic`` as a ``Blob``: the file inline when it fits one message, else the
list of its chunks (size and sha256 each), the chunks themselves as ``Chunk`` messages on
``<file_topic>/<index>``. Files travel uncompressed, so the Blob's sha256 is the file's own:
a reader matches the Blob and every chunk to the manifest by that hash before it assembles
anything, and the signed hash checks the result.

Everything is retained and a broker keeps one message per topic, so a late reader may see the
chunks of an older (or, while a publish is under way, a newer) file on some chunk topics.
:class:`FileAssembler` files every message under the file hash it names and assembles only the
one the current manifest names; :class:`PartitionReader` adds the manifest and its version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import DecodeError

from proto import partitions_pb2, tensors_pb2
from proto.blob_codec import pack_blob, unpack_stored
from proto.limits import WireLimits
from proto.mqtt import chunk_index, chunk_topic, file_topic, manifest_topic, partition_topics
from proto.signing import KeyRing, Signer, sign
from proto.tensor_codec import decode_bundle, encode_bundle
from proto.wire_errors import (
    ChunkError,
    HashMismatch,
    MalformedMessage,
    PayloadTooLarge,
    WireError,
)

__all__ = [
    "FileAssembler",
    "PartitionReader",
    "ReceivedPartition",
    "StaleManifest",
    "build_manifest",
    "file_limits",
    "file_messages",
    "read_manifest",
    "verify_file",
]

_DEFAULT_LIMITS = WireLimits()
# Room for a Chunk's or inline Blob's fields besides the data (two hex digests, counts, tags).
_FRAMING = 256
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class StaleManifest(WireError):
    """A manifest not newer than the version held: older, or the same version with another file."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tag(sha256: str) -> str:
    return repr(sha256[:12])


def _is_sha256(value: str) -> bool:
    return bool(_SHA256_HEX.fullmatch(value))


# ----------------------------------------------------------------------------- manifests


def build_manifest(
    task_id: str,
    version: int,
    partition: str,
    format: str,
    variant: str,
    file_bytes: bytes,
    thresholds: Sequence[float],
    normalization_json: str,
    parity_named_arrays: Sequence[tuple[str, np.ndarray]],
    signer: Signer | None,
) -> partitions_pb2.PartitionManifest:
    """A manifest for one partition file, hash and size taken from the bytes, signed if a signer.

    ``parity_named_arrays`` are sample inputs and the outputs this file gives on them, so a
    receiver can self-test the file before it swaps it in.
    """
    if version < 1:
        raise ValueError(f"version {version} must be >= 1")
    if not file_bytes:
        raise ValueError(f"{partition} file is empty")
    for name, value in (("format", format), ("variant", variant)):
        if not value:
            raise ValueError(f"{name} is empty")
    values = [float(t) for t in thresholds]
    if any(math.isnan(t) for t in values):
        raise ValueError(f"thresholds {values} hold NaN")
    try:
        json.loads(normalization_json)
    except ValueError as exc:
        raise ValueError(f"normalization_json is not JSON: {exc}") from None
    manifest = partitions_pb2.PartitionManifest(
        task_id=task_id,
        version=version,
        partition=partition,
        format=format,
        variant=variant,
        sha256=_sha256(file_bytes),
        size=len(file_bytes),
        normalization_json=normalization_json,
        file_topic=file_topic(task_id, partition),
    )
    manifest.exit_policy.thresholds.extend(values)
    manifest.parity.CopyFrom(encode_bundle(list(parity_named_arrays)))
    if signer is not None:
        sign(manifest, signer)
    return manifest


def read_manifest(
    data: bytes,
    keyring: KeyRing | None,
    require_signed: bool = True,
    *,
    topic: str | None = None,
    limits: WireLimits = _DEFAULT_LIMITS,
) -> partitions_pb2.PartitionManifest:
    """Parse, check and verify a manifest; any bad input raises a WireError.

    With a keyring, a signature that is present is always verified; an unsigned manifest
    passes only with ``require_signed=False`` (which a reader without a keyring must use).
    With ``topic``, the manifest must be the one that belongs on it: a validly signed fog
    manifest replayed onto an edge topic is refused.
    """
    if require_signed and keyring is None:
        raise ValueError("require_signed needs a keyring")
    if len(data) > limits.inline_bytes:
        raise PayloadTooLarge(
            f"manifest of {len(data)} bytes exceeds the limit of {limits.inline_bytes}"
        )
    manifest = partitions_pb2.PartitionManifest()
    try:
        manifest.ParseFromString(bytes(data))
    except DecodeError as exc:
        raise MalformedMessage(f"partition manifest does not parse: {exc}") from None
    _check_manifest(manifest, limits)
    where = f"manifest {manifest.task_id}/{manifest.partition} v{manifest.version}"
    if topic is not None and topic != manifest_topic(manifest.task_id, manifest.partition):
        raise MalformedMessage(f"{where} arrived on topic {topic[:200]!r}")
    signed = manifest.HasField("signature") and bool(manifest.signature.ed25519)
    if keyring is not None and (require_signed or signed):
        keyring.verify(manifest)
    return manifest


def _check_manifest(manifest: partitions_pb2.PartitionManifest, limits: WireLimits) -> None:
    for name in ("task_id", "partition", "format", "variant"):
        if not getattr(manifest, name):
            raise MalformedMessage(f"partition manifest has no {name}")
    try:
        expected_topic = file_topic(manifest.task_id, manifest.partition)
    except ValueError as exc:
        raise MalformedMessage(f"partition manifest: {exc}") from None
    where = f"manifest {manifest.task_id}/{manifest.partition} v{manifest.version}"
    if manifest.version < 1:
        raise MalformedMessage(f"{where}: version must be >= 1")
    if not _is_sha256(manifest.sha256):
        raise MalformedMessage(f"{where}: sha256 is not 64 lowercase hex digits")
    if manifest.size == 0:
        raise MalformedMessage(f"{where}: size is 0")
    if manifest.size > limits.max_raw_bytes:
        raise PayloadTooLarge(
            f"{where}: file of {manifest.size} bytes exceeds the limit of {limits.max_raw_bytes}"
        )
    if manifest.file_topic != expected_topic:
        raise MalformedMessage(
            f"{where}: file_topic {manifest.file_topic[:200]!r}, expected {expected_topic!r}"
        )
    if any(math.isnan(t) for t in manifest.exit_policy.thresholds):
        raise MalformedMessage(f"{where}: an exit threshold is NaN")
    try:
        json.loads(manifest.normalization_json)
    except ValueError:
        raise MalformedMessage(f"{where}: normalization_json is not JSON") from None
    if manifest.HasField("parity"):
        decode_bundle(manifest.parity, limits)


def verify_file(
    manifest: partitions_pb2.PartitionManifest,
    file_bytes: bytes,
    limits: WireLimits = _DEFAULT_LIMITS,
) -> None:
    """HashMismatch unless the bytes are exactly the file the manifest names."""
    if len(file_bytes) > limits.max_raw_bytes:
        raise PayloadTooLarge(
            f"file of {len(file_bytes)} bytes exceeds the limit of {limits.max_raw_bytes}"
        )
    where = f"{manifest.partition} file of v{manifest.version}"
    if len(file_bytes) != manifest.size:
        raise HashMismatch(f"{where}: {len(file_bytes)} bytes, the manifest says {manifest.size}")
    if _sha256(file_bytes) != manifest.sha256:
        raise HashMismatch(f"{where}: sha256 does not match the manifest")


# ----------------------------------------------------------------------------- sending files


def file_limits(max_payload_bytes: int, base: WireLimits = _DEFAULT_LIMITS) -> WireLimits:
    """``base`` with inline and chunk sizes such that every file message fits one MQTT message."""
    body = max_payload_bytes - _FRAMING
    if body <= 0:
        raise ValueError(f"max_payload_bytes {max_payload_bytes} leaves no room for data")
    return dataclasses.replace(base, inline_bytes=body, chunk_bytes=body)


def file_messages(
    manifest: partitions_pb2.PartitionManifest,
    file_bytes: bytes,
    max_payload_bytes: int,
    limits: WireLimits = _DEFAULT_LIMITS,
) -> list[tuple[str, bytes]]:
    """(topic, payload) for a file, in publishing order: its chunks first, then the Blob.

    The Blob on the file topic goes last, so once a reader sees it every chunk it lists is
    already on the broker. PayloadTooLarge if the chunk list itself would not fit a message.
    """
    verify_file(manifest, file_bytes, limits)
    blob, chunks = pack_blob(file_bytes, file_limits(max_payload_bytes, limits), compress=False)
    messages = [
        (
            chunk_topic(manifest.task_id, manifest.partition, chunk.index),
            chunk.SerializeToString(deterministic=True),
        )
        for chunk in chunks
    ]
    index = blob.SerializeToString(deterministic=True)
    if len(index) > max_payload_bytes:
        raise PayloadTooLarge(
            f"{manifest.partition} file: the list of its {len(chunks)} chunks takes "
            f"{len(index)} bytes, above max_payload_bytes {max_payload_bytes}"
        )
    messages.append((manifest.file_topic, index))
    return messages


# ----------------------------------------------------------------------------- receiving files


@dataclass
class _Parts:
    """What arrived so far of the file with one sha256."""

    blob: tensors_pb2.Blob | None = None
    chunks: dict[int, tensors_pb2.Chunk] = field(default_factory=dict)
    size: int = 0


class FileAssembler:
    """Reassembles the file a manifest names from its messages, arriving in any order.

    Messages may come before their manifest (they are published first), more than once (a
    reconnect re-sends retained messages) and from other versions (stale chunks left on
    higher-index topics, or a newer file being published). Each is filed under the file hash
    it names; only the manifest's file is assembled. Memory is bounded: besides the
    manifest's file and the latest Blob's, at most ``max_files`` other files are held (the
    least recently touched is dropped), each within ``limits``.
    """

    def __init__(
        self, file_topic: str, limits: WireLimits = _DEFAULT_LIMITS, max_files: int = 4
    ) -> None:
        if max_files < 1:
            raise ValueError("max_files must be >= 1")
        self.file_topic = file_topic
        self.limits = limits
        self.max_files = max_files
        self.evicted = 0
        self._manifest: partitions_pb2.PartitionManifest | None = None
        self._delivered = False
        self._completed: tuple[str, bytes] | None = None  # (sha256, bytes) of the last file
        self._latest_blob: str | None = None
        self._files: OrderedDict[str, _Parts] = OrderedDict()

    def __repr__(self) -> str:
        version = self._manifest.version if self._manifest is not None else None
        return (
            f"FileAssembler({self.file_topic!r}, version={version}, "
            f"files={len(self._files)}, evicted={self.evicted})"
        )

    @property
    def manifest(self) -> partitions_pb2.PartitionManifest | None:
        return self._manifest

    def set_manifest(self, manifest: partitions_pb2.PartitionManifest) -> bytes | None:
        """Assemble this manifest's file from now on; its bytes if already complete."""
        if manifest.file_topic != self.file_topic:
            raise MalformedMessage(
                f"manifest names file topic {manifest.file_topic[:200]!r}, "
                f"this assembler reads {self.file_topic!r}"
            )
        current = self._manifest
        if current is not None and (current.version, current.sha256) == (
            manifest.version,
            manifest.sha256,
        ):
            return self._complete()
        self._manifest = manifest
        self._delivered = False
        return self._complete()

    def offer(self, topic: str, payload: bytes) -> bytes | None:
        """Take a message from the file topic or a chunk topic; the file once it is complete.

        Returns the file's bytes once per manifest, verified against it. Bad messages raise
        a WireError and are dropped; the assembler stays usable.
        """
        if topic == self.file_topic:
            return self._add_blob(payload)
        index = chunk_index(self.file_topic, topic)
        if index is None:
            raise ValueError(f"topic {topic!r} is neither {self.file_topic!r} nor a chunk of it")
        return self._add_chunk(index, payload)

    def _add_blob(self, payload: bytes) -> bytes | None:
        if len(payload) > self.limits.inline_bytes + _FRAMING:
            raise PayloadTooLarge(
                f"file message of {len(payload)} bytes exceeds the limit of "
                f"{self.limits.inline_bytes + _FRAMING}"
            )
        blob = tensors_pb2.Blob()
        try:
            blob.ParseFromString(bytes(payload))
        except DecodeError as exc:
            raise MalformedMessage(f"file message does not parse: {exc}") from None
        if not _is_sha256(blob.sha256):
            raise MalformedMessage("file message: sha256 is not 64 lowercase hex digits")
        if blob.compression != tensors_pb2.COMPRESSION_NONE:
            raise MalformedMessage(f"file {_tag(blob.sha256)} is compressed; files travel raw")
        if blob.data and blob.chunks:
            raise MalformedMessage(f"file {_tag(blob.sha256)} has both inline data and chunks")
        if len(blob.chunks) > self.limits.max_chunks:
            raise PayloadTooLarge(
                f"file {_tag(blob.sha256)} has {len(blob.chunks)} chunks, "
                f"the limit is {self.limits.max_chunks}"
            )
        self._latest_blob = blob.sha256
        if self._is_completed(blob.sha256):
            return self._complete()
        self._parts(blob.sha256).blob = blob
        return self._complete()

    def _add_chunk(self, index: int, payload: bytes) -> bytes | None:
        if len(payload) > self.limits.chunk_bytes + _FRAMING:
            raise PayloadTooLarge(
                f"chunk message of {len(payload)} bytes exceeds the limit of "
                f"{self.limits.chunk_bytes + _FRAMING}"
            )
        chunk = tensors_pb2.Chunk()
        try:
            chunk.ParseFromString(bytes(payload))
        except DecodeError as exc:
            raise MalformedMessage(f"chunk message does not parse: {exc}") from None
        key = chunk.blob_sha256
        if not _is_sha256(key):
            raise MalformedMessage("chunk message: blob_sha256 is not 64 lowercase hex digits")
        if chunk.index != index:
            raise ChunkError(
                f"file {_tag(key)}: chunk {chunk.index} arrived on the topic of {index}"
            )
        if not chunk.index < chunk.count <= self.limits.max_chunks:
            raise ChunkError(
                f"file {_tag(key)}: chunk {chunk.index} of {chunk.count} is out of range "
                f"(at most {self.limits.max_chunks} chunks)"
            )
        if _sha256(chunk.data) != chunk.sha256:
            raise HashMismatch(f"file {_tag(key)}: chunk {index} does not match its sha256")
        if self._is_completed(key):
            return None
        parts = self._parts(key)
        old = parts.chunks.get(index)
        size = parts.size - (len(old.data) if old is not None else 0) + len(chunk.data)
        if size > self.limits.max_stored_bytes:
            del self._files[key]
            raise PayloadTooLarge(
                f"file {_tag(key)}: chunks exceed the limit of {self.limits.max_stored_bytes} bytes"
            )
        parts.chunks[index] = chunk
        parts.size = size
        return self._complete()

    def _is_completed(self, sha256: str) -> bool:
        return self._completed is not None and self._completed[0] == sha256

    def _parts(self, sha256: str) -> _Parts:
        parts = self._files.get(sha256)
        if parts is None:
            parts = self._files[sha256] = _Parts()
        self._files.move_to_end(sha256)
        keep = {self._latest_blob, self._manifest.sha256 if self._manifest else None}
        others = [key for key in self._files if key not in keep]
        for key in others[: max(0, len(others) - self.max_files)]:
            del self._files[key]
            self.evicted += 1
        return parts

    def _complete(self) -> bytes | None:
        """The manifest's file if it is complete and not yet returned for this manifest."""
        manifest = self._manifest
        if manifest is None or self._delivered:
            return None
        if self._completed is not None and self._completed[0] == manifest.sha256:
            self._delivered = True
            return self._completed[1]
        parts = self._files.get(manifest.sha256)
        if parts is None or parts.blob is None:
            return None
        stored = self._stored(manifest, parts, parts.blob)
        if stored is None:
            return None
        try:
            data = unpack_stored(parts.blob, stored, self.limits)
            verify_file(manifest, data, self.limits)
        except WireError:
            del self._files[manifest.sha256]  # wait for the messages to come again
            raise
        del self._files[manifest.sha256]
        self._completed = (manifest.sha256, data)
        self._delivered = True
        return data

    def _stored(
        self, manifest: partitions_pb2.PartitionManifest, parts: _Parts, blob: tensors_pb2.Blob
    ) -> bytes | None:
        """The file's bytes joined from the Blob or its chunks; None while chunks are missing."""
        key = manifest.sha256
        if blob.raw_size != manifest.size:
            del self._files[key]
            raise HashMismatch(
                f"file {_tag(key)}: declares {blob.raw_size} bytes, the manifest {manifest.size}"
            )
        if not blob.chunks:
            return blob.data
        count = len(blob.chunks)
        pieces = []
        for i, ref in enumerate(blob.chunks):
            chunk = parts.chunks.get(i)
            if chunk is None:
                return None
            if ref.index != i or (ref.size, ref.sha256, count) != (
                len(chunk.data),
                chunk.sha256,
                chunk.count,
            ):
                del parts.chunks[i]
                parts.size -= len(chunk.data)
                raise HashMismatch(f"file {_tag(key)}: chunk {i} does not match the chunk list")
            pieces.append(chunk.data)
        return b"".join(pieces)


@dataclass(frozen=True)
class ReceivedPartition:
    """A verified manifest and the file it names."""

    manifest: partitions_pb2.PartitionManifest
    data: bytes


class PartitionReader:
    """Follows one partition of a task: the newest verified manifest and its file.

    Feed it every message of :attr:`topics`; it returns each new version once, complete and
    verified. ``installed_version`` is what the reader already runs (from an earlier
    process): the retained manifest of that version is ignored, an older one is refused.
    """

    def __init__(
        self,
        task_id: str,
        partition: str,
        keyring: KeyRing | None,
        *,
        require_signed: bool = True,
        installed_version: int = 0,
        limits: WireLimits = _DEFAULT_LIMITS,
        max_files: int = 4,
    ) -> None:
        if require_signed and keyring is None:
            raise ValueError("require_signed needs a keyring")
        self.task_id = task_id
        self.partition = partition
        self.topics = partition_topics(task_id, partition)
        self.keyring = keyring
        self.require_signed = require_signed
        self.limits = limits
        self.version = installed_version  # the newest version accepted so far
        self._manifest_topic = self.topics[0]
        self._files = FileAssembler(self.topics[1], limits, max_files)

    def __repr__(self) -> str:
        return f"PartitionReader({self.task_id}/{self.partition}, version={self.version})"

    @property
    def manifest(self) -> partitions_pb2.PartitionManifest | None:
        """The newest verified manifest, whether or not its file is complete yet."""
        return self._files.manifest

    def offer(self, topic: str, payload: bytes) -> ReceivedPartition | None:
        """Take one message; a new version once its manifest and file are both in."""
        if topic == self._manifest_topic:
            manifest = read_manifest(
                payload, self.keyring, self.require_signed, topic=topic, limits=self.limits
            )
            if not self._is_news(manifest):
                return None
            self.version = manifest.version
            return self._received(self._files.set_manifest(manifest))
        return self._received(self._files.offer(topic, payload))

    def _is_news(self, manifest: partitions_pb2.PartitionManifest) -> bool:
        where = f"manifest {self.task_id}/{self.partition} v{manifest.version}"
        if manifest.version > self.version:
            return True
        if manifest.version < self.version:
            raise StaleManifest(f"{where}: older than v{self.version}, already held")
        current = self._files.manifest
        if current is not None and current.sha256 != manifest.sha256:
            raise StaleManifest(f"{where}: names another file than the v{self.version} held")
        return False

    def _received(self, data: bytes | None) -> ReceivedPartition | None:
        manifest = self._files.manifest
        if data is None or manifest is None:
            return None
        return ReceivedPartition(manifest, data)
