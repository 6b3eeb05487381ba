"""A station's trained weights as a compressed delta against the announced base, and back.

Pure numpy: no protobuf, no I/O. ``encode_delta`` turns (weights, base) into the named arrays
of one TensorBundle (``EncodedUpdate.tensors``); ``decode_delta`` turns them back into weights
given the same base. The federation codec puts the bundle in a ClientUpdate's ``weights`` blob
(zstd, hashed, signed) and the encoding and base digest beside it.

Layouts, for weight ``i`` in order (names are part of the wire contract):

- ``float32``: ``"i"`` the full weights as they are (today's update; no base needed).
- ``float16``: ``"i"`` float16 delta, same shape as the base tensor.
- ``int8``: ``"i/q"`` int8 in [-127, 127], same shape; ``"i/scale"`` float32 scalar, so
  delta = q * scale (symmetric, per tensor; rounding to nearest or stochastic).
- ``topk-int8``: the k = ceil(fraction * size) largest-magnitude entries of each tensor's delta
  (plus any error-feedback residual): ``"i/idx"`` int32 gaps between sorted flat indices (the
  first gap is the first index; gaps are small and zstd packs them), ``"i/q"`` int8 values,
  ``"i/scale"`` float32 scalar. Entries not sent are zero in the decoded delta; what was not
  sent is returned as the residual the station adds to its next round's delta (error feedback).

Errors: a caller's bad input (NaN weights, shapes that differ from the base, a float16
overflow) raises :class:`UpdateEncodingError`; bad parts from a peer raise :class:`BadEncoding`,
a :class:`~proto.wire_errors.WireError`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from proto.tensor_codec import NamedArrays, bundle_digest, encode_bundle
from proto.wire_errors import BadTensor

__all__ = [
    "FLOAT32",
    "BadEncoding",
    "DeltaKind",
    "EncodedDelta",
    "EncodedUpdate",
    "UpdateEncoding",
    "UpdateEncodingError",
    "decode_delta",
    "encode_delta",
    "weights_sha256",
]

_INT8_MAX = 127
_FLOAT16_MAX = float(np.finfo(np.float16).max)


class DeltaKind(StrEnum):
    FLOAT32 = "float32"  # full weights, not a delta
    FLOAT16 = "float16"
    INT8 = "int8"
    TOPK_INT8 = "topk-int8"


class UpdateEncodingError(ValueError):
    """The sender's input cannot be encoded: NaN/Inf, shapes unlike the base, out of range."""


class BadEncoding(BadTensor):
    """Encoded parts from a peer that do not decode against the base (names, dtypes, shapes,
    indices, scales or values)."""


@dataclass(frozen=True)
class UpdateEncoding:
    """How to encode an update: what a coordinator asks for in its announcement."""

    kind: DeltaKind = DeltaKind.FLOAT32
    topk_fraction: float = 0.0  # topk-int8 only: share of each tensor's entries sent, (0, 1]
    stochastic: bool = False  # int8 kinds: stochastic rounding (unbiased) instead of nearest

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", DeltaKind(self.kind))
        f = self.topk_fraction
        if self.kind is DeltaKind.TOPK_INT8:
            if not (isinstance(f, int | float) and math.isfinite(f) and 0.0 < f <= 1.0):
                raise UpdateEncodingError(f"topk_fraction={f!r}: must be in (0, 1]")
        elif f != 0.0:
            raise UpdateEncodingError(f"topk_fraction is for topk-int8, not {self.kind}")
        if self.stochastic and self.kind not in (DeltaKind.INT8, DeltaKind.TOPK_INT8):
            raise UpdateEncodingError(f"stochastic rounding is for int8 kinds, not {self.kind}")

    @property
    def is_delta(self) -> bool:
        return self.kind is not DeltaKind.FLOAT32

    def __str__(self) -> str:
        text = str(self.kind)
        if self.kind is DeltaKind.TOPK_INT8:
            text += f"@{self.topk_fraction:g}"
        return text + ("+sr" if self.stochastic else "")

    @classmethod
    def parse(cls, text: str) -> UpdateEncoding:
        """The inverse of ``str``, for configs: ``int8``, ``int8+sr``, ``topk-int8@0.01+sr``."""
        spec = text.strip()
        stochastic = spec.endswith("+sr")
        spec = spec.removesuffix("+sr")
        kind, _, fraction = spec.partition("@")
        try:
            return cls(DeltaKind(kind), float(fraction) if fraction else 0.0, stochastic)
        except ValueError as exc:
            raise UpdateEncodingError(f"update encoding {text!r}: {exc}") from None


