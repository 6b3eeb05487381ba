"""numpy arrays <-> ``Tensor`` / ``TensorBundle``: dtype, shape, little-endian bytes; never pickle.

A bundle carries a sha256 over a canonical byte form of its tensors (name, dtype, shape, data,
each length-prefixed), not over the protobuf serialization, so the digest does not depend on how
a protobuf library orders or encodes fields, and two different bundles can never share a digest
by shifting bytes from one field into the next.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence

import numpy as np
from google.protobuf.message import DecodeError

from proto import tensors_pb2
from proto.limits import WireLimits
from proto.wire_errors import BadTensor, HashMismatch, MalformedMessage, PayloadTooLarge

__all__ = [
    "NamedArrays",
    "bundle_arrays",
    "bundle_digest",
    "bundle_from_bytes",
    "bundle_to_bytes",
    "decode_bundle",
    "decode_tensor",
    "encode_bundle",
    "encode_tensor",
]

NamedArrays = list[tuple[str, np.ndarray]]

_DEFAULT_LIMITS = WireLimits()
_MAX_NDIM = 64  # numpy's own limit
_DIGEST_DOMAIN = b"evfl.v1.TensorBundle/canonical-sha256\x00"

# Wire enum -> little-endian numpy dtype.
_FROM_WIRE: dict[int, np.dtype] = {
    tensors_pb2.FLOAT32: np.dtype("<f4"),
    tensors_pb2.FLOAT64: np.dtype("<f8"),
    tensors_pb2.FLOAT16: np.dtype("<f2"),
    tensors_pb2.INT8: np.dtype("i1"),
    tensors_pb2.INT16: np.dtype("<i2"),
    tensors_pb2.INT32: np.dtype("<i4"),
    tensors_pb2.INT64: np.dtype("<i8"),
    tensors_pb2.UINT8: np.dtype("u1"),
    tensors_pb2.BOOL: np.dtype("?"),
}
# (kind, itemsize) -> wire enum, so big- and little-endian inputs map alike.
_TO_WIRE: dict[tuple[str, int], int] = {
    (dt.kind, dt.itemsize): wire for wire, dt in _FROM_WIRE.items()
}


def _pack_int(value: int) -> bytes:
    return struct.pack("<q", value)


def _fill_tensor(t: tensors_pb2.Tensor, array: np.ndarray, name: str) -> None:
    arr = np.asarray(array)
    wire = None if arr.dtype.fields is not None else _TO_WIRE.get((arr.dtype.kind, arr.itemsize))
    if wire is None:
        raise BadTensor(f"tensor {name!r}: dtype {arr.dtype} cannot travel on the wire")
    t.name = name
    t.dtype = wire  # type: ignore[assignment]
    t.shape.extend(arr.shape)
    t.data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes(order="C")


def encode_tensor(array: np.ndarray, name: str = "") -> tensors_pb2.Tensor:
    """Encode an array as little-endian C-order bytes; BadTensor for unsupported dtypes."""
    t = tensors_pb2.Tensor()
    _fill_tensor(t, array, name)
    return t


def decode_tensor(t: tensors_pb2.Tensor, limits: WireLimits = _DEFAULT_LIMITS) -> np.ndarray:
    """Decode a tensor into a writable, native-endian array, validating every field."""
    name = t.name
    wire_dtype = _FROM_WIRE.get(t.dtype)
    if wire_dtype is None:
        raise BadTensor(f"tensor {name!r}: unknown dtype {t.dtype}")
    shape = tuple(t.shape)
    if len(shape) > _MAX_NDIM:
        raise BadTensor(f"tensor {name!r}: {len(shape)} dimensions, at most {_MAX_NDIM} allowed")
    if any(d < 0 for d in shape):
        raise BadTensor(f"tensor {name!r}: negative dimension in shape {shape}")
    count = math.prod(shape)
    if count > limits.max_tensor_elements or any(d > limits.max_tensor_elements for d in shape):
        raise PayloadTooLarge(
            f"tensor {name!r}: shape {shape} exceeds the limit of "
            f"{limits.max_tensor_elements} elements"
        )
    dtype_name = wire_dtype.newbyteorder("=").name
    expected = count * wire_dtype.itemsize
    if len(t.data) != expected:
        raise BadTensor(
            f"tensor {name!r}: {len(t.data)} bytes for shape {shape} {dtype_name}, "
            f"expected {expected}"
        )
    if wire_dtype.kind == "b" and t.data and max(t.data) > 1:
        raise BadTensor(f"tensor {name!r}: bool data holds bytes other than 0 and 1")
    flat = np.frombuffer(t.data, dtype=wire_dtype)
    return flat.astype(wire_dtype.newbyteorder("="), copy=True).reshape(shape)


def _named(arrays: Sequence[np.ndarray] | Sequence[tuple[str, np.ndarray]]) -> NamedArrays:
    named: NamedArrays = []
    for i, item in enumerate(arrays):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            named.append((item[0], item[1]))
        else:
            named.append((str(i), item))  # type: ignore[arg-type]
    return named


def bundle_digest(bundle: tensors_pb2.TensorBundle) -> str:
    """Hex sha256 over the canonical, length-prefixed form of the bundle's tensors."""
    h = hashlib.sha256(_DIGEST_DOMAIN)
    h.update(_pack_int(len(bundle.tensors)))
    for t in bundle.tensors:
        name = t.name.encode("utf-8")
        h.update(_pack_int(len(name)))
        h.update(name)
        h.update(_pack_int(t.dtype))
        h.update(_pack_int(len(t.shape)))
        for d in t.shape:
            h.update(_pack_int(d))
        h.update(_pack_int(len(t.data)))
        h.update(t.data)
    return h.hexdigest()


