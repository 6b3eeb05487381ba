"""Model announcements and client updates: built, signed, read back and verified.

Reading is where bad input stops: a payload that does not parse, an unsigned or forged
message (when a keyring is given), weights whose hashes or sizes do not check out, NaN/Inf
weights, or config JSON that is not an object all raise a WireError subclass naming the
problem. What the weights must look like for a given architecture is the program's check
(it knows the model).

Updates travel as full float32 weights (the default, what every peer understands) or, when the
announcement asks for it, as a compressed delta against the announced base weights
(``proto.update_encoding``). A delta carries the base's TensorBundle digest; reading it needs
the same base weights, and a delta against any other base raises :class:`BaseMismatch`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from proto import federation_pb2 as pb
from proto import tensors_pb2
from proto.blob_codec import blob_to_weights, pack_blob, unpack_blob, weights_to_blob
from proto.limits import WireLimits
from proto.signing import KeyRing, Signer, sign
from proto.tensor_codec import bundle_from_bytes, bundle_to_bytes
from proto.update_encoding import (
    FLOAT32,
    DeltaKind,
    EncodedUpdate,
    UpdateEncoding,
    UpdateEncodingError,
    decode_delta,
    encode_delta,
    weights_sha256,
)
from proto.wire_errors import BadSignature, BadTensor, MalformedMessage, WireError

END_OF_TASK = -1  # the version of the announcement that ends a task (as in Kafka-ML)
SERVE_ONLY = 0  # the round of an announcement when no round is open: serve it, do not train
_DEFAULT_LIMITS = WireLimits()


class NonFiniteWeights(BadTensor):
    """Weights holding NaN or Inf: a diverged or poisoned update."""


class BaseMismatch(WireError):
    """A delta update against base weights other than the reader's (or the reader has none)."""


# The wire enum <-> proto.update_encoding's kinds; unknown wire values are refused on read.
_KIND_TO_WIRE: dict[DeltaKind, int] = {
    DeltaKind.FLOAT32: pb.UPDATE_FLOAT32,
    DeltaKind.FLOAT16: pb.UPDATE_FLOAT16_DELTA,
    DeltaKind.INT8: pb.UPDATE_INT8_DELTA,
    DeltaKind.TOPK_INT8: pb.UPDATE_TOPK_INT8_DELTA,
}
_WIRE_TO_KIND = {wire: kind for kind, wire in _KIND_TO_WIRE.items()}


def encoding_to_proto(encoding: UpdateEncoding) -> pb.UpdateEncodingRequest:
    return pb.UpdateEncodingRequest(
        encoding=_KIND_TO_WIRE[encoding.kind],  # type: ignore[arg-type]
        topk_fraction=encoding.topk_fraction,
        stochastic_rounding=encoding.stochastic,
    )


def encoding_from_proto(message: pb.UpdateEncodingRequest) -> UpdateEncoding:
    """The encoding a coordinator asks for; float32 when it names one this reader lacks."""
    kind = _WIRE_TO_KIND.get(message.encoding)
    if kind is None:
        return FLOAT32  # a newer coordinator: full float32 weights are always accepted
    try:
        return UpdateEncoding(kind, message.topk_fraction, message.stochastic_rounding)
    except UpdateEncodingError as exc:
        raise MalformedMessage(f"update_encoding: {exc}") from exc


@dataclass(frozen=True)
class ExitScore:
    exit: str  # edge | fog | cloud
    count: int
    mse: float
    mae: float
    rmse: float


@dataclass(frozen=True)
class ReadAnnouncement:
    message: pb.ModelAnnouncement
    model_config: dict[str, Any]  # empty for END_OF_TASK
    preprocessing: dict[str, Any]
    weights: list[np.ndarray]
    signed_by: str | None
    # What the coordinator asks stations to send (float32 when the announcement does not say).
    update_encoding: UpdateEncoding = FLOAT32

    @property
    def ends_task(self) -> bool:
        return self.message.version == END_OF_TASK


@dataclass(frozen=True)
class ReadUpdate:
    message: pb.ClientUpdate
    weights: list[np.ndarray]
    signed_by: str | None


