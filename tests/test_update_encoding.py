"""Compressed update deltas decode within each encoding's error bound, and bad parts are refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from proto.tensor_codec import bundle_from_bytes, bundle_to_bytes
from proto.update_encoding import (
    FLOAT32,
    BadEncoding,
    DeltaKind,
    EncodedUpdate,
    UpdateEncoding,
    UpdateEncodingError,
    decode_delta,
    encode_delta,
    weights_sha256,
)
from proto.wire_errors import WireError

FAST = settings(max_examples=60, deadline=None)

FLOAT16 = UpdateEncoding(DeltaKind.FLOAT16)
INT8 = UpdateEncoding(DeltaKind.INT8)
INT8_SR = UpdateEncoding(DeltaKind.INT8, stochastic=True)
DELTAS = [FLOAT16, INT8, INT8_SR, UpdateEncoding(DeltaKind.TOPK_INT8, 0.1)]

SHAPES = array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)
VALUES = st.floats(-1e3, 1e3, allow_nan=False, width=32)
STEP = st.floats(-10.0, 10.0, allow_nan=False, width=32)


@st.composite
def weights_and_base(draw: st.DrawFn) -> tuple[list[np.ndarray], list[np.ndarray]]:
    shapes = draw(st.lists(SHAPES, min_size=1, max_size=4))
    base = [draw(arrays(np.float32, s, elements=VALUES)) for s in shapes]
    deltas = [draw(arrays(np.float32, s, elements=STEP)) for s in shapes]
    return [b + d for b, d in zip(base, deltas, strict=True)], base


def wire(update: EncodedUpdate) -> EncodedUpdate:
    """Through the real tensor codec and back, as the federation codec sends it."""
    tensors = bundle_from_bytes(bundle_to_bytes(update.tensors))
    return EncodedUpdate(update.kind, update.base_sha256, tensors)


def f32_slack(w: np.ndarray) -> np.ndarray:
    """Rounding the decoded weight to float32 (half an ulp), plus a little."""
    return np.abs(w.astype(np.float64)) * 2.0**-23 + 1e-30


@FAST
@given(weights_and_base())
def test_float32_is_exact_and_needs_no_base(pair: tuple[list, list]) -> None:
    weights, _ = pair
    encoded = encode_delta(weights, None, FLOAT32)
    assert encoded.update.base_sha256 == "" and encoded.residual is None
    for got, want in zip(decode_delta(wire(encoded.update), None), weights, strict=True):
        np.testing.assert_array_equal(got, want)


@FAST
@given(weights_and_base())
def test_float16_delta_within_half_a_float16_ulp(pair: tuple[list, list]) -> None:
    weights, base = pair
    decoded = decode_delta(wire(encode_delta(weights, base, FLOAT16).update), base)
    for w, b, got in zip(weights, base, decoded, strict=True):
        assert got.dtype == b.dtype and got.shape == b.shape
        delta = w.astype(np.float64) - b.astype(np.float64)
        bound = np.abs(delta) * 2.0**-11 + 2.0**-25 + f32_slack(w) * 2  # relative + subnormal
        assert np.all(np.abs(got.astype(np.float64) - w) <= bound)


@FAST
@given(weights_and_base(), st.booleans(), st.integers(0, 2**32))
def test_int8_delta_within_half_a_step_or_one_step_stochastic(
    pair: tuple[list, list], stochastic: bool, seed: int
) -> None:
    weights, base = pair
    encoding = INT8_SR if stochastic else INT8
    encoded = encode_delta(weights, base, encoding, seed=seed).update
    decoded = decode_delta(wire(encoded), base)
    scales = dict(encoded.tensors)
    for i, (w, b, got) in enumerate(zip(weights, base, decoded, strict=True)):
        step = float(scales[f"{i}/scale"])
        peak = float(np.max(np.abs(w.astype(np.float64) - b))) if w.size else 0.0
        assert step * 127 >= peak and step <= peak / 127 * (1 + 1e-6) + 2e-45  # 2e-45: subnormal
        bound = (1.0 if stochastic else 0.5) * step * (1 + 1e-9) + f32_slack(w) * 2
        assert np.all(np.abs(got.astype(np.float64) - w) <= bound)


def test_stochastic_rounding_is_unbiased() -> None:
    base = [np.zeros(20_000, np.float32)]
    delta = np.full(20_000, 0.3, np.float32)
    delta[0] = 1.0  # scale 1/127: 0.3 is 38.1 steps, nearest rounding would give 38 exactly
    encoded = encode_delta([base[0] + delta], base, INT8_SR, seed=7).update
    got = decode_delta(encoded, base)[0][1:]
    assert abs(float(got.mean()) - 0.3) < 1e-4
    nearest = decode_delta(encode_delta([base[0] + delta], base, INT8).update, base)[0][1:]
    assert abs(float(nearest.mean()) - 0.3) > 5e-4


@FAST
@given(weights_and_base(), st.floats(0.01, 1.0))
def test_topk_sends_the_largest_entries_and_the_residual_holds_the_rest(
    pair: tuple[list, list], fraction: float
) -> None:
    weights, base = pair
    encoding = UpdateEncoding(DeltaKind.TOPK_INT8, fraction)
    encoded = encode_delta(weights, base, encoding)
    decoded = decode_delta(wire(encoded.update), base)
    parts = dict(encoded.update.tensors)
    assert encoded.residual is not None
    for i, (w, b, got, r) in enumerate(zip(weights, base, decoded, encoded.residual, strict=True)):
        delta = (w.astype(np.float64) - b).reshape(-1)
        k = len(parts[f"{i}/q"])
        assert k == min(delta.size, max(1, math.ceil(fraction * delta.size - 1e-9)))
        if not delta.size:
            continue
        step = float(parts[f"{i}/scale"])
        sent_mask = (got.astype(np.float64) - b).reshape(-1) != 0
        kth = np.sort(np.abs(delta))[::-1][k - 1] if delta.size else 0.0
        err = np.abs(got.astype(np.float64) - w).reshape(-1)
        slack = f32_slack(w).reshape(-1) * 2
        # Every entry is off by at most half a step (sent) or the k-th largest |delta| (not).
        assert np.all(err <= np.maximum(0.5 * step * (1 + 1e-9), kth) + slack)
        assert np.all(err[sent_mask] <= 0.5 * step * (1 + 1e-9) + slack[sent_mask])
        # Error feedback: what was sent plus the residual is the whole delta.
        sent = (got.astype(np.float64) - b).reshape(-1)
        np.testing.assert_allclose(
            sent + r.reshape(-1), delta, atol=float(np.max(slack) * 4 + 1e-6 * step + 1e-12)
        )


def test_error_feedback_sends_every_entry_eventually() -> None:
    """A delta repeated each round: with the residual fed back, the sum sent converges to it."""
    rng = np.random.default_rng(0)
    base = [np.zeros(1000, np.float32)]
    delta = rng.normal(0, 1, 1000).astype(np.float32)
    encoding = UpdateEncoding(DeltaKind.TOPK_INT8, 0.05)
    total_ef, total_plain, residual = np.zeros(1000), np.zeros(1000), None
    rounds = 200
    for _ in range(rounds):
        encoded = encode_delta([delta], base, encoding, residual=residual)
        residual = encoded.residual
        total_ef += decode_delta(encoded.update, base)[0]
        total_plain += decode_delta(encode_delta([delta], base, encoding).update, base)[0]
    want = rounds * delta.astype(np.float64)
    err_ef = np.linalg.norm(total_ef - want) / np.linalg.norm(want)
    err_plain = np.linalg.norm(total_plain - want) / np.linalg.norm(want)
    assert err_ef < 0.1 < err_plain


@pytest.mark.parametrize("encoding", DELTAS, ids=str)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_or_base_are_refused(encoding: UpdateEncoding, bad: float) -> None:
    good = [np.ones((2, 3), np.float32)]
    poisoned = [np.ones((2, 3), np.float32)]
    poisoned[0][1, 2] = bad
    with pytest.raises(UpdateEncodingError, match="NaN or Inf"):
        encode_delta(poisoned, good, encoding)
    with pytest.raises(UpdateEncodingError, match="NaN or Inf"):
        encode_delta(good, poisoned, encoding)
    with pytest.raises(UpdateEncodingError, match="NaN or Inf"):
        encode_delta(poisoned, None, FLOAT32)


@pytest.mark.parametrize("encoding", DELTAS, ids=str)
def test_shape_mismatch_and_missing_base_are_refused(encoding: UpdateEncoding) -> None:
    w = [np.ones((2, 3), np.float32)]
    with pytest.raises(UpdateEncodingError, match="shape"):
        encode_delta(w, [np.ones((3, 2), np.float32)], encoding)
    with pytest.raises(UpdateEncodingError, match="base has 2"):
        encode_delta(w, [np.ones(1, np.float32)] * 2, encoding)
    with pytest.raises(UpdateEncodingError, match="needs the base"):
        encode_delta(w, None, encoding)
    encoded = encode_delta(w, w, encoding).update
    other = [np.ones((3, 3), np.float32)]
    assert encoded.base_sha256 != weights_sha256(other)  # what the federation codec checks
    if encoding.kind is not DeltaKind.TOPK_INT8:  # sparse parts carry no shape
        with pytest.raises(BadEncoding):
            decode_delta(encoded, other)
    with pytest.raises(BadEncoding):
        decode_delta(encoded, [np.ones((2, 3), np.float32)] * 2)  # one tensor missing
    with pytest.raises(BadEncoding):
        decode_delta(encoded, None)


def test_float16_overflow_and_bad_settings_are_refused() -> None:
    with pytest.raises(UpdateEncodingError, match="float16 range"):
        encode_delta([np.array([1e6], np.float32)], [np.zeros(1, np.float32)], FLOAT16)
    for fraction in (0.0, -0.1, 1.5, math.nan):
        with pytest.raises(UpdateEncodingError, match="topk_fraction"):
            UpdateEncoding(DeltaKind.TOPK_INT8, fraction)
    with pytest.raises(UpdateEncodingError):
        UpdateEncoding(DeltaKind.FLOAT16, stochastic=True)
    with pytest.raises(ValueError):
        UpdateEncoding("bfloat16")  # type: ignore[arg-type]
    w = [np.ones(4, np.float32)]
    with pytest.raises(UpdateEncodingError, match="residual"):
        encode_delta(w, w, INT8, residual=[np.zeros(4, np.float32)])
    with pytest.raises(UpdateEncodingError, match="residual"):
        encode_delta(w, w, DELTAS[-1], residual=[np.zeros(5, np.float32)])


def _replace(update: EncodedUpdate, name: str, value: np.ndarray) -> EncodedUpdate:
    tensors = [(n, value if n == name else a) for n, a in update.tensors]
    return EncodedUpdate(update.kind, update.base_sha256, tensors)


@st.composite
def corruptions(draw: st.DrawFn) -> tuple[UpdateEncoding, str, np.ndarray]:
    """A tensor of an encoded update replaced by a wrong one (dtype, shape or value)."""
    encoding = draw(st.sampled_from(DELTAS))
    if encoding.kind is DeltaKind.FLOAT16:
        name, value = (
            "0",
            draw(
                st.sampled_from(
                    [
                        np.full((3, 4), np.nan, np.float16),
                        np.full((3, 4), np.inf, np.float16),
                        np.zeros((4, 3), np.float16),
                        np.zeros((3, 4), np.float32),
                    ]
                )
            ),
        )
    else:
        name, value = draw(
            st.sampled_from(
                [
                    ("0/scale", np.asarray(np.float32(np.nan))),
                    ("0/scale", np.asarray(np.float32(-1.0))),
                    ("0/scale", np.asarray(np.float32(np.inf))),
                    ("0/scale", np.zeros(1, np.float32)),
                    ("0/scale", np.asarray(np.float64(1.0))),
                    ("0/q", np.full(12 if encoding.kind is DeltaKind.INT8 else 2, -128, np.int8)),
                    ("0/q", np.zeros(13, np.int8)),
                    ("0/scale", np.asarray(np.float32(3e38))),  # the sum overflows float32
                ]
            )
        )
        if encoding.kind is DeltaKind.TOPK_INT8 and draw(st.booleans()):
            name, value = (
                "0/idx",
                draw(
                    st.sampled_from(
                        [
                            np.array([5, 0], np.int32),  # repeated index
                            np.array([-1, 2], np.int32),
                            np.array([11, 1], np.int32),  # 12 is out of range
                            np.array([1, 2, 3], np.int32),  # more indices than values
                            np.array([1, 2], np.int64),
                        ]
                    )
                ),
            )
    return encoding, name, value


@FAST
@given(corruptions())
def test_corrupted_parts_raise_a_wire_error(case: tuple[UpdateEncoding, str, np.ndarray]) -> None:
    encoding, name, value = case
    rng = np.random.default_rng(1)
    base = [rng.normal(0, 1, (3, 4)).astype(np.float32)]
    weights = [base[0] + rng.normal(0, 0.1, (3, 4)).astype(np.float32)]
    encoded = encode_delta(weights, base, encoding).update
    if name == "0/scale" and value.dtype == np.float32 and value.shape == () and value > 1e38:
        base = [np.full((3, 4), 3e38, np.float32)]
        encoded = encode_delta(base, base, encoding).update  # zero delta, then a huge scale
        encoded = _replace(encoded, "0/q", np.full(encoded.tensors[-2][1].shape, 127, np.int8))
    with pytest.raises(WireError):
        decode_delta(_replace(encoded, name, value), base)


@pytest.mark.parametrize("encoding", DELTAS, ids=str)
def test_extra_missing_or_renamed_tensors_raise_bad_encoding(encoding: UpdateEncoding) -> None:
    w = [np.ones(4, np.float32), np.zeros(2, np.float32)]
    encoded = encode_delta(w, w, encoding).update
    t = encoded.tensors
    for tensors in (t[:-1], [*t, ("junk", np.zeros(1, np.float32))], [("x", t[0][1]), *t[1:]]):
        with pytest.raises(BadEncoding):
            decode_delta(EncodedUpdate(encoded.kind, encoded.base_sha256, tensors), w)


def test_the_base_digest_is_the_announced_bundles() -> None:
    from proto.tensor_codec import encode_bundle

    base = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(2, np.float32)]
    encoded = encode_delta(base, base, INT8).update
    assert encoded.base_sha256 == weights_sha256(base) == encode_bundle(base).sha256
    assert weights_sha256([base[0] + 1, base[1]]) != encoded.base_sha256


def test_int8_and_topk_are_smaller_on_the_wire() -> None:
    """What the encodings are for: fewer bytes than float32 for a realistic small delta."""
    from proto.blob_codec import pack_blob

    rng = np.random.default_rng(3)
    base = [rng.normal(0, 0.3, (64, 64)).astype(np.float32), np.zeros(64, np.float32)]
    weights = [b + rng.normal(0, 0.01, b.shape).astype(np.float32) for b in base]
    sizes = {}
    for encoding in [FLOAT32, *DELTAS]:
        tensors = encode_delta(weights, base, encoding).update.tensors
        sizes[str(encoding)] = pack_blob(bundle_to_bytes(tensors))[0].ByteSize()
    assert sizes["float16"] < 0.6 * sizes["float32"]
    assert sizes["int8"] < 0.35 * sizes["float32"]
    assert sizes["topk-int8@0.1"] < 0.15 * sizes["float32"]


@pytest.mark.parametrize("encoding", [FLOAT32, *DELTAS], ids=str)
def test_an_encoding_parses_from_its_text(encoding: UpdateEncoding) -> None:
    assert UpdateEncoding.parse(str(encoding)) == encoding


@pytest.mark.parametrize("text", ["bfloat16", "int8@0.1", "topk-int8", "topk-int8@x", "float16+sr"])
def test_bad_encoding_text_is_refused(text: str) -> None:
    with pytest.raises(UpdateEncodingError, match="update encoding"):
        UpdateEncoding.parse(text)
