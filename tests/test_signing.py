"""Only messages signed by a trusted key verify; any change, any other key or type is refused."""

from __future__ import annotations

import stat
from collections.abc import Callable

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import DecodeError, Message
from hypothesis import given, settings
from hypothesis import strategies as st

from proto import federation_pb2, partitions_pb2
from proto.blob_codec import weights_to_blob
from proto.signing import (
    KeyLoadError,
    KeyRing,
    Signer,
    generate_keypair,
    load_keyring,
    load_public_key,
    load_signer,
    sign,
    signed_bytes,
    signer_from_env,
)
from proto.wire_errors import BadSignature

FAST = settings(max_examples=60, deadline=None)

SIGNER = Signer("coordinator-1", Ed25519PrivateKey.generate())
OTHER = Signer("coordinator-2", Ed25519PrivateKey.generate())
RING = KeyRing({SIGNER.key_id: SIGNER.public_key})


def announcement() -> federation_pb2.ModelAnnouncement:
    blob, _ = weights_to_blob([np.arange(12, dtype=np.float32).reshape(3, 4)])
    msg = federation_pb2.ModelAnnouncement(
        task_id="dundee-energy",
        version=3,
        round=2,
        model_config_json='{"hidden": [32, 16]}',
        preprocessing_json='{"scale": 1.5}',
        weights=blob,
        round_deadline_unix_ms=1_700_000_000_000,
        announced_unix_ms=1_699_999_000_000,
    )
    msg.constraints.target = "energy"
    msg.constraints.min_samples = 100
    msg.constraints.features.add(name="hour", shape=[1])
    msg.exit_policy.thresholds.extend([0.5, 1.25])
    return msg


def update() -> federation_pb2.ClientUpdate:
    blob, _ = weights_to_blob([np.ones((2, 2), np.float32)])
    msg = federation_pb2.ClientUpdate(
        task_id="dundee-energy",
        station_id="station-7",
        base_version=3,
        update_id="u-0001",
        sample_count=420,
        weights=blob,
        is_delta=True,
        train_seconds=12.5,
        round=2,
    )
    msg.metrics.add(exit="edge", count=420, mse=0.5, mae=0.4, rmse=0.7)
    return msg


def manifest() -> partitions_pb2.PartitionManifest:
    return partitions_pb2.PartitionManifest(
        task_id="dundee-energy", version=3, partition="edge", format="tflite", sha256="ab" * 32
    )


@pytest.mark.parametrize("make", [announcement, update, manifest])
def test_sign_then_verify(make: Callable[[], Message]) -> None:
    msg = make()
    sign(msg, SIGNER)
    assert msg.signature.key_id == SIGNER.key_id
    assert len(msg.signature.ed25519) == 64
    wire = type(msg).FromString(msg.SerializeToString())
    assert RING.verify(wire) == SIGNER.key_id


def test_signing_leaves_the_content_alone_and_is_repeatable() -> None:
    msg = announcement()
    before = signed_bytes(msg)
    sign(msg, SIGNER)
    assert signed_bytes(msg) == before
    assert before.startswith(b"evfl.v1.ModelAnnouncement\x00")
    sign(msg, SIGNER)  # re-signing replaces, never nests
    assert RING.verify(msg) == SIGNER.key_id


TAMPERS: dict[str, Callable[[federation_pb2.ModelAnnouncement], None]] = {
    "task_id": lambda m: setattr(m, "task_id", "other-task"),
    "version": lambda m: setattr(m, "version", m.version + 1),
    "round": lambda m: setattr(m, "round", 0),
    "model_config": lambda m: setattr(m, "model_config_json", "{}"),
    "weights_data": lambda m: setattr(m.weights, "data", m.weights.data[:-1] + b"\0"),
    "weights_sha": lambda m: setattr(m.weights, "sha256", "0" * 64),
    "constraints": lambda m: setattr(m.constraints, "min_samples", 1),
    "feature": lambda m: m.constraints.features[0].shape.append(2),
    "exit_policy": lambda m: m.exit_policy.thresholds.append(float("inf")),
    "deadline": lambda m: setattr(m, "round_deadline_unix_ms", 0),
    "cleared_weights": lambda m: m.ClearField("weights"),
}