def encode_bundle(
    arrays: Sequence[np.ndarray] | Sequence[tuple[str, np.ndarray]],
) -> tensors_pb2.TensorBundle:
    """Encode arrays (or ``(name, array)`` pairs) in order; unnamed ones are named "0", "1", ..."""
    bundle = tensors_pb2.TensorBundle()
    for name, array in _named(arrays):
        _fill_tensor(bundle.tensors.add(), array, name)
    bundle.sha256 = bundle_digest(bundle)
    return bundle


def decode_bundle(
    bundle: tensors_pb2.TensorBundle, limits: WireLimits = _DEFAULT_LIMITS
) -> NamedArrays:
    """Decode a bundle after checking its size and its digest."""
    if len(bundle.tensors) > limits.max_tensors:
        raise PayloadTooLarge(
            f"tensor bundle holds {len(bundle.tensors)} tensors, the limit is {limits.max_tensors}"
        )
    if not bundle.sha256:
        raise MalformedMessage("tensor bundle has no sha256")
    digest = bundle_digest(bundle)
    if bundle.sha256 != digest:
        raise HashMismatch(
            f"tensor bundle sha256 {bundle.sha256[:64]!r} does not match its contents ({digest})"
        )
    return [(t.name, decode_tensor(t, limits)) for t in bundle.tensors]


def bundle_arrays(
    bundle: tensors_pb2.TensorBundle, limits: WireLimits = _DEFAULT_LIMITS
) -> list[np.ndarray]:
    """The bundle's arrays in order, names dropped (e.g. a model's weights)."""
    return [array for _, array in decode_bundle(bundle, limits)]


def bundle_to_bytes(arrays: Sequence[np.ndarray] | Sequence[tuple[str, np.ndarray]]) -> bytes:
    """Encode arrays as a serialized TensorBundle."""
    return encode_bundle(arrays).SerializeToString(deterministic=True)


def bundle_from_bytes(data: bytes, limits: WireLimits = _DEFAULT_LIMITS) -> NamedArrays:
    """Parse and decode a serialized TensorBundle; any bad input raises a WireError."""
    if len(data) > limits.max_raw_bytes:
        raise PayloadTooLarge(
            f"tensor bundle of {len(data)} bytes exceeds the limit of {limits.max_raw_bytes}"
        )
    bundle = tensors_pb2.TensorBundle()
    try:
        bundle.ParseFromString(bytes(data))
    except DecodeError as exc:
        raise MalformedMessage(f"tensor bundle does not parse: {exc}") from None
    return decode_bundle(bundle, limits)
