"""Updates as compressed deltas through build_update/read_update; float32 stays as it was."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proto import federation_pb2 as pb
from proto.federation_codec import (
    BaseMismatch,
    ExitScore,
    build_announcement,
    build_update,
    read_announcement,
    read_update,
)
from proto.signing import KeyRing, Signer
from proto.update_encoding import (
    FLOAT32,
    DeltaKind,
    UpdateEncoding,
    UpdateEncodingError,
    encode_delta,
    weights_sha256,
)
from proto.wire_errors import BadSignature, MalformedMessage, WireError

SCORES = [ExitScore("cloud", 10, 1.0, 1.0, 1.0)]
ENCODINGS = [
    UpdateEncoding(DeltaKind.FLOAT16),
    UpdateEncoding(DeltaKind.INT8),
    UpdateEncoding(DeltaKind.INT8, stochastic=True),
    UpdateEncoding(DeltaKind.TOPK_INT8, 0.05),
]


def model(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.normal(0, 0.3, (16, 32)).astype(np.float32),
        np.zeros(32, np.float32),
        rng.normal(0, 0.3, (32, 1)).astype(np.float32),
    ]


def trained(base: list[np.ndarray], step: float = 0.01) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [b + rng.normal(0, step, b.shape).astype(np.float32) for b in base]


def update(weights, **kw) -> bytes:  # type: ignore[no-untyped-def]
    message, chunks = build_update("t", "s1", 3, 4, "s1:t:v3", 100, SCORES, weights, 1.5, **kw)
    assert not chunks
    return message.SerializeToString()


def test_float32_default_is_todays_message_byte_for_byte() -> None:
    base = model()
    old_style = update(trained(base))
    assert old_style == update(trained(base), encoding=FLOAT32, base_weights=base)
    message = pb.ClientUpdate.FromString(old_style)
    assert message.encoding == pb.UPDATE_FLOAT32 and not message.is_delta
    assert not message.base_sha256
    for got, want in zip(read_update(old_style).weights, trained(base), strict=True):
        np.testing.assert_array_equal(got, want)
    # A reader given the base still reads a full update.
    read_update(old_style, base_weights=[np.zeros(1, np.float32)])


@pytest.mark.parametrize("encoding", ENCODINGS, ids=str)
def test_delta_round_trip_is_close_and_smaller(encoding: UpdateEncoding) -> None:
    base = model()
    weights = trained(base)
    data = update(weights, base_weights=base, encoding=encoding, seed=5)
    message = pb.ClientUpdate.FromString(data)
    assert message.is_delta and message.base_sha256 == weights_sha256(base)
    read = read_update(data, base_weights=base)
    assert len(data) < 0.7 * len(update(weights))
    for got, want, b in zip(read.weights, weights, base, strict=True):
        assert got.dtype == np.float32 and got.shape == want.shape
        if encoding.kind is DeltaKind.TOPK_INT8:
            # Sparse: the decoded delta is never further from the true one than the delta is.
            assert np.linalg.norm(got - want) < np.linalg.norm(want - b) + 1e-6
        else:
            np.testing.assert_allclose(got, want, atol=0.01 * 4 / 127 * 2 + 1e-6)


@pytest.mark.parametrize("encoding", ENCODINGS, ids=str)
def test_delta_against_another_base_is_refused(encoding: UpdateEncoding) -> None:
    base = model()
    data = update(trained(base), base_weights=base, encoding=encoding)
    with pytest.raises(BaseMismatch, match="no base weights"):
        read_update(data)
    other = [w.copy() for w in base]
    other[1][0] += 1e-3
    with pytest.raises(BaseMismatch, match=r"delta against base [0-9a-f]{12} \(v3\)"):
        read_update(data, base_weights=other)
    with pytest.raises(BaseMismatch):
        read_update(data, base_weights=base, base_sha256=weights_sha256(other))
    assert isinstance(BaseMismatch("x"), WireError)


def test_error_feedback_update_goes_out_as_encoded() -> None:
    base = model()
    encoded = encode_delta(trained(base), base, ENCODINGS[-1])
    assert encoded.residual is not None
    data = update(encoded.update)
    got = read_update(data, base_weights=base).weights
    sent = [g - b for g, b in zip(got, base, strict=True)]
    for s, r, w, b in zip(sent, encoded.residual, trained(base), base, strict=True):
        np.testing.assert_allclose(s + r, w - b, atol=1e-6)


def test_inconsistent_or_unknown_encodings_are_malformed() -> None:
    base = model()
    full = pb.ClientUpdate.FromString(update(trained(base)))
    full.is_delta = True
    with pytest.raises(MalformedMessage, match="not a delta"):
        read_update(full.SerializeToString(), base_weights=base)
    delta = pb.ClientUpdate.FromString(
        update(trained(base), base_weights=base, encoding=ENCODINGS[1])
    )
    delta.base_sha256 = ""
    with pytest.raises(MalformedMessage, match="base_sha256"):
        read_update(delta.SerializeToString(), base_weights=base)
    delta = pb.ClientUpdate.FromString(
        update(trained(base), base_weights=base, encoding=ENCODINGS[1])
    )
    delta.encoding = 99  # type: ignore[assignment]
    with pytest.raises(MalformedMessage, match="unknown encoding 99"):
        read_update(delta.SerializeToString(), base_weights=base)
    # The int8 layout read as float16: the parts do not fit, a WireError.
    delta = pb.ClientUpdate.FromString(
        update(trained(base), base_weights=base, encoding=ENCODINGS[1])
    )
    delta.encoding = pb.UPDATE_FLOAT16_DELTA
    with pytest.raises(WireError):
        read_update(delta.SerializeToString(), base_weights=base)


def test_non_finite_or_mismatched_weights_are_refused_before_sending() -> None:
    base = model()
    bad = trained(base)
    bad[0][0, 0] = np.nan
    with pytest.raises(UpdateEncodingError, match="NaN or Inf"):
        update(bad, base_weights=base, encoding=ENCODINGS[1])
    with pytest.raises(UpdateEncodingError, match="shape"):
        update(trained(base), base_weights=[w.T for w in base], encoding=ENCODINGS[1])
    with pytest.raises(UpdateEncodingError, match="needs the base"):
        update(trained(base), encoding=ENCODINGS[1])


def test_signature_covers_the_encoding_and_base() -> None:
    key = Ed25519PrivateKey.generate()
    signer = Signer("station-1", key)
    keyring = KeyRing({"station-1": key.public_key()})
    base = model()
    data = update(trained(base), base_weights=base, encoding=ENCODINGS[1], signer=signer)
    assert read_update(data, keyring, True, base_weights=base).signed_by == "station-1"
    message = pb.ClientUpdate.FromString(data)
    message.encoding = pb.UPDATE_FLOAT16_DELTA
    with pytest.raises(BadSignature):
        read_update(message.SerializeToString(), keyring, True, base_weights=base)


def announcement(**kw) -> bytes:  # type: ignore[no-untyped-def]
    message, chunks = build_announcement(
        "t", 3, 4, {"a": 1}, {"b": 2}, model(), pb.DataConstraints(), (), 0, 1, **kw
    )
    assert not chunks
    return message.SerializeToString()


def test_the_announcement_says_which_encoding_it_wants() -> None:
    assert read_announcement(announcement()).update_encoding == FLOAT32
    assert not pb.ModelAnnouncement.FromString(announcement()).HasField("update_encoding")
    for encoding in ENCODINGS:
        assert read_announcement(announcement(update_encoding=encoding)).update_encoding == encoding
    # A newer coordinator's encoding this station does not know: it sends float32.
    message = pb.ModelAnnouncement.FromString(announcement(update_encoding=ENCODINGS[1]))
    message.update_encoding.encoding = 42  # type: ignore[assignment]
    assert read_announcement(message.SerializeToString()).update_encoding == FLOAT32
    message.update_encoding.encoding = pb.UPDATE_TOPK_INT8_DELTA
    message.update_encoding.topk_fraction = 2.0
    with pytest.raises(MalformedMessage, match="topk_fraction"):
        read_announcement(message.SerializeToString())
