"""Model announcements and client updates: built, signed, read back and verified.

Reading is where bad input stops: a payload that does not parse, an unsigned or forged
message (when a keyring is given), weights whose hashes or sizes do not check out, NaN/Inf
weights, or config JSON that is not an object all raise a WireError subclass naming the
problem. What the weights must look like for a given architecture is the program's check
(it knows the model).
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
from proto.blob_codec import blob_to_weights, weights_to_blob
from proto.limits import WireLimits
from proto.signing import KeyRing, Signer, sign
from proto.wire_errors import BadSignature, BadTensor, MalformedMessage

END_OF_TASK = -1  # the version of the announcement that ends a task (as in Kafka-ML)
SERVE_ONLY = 0  # the round of an announcement when no round is open: serve it, do not train
_DEFAULT_LIMITS = WireLimits()


class NonFiniteWeights(BadTensor):
    """Weights holding NaN or Inf: a diverged or poisoned update."""


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
) -> tuple[pb.ModelAnnouncement, list[tensors_pb2.Chunk]]:
    """An announcement and the chunks to publish before it (empty when the weights fit)."""
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
    return ReadAnnouncement(
        message,
        _json_object(message.model_config_json, f"{what}: model_config_json"),
        _json_object(message.preprocessing_json, f"{what}: preprocessing_json"),
        weights,
        signed_by,
    )


def build_update(
    task_id: str,
    station_id: str,
    base_version: int,
    round_: int,
    update_id: str,
    sample_count: int,
    scores: Sequence[ExitScore],
    weights: Sequence[np.ndarray],
    train_seconds: float,
    signer: Signer | None = None,
    limits: WireLimits = _DEFAULT_LIMITS,
) -> tuple[pb.ClientUpdate, list[tensors_pb2.Chunk]]:
    blob, chunks = weights_to_blob(list(weights), limits)
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
) -> ReadUpdate:
    message: pb.ClientUpdate = _parse(pb.ClientUpdate, data)
    for field in ("task_id", "station_id", "update_id"):
        if not getattr(message, field):
            raise MalformedMessage(f"ClientUpdate without {field}")
    if message.sample_count <= 0:
        raise MalformedMessage(
            f"update {message.update_id}: sample_count {message.sample_count} must be positive"
        )
    signed_by = _verify(message, keyring, require_signed)
    if not message.HasField("weights"):
        raise MalformedMessage(f"update {message.update_id}: no weights")
    weights = _finite(
        blob_to_weights(message.weights, chunks, limits), f"update {message.update_id}"
    )
    return ReadUpdate(message, weights, signed_by)


def parse_chunk(data: bytes) -> tensors_pb2.Chunk:
    return _parse(tensors_pb2.Chunk, data)
