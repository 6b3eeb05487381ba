"""Tensors and bundles survive the wire bit for bit, and any damaged bytes raise a WireError."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from proto import tensors_pb2
from proto.limits import WireLimits
from proto.tensor_codec import (
    bundle_arrays,
    bundle_digest,
    bundle_from_bytes,
    bundle_to_bytes,
    decode_bundle,
    decode_tensor,
    encode_bundle,
    encode_tensor,
)
from proto.wire_errors import BadTensor, HashMismatch, MalformedMessage, PayloadTooLarge, WireError

FAST = settings(max_examples=75, deadline=None)

SUPPORTED = [
    np.dtype(name)
    for name in ("float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8")
] + [np.dtype(bool)]
# Every supported dtype in both byte orders (one-byte dtypes have no byte order).
DTYPES = st.sampled_from(SUPPORTED).flatmap(
    lambda dt: st.sampled_from([dt, dt.newbyteorder(">"), dt.newbyteorder("<")])
)
SHAPES = array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
ARRAYS = DTYPES.flatmap(lambda dt: arrays(dt, SHAPES))
NAMES = st.text(max_size=12)


def assert_same(decoded: np.ndarray, original: np.ndarray) -> None:
    """Same shape, same values bit for bit (NaN payloads and -0.0 included), native order."""
    assert decoded.shape == original.shape
    assert decoded.dtype == original.dtype.newbyteorder("=")
    assert decoded.dtype.isnative
    assert decoded.tobytes() == original.astype(decoded.dtype).tobytes()


@FAST
@given(ARRAYS, NAMES)
def test_tensor_round_trip_is_exact(array: np.ndarray, name: str) -> None:
    t = encode_tensor(array, name)
    decoded = decode_tensor(t)
    assert t.name == name
    assert_same(decoded, array)
    assert decoded.flags.writeable
    decoded[...] = 0  # the caller owns the result


def test_big_endian_input_travels_as_little_endian() -> None:
    big = np.arange(6, dtype=">i4").reshape(2, 3)
    t = encode_tensor(big)
    assert t.data == np.arange(6, dtype="<i4").tobytes()
    assert list(t.shape) == [2, 3]
    assert_same(decode_tensor(t), big)


def test_zero_dim_and_zero_size_shapes() -> None:
    scalar = decode_tensor(encode_tensor(np.float64(2.5)))
    assert scalar.shape == ()
    assert scalar == 2.5
    empty = decode_tensor(encode_tensor(np.zeros((0, 7), np.int16)))
    assert empty.shape == (0, 7)
    assert empty.dtype == np.int16


def test_non_contiguous_input_is_sent_in_c_order() -> None:
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    view = base.T[::2]
    assert_same(decode_tensor(encode_tensor(view)), np.ascontiguousarray(view))


@pytest.mark.parametrize(
    "array",
    [
        np.array([1 + 2j]),
        np.array(["text"]),
        np.array([b"bytes"]),
        np.array([object()], dtype=object),
        np.zeros(2, np.uint16),
        np.zeros(2, np.uint64),
        np.zeros(2, "datetime64[s]"),
        np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]),
    ],
    ids=lambda a: str(a.dtype),
)
def test_unsupported_dtypes_are_rejected(array: np.ndarray) -> None:
    with pytest.raises(BadTensor, match="cannot travel on the wire"):
        encode_tensor(array, "w")


def test_wrong_data_length_names_the_tensor_and_sizes() -> None:
    t = encode_tensor(np.zeros((2, 2), np.float32), "w3")
    t.data = t.data[:12]
    with pytest.raises(BadTensor) as err:
        decode_tensor(t)
    assert str(err.value) == "tensor 'w3': 12 bytes for shape (2, 2) float32, expected 16"


@pytest.mark.parametrize("dtype", [tensors_pb2.DTYPE_UNSPECIFIED, 99, -3])
def test_unknown_dtype_is_rejected(dtype: int) -> None:
    t = tensors_pb2.Tensor(name="w", dtype=dtype, shape=[1], data=b"\0")
    with pytest.raises(BadTensor, match="unknown dtype"):
        decode_tensor(t)


def test_negative_dimension_is_rejected() -> None:
    t = tensors_pb2.Tensor(name="w", dtype=tensors_pb2.UINT8, shape=[-1, -2], data=b"\0\0")
    with pytest.raises(BadTensor, match="negative dimension"):
        decode_tensor(t)


def test_bool_bytes_other_than_zero_and_one_are_rejected() -> None:
    t = tensors_pb2.Tensor(name="mask", dtype=tensors_pb2.BOOL, shape=[2], data=b"\x01\x02")
    with pytest.raises(BadTensor, match="bool"):
        decode_tensor(t)


def test_element_limit_is_enforced_before_allocating() -> None:
    limits = WireLimits(max_tensor_elements=100)
    with pytest.raises(PayloadTooLarge):
        decode_tensor(encode_tensor(np.zeros(101, np.uint8)), limits)
    huge = tensors_pb2.Tensor(name="w", dtype=tensors_pb2.FLOAT64, shape=[2**40, 2**20])
    with pytest.raises(PayloadTooLarge):
        decode_tensor(huge)
    zero_but_wide = tensors_pb2.Tensor(name="w", dtype=tensors_pb2.FLOAT64, shape=[0, 2**62])
    with pytest.raises(PayloadTooLarge):
        decode_tensor(zero_but_wide)


@FAST
@given(st.lists(st.tuples(NAMES, ARRAYS), max_size=5))
def test_bundle_round_trip_keeps_names_and_order(named: list[tuple[str, np.ndarray]]) -> None:
    decoded = bundle_from_bytes(bundle_to_bytes(named))
    assert [name for name, _ in decoded] == [name for name, _ in named]
    for (_, got), (_, want) in zip(decoded, named, strict=True):
        assert_same(got, want)


def test_unnamed_arrays_are_numbered() -> None:
    bundle = encode_bundle([np.zeros(1), np.ones(2)])
    assert [t.name for t in bundle.tensors] == ["0", "1"]
    assert len(bundle.sha256) == 64
    got = bundle_arrays(bundle)
    assert [a.shape for a in got] == [(1,), (2,)]


def test_empty_bundle_round_trips() -> None:
    assert bundle_from_bytes(bundle_to_bytes([])) == []


def _digest(named: list[tuple[str, np.ndarray]]) -> str:
    return encode_bundle(named).sha256


BASE = [("w", np.arange(4, dtype=np.float32)), ("b", np.array([1, 2], np.int64))]


@pytest.mark.parametrize(
    "changed",
    [
        [("W", BASE[0][1]), BASE[1]],  # name
        [("w", BASE[0][1].view(np.int32)), BASE[1]],  # dtype, same bytes
        [("w", BASE[0][1].reshape(2, 2)), BASE[1]],  # shape, same bytes
        [("w", BASE[0][1] + np.float32([0, 0, 0, 1])), BASE[1]],  # data
        [BASE[1], BASE[0]],  # order
        BASE[:1],  # a tensor dropped
        [*BASE, ("", np.zeros(0, np.uint8))],  # an empty tensor added
    ],
    ids=["name", "dtype", "shape", "data", "order", "dropped", "added"],
)
def test_digest_changes_when_any_tensor_changes(changed: list[tuple[str, np.ndarray]]) -> None:
    assert _digest(changed) != _digest(BASE)


def test_digest_is_stable_and_unambiguous() -> None:
    assert _digest(BASE) == _digest([(n, a.copy()) for n, a in BASE])
    # Bytes cannot shift from one field or tensor into the next without changing the digest.
    one = [("ab", np.zeros(0, np.uint8))]
    two = [("a", np.zeros(0, np.uint8)), ("b", np.zeros(0, np.uint8))]
    assert _digest(one) != _digest(two)
    assert _digest([("a", np.array([1, 2], np.uint8))]) != _digest(
        [("a", np.array([1], np.uint8)), ("", np.array([2], np.uint8))]
    )


def test_tampered_bundle_fails_its_digest() -> None:
    bundle = encode_bundle(BASE)
    bundle.tensors[0].data = bytes(16)
    with pytest.raises(HashMismatch):
        decode_bundle(bundle)
    assert bundle_digest(bundle) != bundle.sha256


def test_missing_digest_is_rejected() -> None:
    bundle = encode_bundle(BASE)
    bundle.ClearField("sha256")
    with pytest.raises(MalformedMessage, match="no sha256"):
        bundle_from_bytes(bundle.SerializeToString())


def test_bundle_limits_are_enforced() -> None:
    data = bundle_to_bytes([np.zeros(3, np.uint8)] * 4)
    with pytest.raises(PayloadTooLarge):
        bundle_from_bytes(data, WireLimits(max_tensors=3))
    with pytest.raises(PayloadTooLarge):
        bundle_from_bytes(data, WireLimits(max_raw_bytes=len(data) - 1))
    with pytest.raises(PayloadTooLarge):
        bundle_from_bytes(data, WireLimits(max_tensor_elements=2))
    assert len(bundle_from_bytes(data, WireLimits(max_tensors=4, max_tensor_elements=3))) == 4


SAMPLE = bundle_to_bytes(
    [
        ("dense/kernel", np.arange(6, dtype=np.float32).reshape(2, 3)),
        ("mask", np.array([True, False])),
        ("", np.float16(1.5)),
    ]
)


def test_every_truncation_is_rejected() -> None:
    for end in range(len(SAMPLE)):
        with pytest.raises(WireError):
            bundle_from_bytes(SAMPLE[:end])


@FAST
@given(st.integers(min_value=0, max_value=len(SAMPLE) * 8 - 1))
def test_every_single_bit_flip_is_rejected(bit: int) -> None:
    damaged = bytearray(SAMPLE)
    damaged[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(WireError):
        bundle_from_bytes(bytes(damaged))


@FAST
@given(st.binary(max_size=200))
def test_garbage_bytes_raise_only_wire_errors(garbage: bytes) -> None:
    with pytest.raises(WireError):
        bundle_from_bytes(garbage)