@pytest.mark.parametrize("tamper", TAMPERS.values(), ids=TAMPERS.keys())
def test_tampering_any_field_breaks_the_signature(tamper: Callable) -> None:
    msg = announcement()
    sign(msg, SIGNER)
    tamper(msg)
    with pytest.raises(BadSignature, match="does not verify"):
        RING.verify(msg)


SIGNED_UPDATE = update()
sign(SIGNED_UPDATE, SIGNER)
SIGNED_UPDATE_BYTES = SIGNED_UPDATE.SerializeToString()


@FAST
@given(st.integers(min_value=0, max_value=len(SIGNED_UPDATE_BYTES) * 8 - 1))
def test_any_bit_flip_that_changes_the_message_is_refused(bit: int) -> None:
    damaged = bytearray(SIGNED_UPDATE_BYTES)
    damaged[bit // 8] ^= 1 << (bit % 8)
    try:
        msg = federation_pb2.ClientUpdate.FromString(bytes(damaged))
    except DecodeError:
        return  # refused by the parser already
    if msg == SIGNED_UPDATE:
        return  # same content, other encoding (a bool sent as 3): the signature covers content
    with pytest.raises(BadSignature):
        RING.verify(msg)


def test_unsigned_message_is_refused() -> None:
    with pytest.raises(BadSignature, match="unsigned"):
        RING.verify(update())
    msg = update()
    msg.signature.key_id = SIGNER.key_id  # a key id but no signature bytes
    with pytest.raises(BadSignature, match="unsigned"):
        RING.verify(msg)


def test_unknown_key_is_refused() -> None:
    msg = update()
    sign(msg, OTHER)
    with pytest.raises(BadSignature, match="unknown key 'coordinator-2'"):
        RING.verify(msg)


def test_claiming_a_trusted_key_id_does_not_help() -> None:
    msg = update()
    sign(msg, Signer(SIGNER.key_id, Ed25519PrivateKey.generate()))
    with pytest.raises(BadSignature, match="does not verify"):
        RING.verify(msg)


@FAST
@given(st.binary(max_size=130), st.sampled_from([SIGNER.key_id, "", "x" * 500, "\n\x00é"]))
def test_garbage_signatures_raise_only_bad_signature(garbage: bytes, key_id: str) -> None:
    msg = update()
    msg.signature.key_id = key_id
    msg.signature.ed25519 = garbage
    with pytest.raises(BadSignature):
        RING.verify(msg)


def test_an_announcement_signature_is_not_an_update_signature() -> None:
    ann = federation_pb2.ModelAnnouncement(task_id="t1")
    upd = federation_pb2.ClientUpdate(task_id="t1")
    assert ann.SerializeToString() == upd.SerializeToString()  # same bytes, different meaning
    sign(ann, SIGNER)
    upd.signature.CopyFrom(ann.signature)
    assert RING.verify(ann) == SIGNER.key_id
    with pytest.raises(BadSignature):
        RING.verify(upd)


def test_messages_without_a_signature_field_are_a_programming_error() -> None:
    with pytest.raises(TypeError):
        sign(federation_pb2.ExitMetric(), SIGNER)
    with pytest.raises(TypeError):
        RING.verify(federation_pb2.ExitMetric())


def test_rotation_add_new_switch_signer_remove_old() -> None:
    ring = KeyRing({SIGNER.key_id: SIGNER.public_key})
    old_signed = update()
    sign(old_signed, SIGNER)
    ring.add(OTHER.key_id, OTHER.public_key)  # 1. every verifier learns the new key
    new_signed = update()
    sign(new_signed, OTHER)  # 2. the signer switches
    assert ring.verify(old_signed) == SIGNER.key_id
    assert ring.verify(new_signed) == OTHER.key_id
    ring.remove(SIGNER.key_id)  # 3. the old key retires
    assert ring.key_ids == (OTHER.key_id,)
    with pytest.raises(BadSignature, match="unknown key"):
        ring.verify(old_signed)


def test_signer_repr_does_not_show_the_key() -> None:
    assert "private_key" not in repr(SIGNER)
    with pytest.raises(ValueError):
        Signer("bad/id", Ed25519PrivateKey.generate())


def test_keys_written_to_files_load_back(tmp_path) -> None:
    private_path, public_path = generate_keypair(tmp_path / "keys", "coordinator-1")
    assert private_path.name == "coordinator-1.key.pem"
    assert public_path.name == "coordinator-1.pub.pem"
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    signer = load_signer(private_path, "coordinator-1")
    ring = load_keyring(tmp_path / "keys")
    assert ring.key_ids == ("coordinator-1",)
    msg = announcement()
    sign(msg, signer)
    assert ring.verify(msg) == "coordinator-1"
    assert load_keyring([public_path]).verify(msg) == "coordinator-1"
    assert signer.public_pem() == public_path.read_bytes()
    # PEM text works as well as a path.
    from_text = load_signer(private_path.read_text(), "coordinator-1")
    from_bytes = load_signer(private_path.read_bytes(), "coordinator-1")
    assert from_text.public_pem() == from_bytes.public_pem() == public_path.read_bytes()
    assert isinstance(load_public_key(public_path.read_bytes()), type(signer.public_key))


def test_key_files_are_never_overwritten(tmp_path) -> None:
    generate_keypair(tmp_path, "k1")
    with pytest.raises(FileExistsError):
        generate_keypair(tmp_path, "k1")


def test_keyring_directory_holds_several_keys(tmp_path) -> None:
    generate_keypair(tmp_path, "old")
    generate_keypair(tmp_path, "new")
    assert load_keyring(tmp_path).key_ids == ("new", "old")


def test_bad_key_files_raise_key_load_error(tmp_path) -> None:
    with pytest.raises(KeyLoadError, match=r"no \*\.pub\.pem files"):
        load_keyring(tmp_path)
    (tmp_path / "junk.pub.pem").write_text("not a key")
    with pytest.raises(KeyLoadError, match=r"junk\.pub\.pem"):
        load_keyring(tmp_path)
    with pytest.raises(KeyLoadError, match="cannot read"):
        load_signer(tmp_path / "missing.key.pem", "k")
    private_path, public_path = generate_keypair(tmp_path / "k", "k")
    with pytest.raises(KeyLoadError):
        load_signer(public_path, "k")  # a public key is not a private key
    with pytest.raises(KeyLoadError):
        load_public_key(private_path)


def test_signer_from_environment(tmp_path, monkeypatch) -> None:
    private_path, public_path = generate_keypair(tmp_path, "coordinator-1")
    pem = private_path.read_text()
    monkeypatch.setenv("EVFL_SIGNING_KEY", pem)
    signer = signer_from_env("EVFL_SIGNING_KEY", "coordinator-1")
    assert signer.public_pem() == public_path.read_bytes()
    # Deployment tools that flatten newlines to "\n" are understood.
    monkeypatch.setenv("EVFL_SIGNING_KEY", pem.replace("\n", "\\n"))
    assert signer_from_env("EVFL_SIGNING_KEY", "k").public_pem() == public_path.read_bytes()


def test_signer_from_environment_errors_name_the_variable_not_the_secret(monkeypatch) -> None:
    monkeypatch.delenv("EVFL_SIGNING_KEY", raising=False)
    with pytest.raises(KeyLoadError, match="EVFL_SIGNING_KEY is not set"):
        signer_from_env("EVFL_SIGNING_KEY", "k")
    secret = "-----BEGIN PRIVATE KEY-----\nSUPERSECRET123\n-----END PRIVATE KEY-----\n"
    monkeypatch.setenv("EVFL_SIGNING_KEY", secret)
    with pytest.raises(KeyLoadError) as err:
        signer_from_env("EVFL_SIGNING_KEY", "k")
    assert "EVFL_SIGNING_KEY" in str(err.value)
    assert "SUPERSECRET" not in str(err.value)
    assert err.value.__cause__ is None
    assert err.value.__suppress_context__