def _parse(kind: type, data: bytes) -> Any:
    message = kind()
    try:
        message.ParseFromString(data)
    except (DecodeError, ValueError) as exc:  # ValueError: invalid UTF-8 in a string field
        raise MalformedMessage(f"{kind.DESCRIPTOR.name}: bytes do not parse ({exc})") from exc
    return message


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedMessage(f"{what}: not JSON ({exc.msg} at {exc.pos})") from exc
    if not isinstance(value, dict):
        raise MalformedMessage(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def _finite(weights: list[np.ndarray], what: str) -> list[np.ndarray]:
    for i, w in enumerate(weights):
        if np.issubdtype(w.dtype, np.floating) and not np.all(np.isfinite(w)):
            raise NonFiniteWeights(f"{what}: weights[{i}] holds NaN or Inf")
    return weights


def _verify(message: Any, keyring: KeyRing | None, require_signed: bool) -> str | None:
    if keyring is None:
        if require_signed:
            raise BadSignature(f"{message.DESCRIPTOR.name}: signatures required but no keyring")
        return None
    if not message.HasField("signature") and not require_signed:
        return None
    return keyring.verify(message)


def build_announcement(
    task_id: str,
    version: int,
    round_: int,
    model_config: dict[str, Any],
    preprocessing: dict[str, Any],
    weights: Sequence[np.ndarray],
    constraints: pb.DataConstraints,
    thresholds: Sequence[float],
    deadline_unix_ms: int,
    announced_unix_ms: int,
    signer: Signer | None = None,
    limits: WireLimits = _DEFAULT_LIMITS,
    update_encoding: UpdateEncoding | None = None,
) -> tuple[pb.ModelAnnouncement, list[tensors_pb2.Chunk]]:
    """An announcement and the chunks to publish before it (empty when the weights fit).

    ``update_encoding`` asks the stations for compressed delta updates; None leaves the field
    unset (full float32 weights, as before).
    """
    blob, chunks = weights_to_blob(list(weights), limits)
    message = pb.ModelAnnouncement(
        task_id=task_id,
        version=version,
        round=round_,
        model_config_json=json.dumps(model_config, sort_keys=True),
        preprocessing_json=json.dumps(preprocessing, sort_keys=True),
        weights=blob,
        constraints=constraints,
        round_deadline_unix_ms=deadline_unix_ms,
        announced_unix_ms=announced_unix_ms,
    )
    message.exit_policy.thresholds.extend(thresholds)
    if update_encoding is not None:
        message.update_encoding.CopyFrom(encoding_to_proto(update_encoding))
    if signer is not None:
        sign(message, signer)
    return message, chunks


def end_of_task(task_id: str, announced_unix_ms: int, signer: Signer | None = None) -> bytes:
    message = pb.ModelAnnouncement(
        task_id=task_id, version=END_OF_TASK, announced_unix_ms=announced_unix_ms
    )
    if signer is not None:
        sign(message, signer)
    return message.SerializeToString()


def read_announcement(
    data: bytes,
    keyring: KeyRing | None = None,
    require_signed: bool = False,
    chunks: Iterable[tensors_pb2.Chunk] = (),
    limits: WireLimits = _DEFAULT_LIMITS,
) -> ReadAnnouncement:
    message: pb.ModelAnnouncement = _parse(pb.ModelAnnouncement, data)
    if not message.task_id:
        raise MalformedMessage("ModelAnnouncement without task_id")
    signed_by = _verify(message, keyring, require_signed)
    if message.version == END_OF_TASK:
        return ReadAnnouncement(message, {}, {}, [], signed_by)
    if message.version < 0:
        raise MalformedMessage(f"ModelAnnouncement version {message.version} is negative")
    what = f"announcement {message.task_id} v{message.version}"
    if not message.HasField("weights"):
        raise MalformedMessage(f"{what}: no weights")
    weights = _finite(blob_to_weights(message.weights, chunks, limits), what)
    try:
        wanted = encoding_from_proto(message.update_encoding)
    except MalformedMessage as exc:
        raise MalformedMessage(f"{what}: {exc}") from None
    return ReadAnnouncement(
        message,
        _json_object(message.model_config_json, f"{what}: model_config_json"),
        _json_object(message.preprocessing_json, f"{what}: preprocessing_json"),
        weights,
        signed_by,
        wanted,
    )


def build_update(
    task_id: str,
    station_id: str,
    base_version: int,
    round_: int,
    update_id: str,
    sample_count: int,
    scores: Sequence[ExitScore],
    weights: Sequence[np.ndarray] | EncodedUpdate,
    train_seconds: float,
    signer: Signer | None = None,
    limits: WireLimits = _DEFAULT_LIMITS,
    *,
    base_weights: Sequence[np.ndarray] | None = None,
    encoding: UpdateEncoding = FLOAT32,
    seed: int | None = None,
) -> tuple[pb.ClientUpdate, list[tensors_pb2.Chunk]]:
    """A client update and the chunks to publish before it (empty when the weights fit).

    ``weights`` are the trained weights, sent as ``encoding`` says: full float32 (the
    default; ``base_weights`` unused) or a delta against ``base_weights`` (the announced
    ones). Or ``weights`` is an :class:`EncodedUpdate` from ``encode_delta`` (error feedback:
    the station keeps ``EncodedDelta.residual`` for its next round) and goes out as it is.
    Raises UpdateEncodingError when the weights cannot be encoded (NaN, shapes unlike the base).
    """
    if isinstance(weights, EncodedUpdate):
        encoded = weights
    elif encoding.is_delta:
        encoded = encode_delta(weights, base_weights, encoding, seed=seed).update
    else:
        encoded = EncodedUpdate(DeltaKind.FLOAT32, "", [(str(i), w) for i, w in enumerate(weights)])
    if encoded.kind is DeltaKind.FLOAT32:  # today's bytes, unchanged
        blob, chunks = weights_to_blob([a for _, a in encoded.tensors], limits)
    else:
        blob, chunks = pack_blob(bundle_to_bytes(encoded.tensors), limits)
    message = pb.ClientUpdate(
        task_id=task_id,
        station_id=station_id,
        base_version=base_version,
        update_id=update_id,
        sample_count=sample_count,
        weights=blob,
        train_seconds=train_seconds,
        round=round_,
    )
    if encoded.kind is not DeltaKind.FLOAT32:
        message.encoding = _KIND_TO_WIRE[encoded.kind]  # type: ignore[assignment]
        message.base_sha256 = encoded.base_sha256
        message.is_delta = True
    for s in scores:
        message.metrics.add(exit=s.exit, count=s.count, mse=s.mse, mae=s.mae, rmse=s.rmse)
    if signer is not None:
        sign(message, signer)
    return message, chunks


def read_update(
    data: bytes,
    keyring: KeyRing | None = None,
    require_signed: bool = False,
    chunks: Iterable[tensors_pb2.Chunk] = (),
    limits: WireLimits = _DEFAULT_LIMITS,
    base_weights: Sequence[np.ndarray] | None = None,
    base_sha256: str | None = None,
) -> ReadUpdate:
    """Parse, verify and decode an update into full weights.

    A delta update needs ``base_weights``, the weights of the version it is based on (the
    round's base); ``base_sha256`` (``weights_sha256(base_weights)``) saves hashing them for
    every update. A delta against another base raises BaseMismatch.
    """
    message: pb.ClientUpdate = _parse(pb.ClientUpdate, data)
    for field in ("task_id", "station_id", "update_id"):
        if not getattr(message, field):
            raise MalformedMessage(f"ClientUpdate without {field}")
    if message.sample_count <= 0:
        raise MalformedMessage(
            f"update {message.update_id}: sample_count {message.sample_count} must be positive"
        )
    signed_by = _verify(message, keyring, require_signed)
    what = f"update {message.update_id}"
    if not message.HasField("weights"):
        raise MalformedMessage(f"{what}: no weights")
    kind = _WIRE_TO_KIND.get(message.encoding)
    if kind is None:
        raise MalformedMessage(f"{what}: unknown encoding {message.encoding}")
    if kind is DeltaKind.FLOAT32:
        if message.is_delta or message.base_sha256:
            raise MalformedMessage(f"{what}: a float32 update is full weights, not a delta")
        weights = _finite(blob_to_weights(message.weights, chunks, limits), what)
        return ReadUpdate(message, weights, signed_by)
    if not message.is_delta or not message.base_sha256:
        raise MalformedMessage(f"{what}: a {kind} delta needs is_delta and base_sha256")
    sent_base = message.base_sha256[:64]
    if base_weights is None:
        raise BaseMismatch(
            f"{what}: {kind} delta against base {sent_base[:12]}, but no base weights to apply it"
        )
    ours = base_sha256 or weights_sha256(base_weights)
    if message.base_sha256 != ours:
        raise BaseMismatch(
            f"{what}: {kind} delta against base {sent_base[:12]} (v{message.base_version}), "
            f"the reader's base is {ours[:12]}"
        )
    tensors = bundle_from_bytes(unpack_blob(message.weights, chunks, limits), limits)
    weights = _finite(decode_delta(EncodedUpdate(kind, ours, tensors), base_weights), what)
    return ReadUpdate(message, weights, signed_by)


def parse_chunk(data: bytes) -> tensors_pb2.Chunk:
    return _parse(tensors_pb2.Chunk, data)