FLOAT32 = UpdateEncoding()


@dataclass(frozen=True, eq=False)
class EncodedUpdate:
    """What travels: the encoding, the base it is a delta against, and the bundle's arrays."""

    kind: DeltaKind
    base_sha256: str  # "" for full float32 weights
    tensors: NamedArrays


@dataclass(frozen=True, eq=False)
class EncodedDelta:
    update: EncodedUpdate
    # Error feedback (topk-int8): delta + old residual - decoded delta, to pass back as
    # ``residual`` next round. None for the other kinds.
    residual: list[np.ndarray] | None


def weights_sha256(weights: Sequence[np.ndarray]) -> str:
    """The TensorBundle digest of weights encoded as today's update/announcement would be."""
    return bundle_digest(encode_bundle(list(weights)))


def _checked_pairs(
    weights: Sequence[np.ndarray], base: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    if len(weights) != len(base):
        raise UpdateEncodingError(f"{len(weights)} weight arrays, the base has {len(base)}")
    pairs = []
    for i, (w, b) in enumerate(zip(weights, base, strict=True)):
        w, b = np.asarray(w), np.asarray(b)
        if w.shape != b.shape:
            raise UpdateEncodingError(f"weights[{i}]: shape {w.shape}, the base has {b.shape}")
        for what, a in (("weights", w), ("base", b)):
            if a.dtype.kind != "f":
                raise UpdateEncodingError(f"{what}[{i}]: dtype {a.dtype} is not floating point")
            if not np.isfinite(a).all():
                raise UpdateEncodingError(f"{what}[{i}]: NaN or Inf")
        pairs.append((w, b))
    return pairs


def _scale(values: np.ndarray) -> np.float32:
    """The smallest float32 s with max|values| / s <= 127 (0 for an all-zero tensor)."""
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    if peak == 0.0:
        return np.float32(0.0)
    s = np.float32(peak / _INT8_MAX)
    while float(s) * _INT8_MAX < peak:
        s = np.nextafter(s, np.float32(np.inf))
    if not np.isfinite(s):
        raise UpdateEncodingError(f"delta peak {peak:g} has no finite float32 int8 scale")
    return s


def _quantize(values: np.ndarray, s: np.float32, rng: np.random.Generator | None) -> np.ndarray:
    if s == 0:
        return np.zeros(values.shape, np.int8)
    scaled = values / np.float64(s)
    # Stochastic: floor(x + u) with u ~ U[0, 1), so E[q] = x and |q - x| < 1.
    q = np.rint(scaled) if rng is None else np.floor(scaled + rng.random(scaled.shape))
    return np.clip(q, -_INT8_MAX, _INT8_MAX).astype(np.int8)


def _topk(values: np.ndarray, fraction: float) -> np.ndarray:
    """Sorted flat indices of the ceil(fraction * size) largest |values|."""
    flat = values.reshape(-1)
    k = min(flat.size, max(1, math.ceil(fraction * flat.size - 1e-9)))
    if k >= flat.size:
        return np.arange(flat.size, dtype=np.int64)
    return np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :])


def encode_delta(
    weights: Sequence[np.ndarray],
    base: Sequence[np.ndarray] | None,
    encoding: UpdateEncoding = FLOAT32,
    *,
    residual: Sequence[np.ndarray] | None = None,
    seed: int | None = None,
) -> EncodedDelta:
    """Encode ``weights`` as a delta against ``base`` (full float32 for the float32 kind).

    ``residual`` (topk-int8 only): the previous round's ``EncodedDelta.residual``, added to
    this round's delta before choosing the top k. ``seed`` drives stochastic rounding.
    """
    kind = encoding.kind
    if kind is DeltaKind.FLOAT32:
        if residual is not None:
            raise UpdateEncodingError("a residual is for topk-int8 only")
        full = []
        for i, w in enumerate(weights):
            w = np.asarray(w)
            if w.dtype.kind == "f" and not np.isfinite(w).all():
                raise UpdateEncodingError(f"weights[{i}]: NaN or Inf")
            full.append((str(i), w))
        return EncodedDelta(EncodedUpdate(kind, "", full), None)
    if base is None:
        raise UpdateEncodingError(f"a {kind} delta needs the base weights")
    pairs = _checked_pairs(weights, base)
    if residual is not None:
        if kind is not DeltaKind.TOPK_INT8:
            raise UpdateEncodingError("a residual is for topk-int8 only")
        if len(residual) != len(pairs) or any(
            np.shape(r) != b.shape for r, (_, b) in zip(residual, pairs, strict=False)
        ):
            raise UpdateEncodingError("the residual's shapes differ from the base's: drop it")
    rng = np.random.default_rng(seed) if encoding.stochastic else None
    tensors: NamedArrays = []
    new_residual: list[np.ndarray] = []
    for i, (w, b) in enumerate(pairs):
        delta = w.astype(np.float64) - b.astype(np.float64)
        if kind is DeltaKind.FLOAT16:
            if delta.size and float(np.max(np.abs(delta))) > _FLOAT16_MAX:
                raise UpdateEncodingError(f"weights[{i}]: delta exceeds the float16 range")
            tensors.append((str(i), delta.astype(np.float16)))
        elif kind is DeltaKind.INT8:
            s = _scale(delta)
            tensors += [(f"{i}/q", _quantize(delta, s, rng)), (f"{i}/scale", np.asarray(s))]
        else:
            if residual is not None:
                r = np.asarray(residual[i], np.float64)
                if not np.isfinite(r).all():
                    raise UpdateEncodingError(f"residual[{i}]: NaN or Inf")
                delta = delta + r
            idx = _topk(delta, encoding.topk_fraction)
            picked = delta.reshape(-1)[idx]
            s = _scale(picked)
            q = _quantize(picked, s, rng)
            gaps = np.diff(idx, prepend=0).astype(np.int32)
            tensors += [(f"{i}/idx", gaps), (f"{i}/q", q), (f"{i}/scale", np.asarray(s))]
            sent = np.zeros(delta.size, np.float64)
            sent[idx] = q.astype(np.float64) * np.float64(s)
            new_residual.append((delta - sent.reshape(delta.shape)).astype(np.float32))
    update = EncodedUpdate(kind, weights_sha256([b for _, b in pairs]), tensors)
    return EncodedDelta(update, new_residual if kind is DeltaKind.TOPK_INT8 else None)


class _Parts:
    """Reads the named arrays in order, refusing any name, dtype or shape not expected."""

    def __init__(self, tensors: NamedArrays, kind: DeltaKind) -> None:
        self.tensors = tensors
        self.kind = kind
        self.pos = 0

    def take(self, name: str, dtype: np.dtype | type, shape: tuple[int, ...] | None) -> np.ndarray:
        if self.pos >= len(self.tensors):
            raise BadEncoding(f"{self.kind} update: tensor {name!r} is missing")
        got_name, array = self.tensors[self.pos]
        self.pos += 1
        if got_name != name:
            raise BadEncoding(f"{self.kind} update: tensor {got_name!r} where {name!r} belongs")
        if array.dtype != np.dtype(dtype):
            raise BadEncoding(
                f"{self.kind} update: tensor {name!r} is {array.dtype}, expected {np.dtype(dtype)}"
            )
        if shape is not None and array.shape != shape:
            raise BadEncoding(
                f"{self.kind} update: tensor {name!r} has shape {array.shape}, expected {shape}"
            )
        return array

    def scale(self, i: int) -> np.float64:
        s = float(self.take(f"{i}/scale", np.float32, ()))
        if not (math.isfinite(s) and s >= 0):
            raise BadEncoding(f"{self.kind} update: tensor {i} has scale {s!r}")
        return np.float64(s)

    def int8(self, i: int, shape: tuple[int, ...] | None) -> np.ndarray:
        q = self.take(f"{i}/q", np.int8, shape)
        if q.size and int(q.min()) < -_INT8_MAX:
            raise BadEncoding(f"{self.kind} update: tensor {i} holds -128 (symmetric int8)")
        return q

    def done(self) -> None:
        if self.pos != len(self.tensors):
            raise BadEncoding(
                f"{self.kind} update: {len(self.tensors) - self.pos} tensors more than expected"
            )


def _sparse(gaps: np.ndarray, q: np.ndarray, size: int, i: int) -> np.ndarray:
    if gaps.ndim != 1 or q.shape != gaps.shape:
        raise BadEncoding(f"topk-int8 update: tensor {i}: {gaps.shape} gaps for {q.shape} values")
    if gaps.size > size:
        raise BadEncoding(f"topk-int8 update: tensor {i}: {gaps.size} entries for {size} weights")
    if gaps.size and (int(gaps[0]) < 0 or (gaps.size > 1 and int(gaps[1:].min()) < 1)):
        raise BadEncoding(f"topk-int8 update: tensor {i}: indices not strictly increasing")
    idx = np.cumsum(gaps, dtype=np.int64)
    if idx.size and int(idx[-1]) >= size:
        raise BadEncoding(f"topk-int8 update: tensor {i}: index {idx[-1]} out of {size}")
    return idx


def decode_delta(update: EncodedUpdate, base: Sequence[np.ndarray] | None) -> list[np.ndarray]:
    """The weights an encoded update stands for, in the base's dtypes (float32 for full ones).

    The caller checks ``update.base_sha256`` against its base first (the federation codec
    does); this checks every name, dtype, shape, index and scale and raises BadEncoding.
    """
    kind = DeltaKind(update.kind)
    parts = _Parts(update.tensors, kind)
    if kind is DeltaKind.FLOAT32:
        full = []
        for i in range(len(update.tensors)):
            name = update.tensors[i][0]
            if name != str(i):
                raise BadEncoding(f"float32 update: tensor {name!r} where {str(i)!r} belongs")
            full.append(update.tensors[i][1])
        return full
    if base is None:
        raise BadEncoding(f"{kind} update: no base weights to apply the delta to")
    out = []
    for i, b in enumerate(base):
        b = np.asarray(b)
        if kind is DeltaKind.FLOAT16:
            d = parts.take(str(i), np.float16, b.shape)
            if not np.isfinite(d).all():
                raise BadEncoding(f"float16 update: tensor {i} holds NaN or Inf")
            delta = d.astype(np.float64)
        elif kind is DeltaKind.INT8:
            q = parts.int8(i, b.shape)
            delta = q.astype(np.float64) * parts.scale(i)
        else:
            gaps = parts.take(f"{i}/idx", np.int32, None)
            q = parts.int8(i, None)
            s = parts.scale(i)
            idx = _sparse(gaps, q, b.size, i)
            flat = np.zeros(b.size, np.float64)
            flat[idx] = q.astype(np.float64) * s
            delta = flat.reshape(b.shape)
        with np.errstate(over="ignore", invalid="ignore"):
            w = (b.astype(np.float64) + delta).astype(b.dtype)
        if not np.isfinite(w).all():
            raise BadEncoding(f"{kind} update: tensor {i} overflows {b.dtype} with the delta")
        out.append(w)
    parts.done()
    return out
