"""A station's handling of announcements, without Kafka: serve, check, train, answer, persist."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from fog_node import participant
from fog_node.metrics import FogMetrics
from fog_node.participant import Participant
from fog_node.session_store import CLEAR_RESIDUAL, SessionStore
from models.constraints import constraints_for
from models.datasets.record import iter_sessions
from models.incremental import IncrementalSettings, train_round
from models.served_partition import ServedVersions
from proto import federation_pb2
from proto.constraints_codec import constraints_to_proto
from proto.federation_codec import build_announcement, end_of_task, read_update
from proto.signing import KeyRing, generate_keypair, load_signer
from proto.update_encoding import UpdateEncoding

TASK = "dundee-energy"


def _announce(g, version, min_samples=50, weights=None, signer=None, deadline_s=600, encoding=None):
    now = int(time.time() * 1000)
    message, chunks = build_announcement(
        TASK,
        version,
        version,
        g.config.to_dict(),
        g.preprocessing.to_dict(),
        g.weights if weights is None else weights,
        constraints_to_proto(constraints_for(g.preprocessing, min_samples)),
        (float("inf"), float("inf")),
        now + deadline_s * 1000,
        now,
        signer,
        update_encoding=encoding,
    )
    assert not chunks
    return message.SerializeToString()


@pytest.fixture
def station(tmp_path, energy_global):
    store = SessionStore(tmp_path / "sessions.sqlite3")
    store.add(list(iter_sessions(energy_global.station_sessions.head(400))))
    served = ServedVersions()
    metrics = FogMetrics()
    p = Participant(
        energy_global.station,
        [TASK],
        store,
        served,
        metrics,
        IncrementalSettings(epochs=2, time_budget_s=30),
    )
    yield p
    store.close()


def test_an_announcement_is_served_trained_on_and_answered(station, energy_global):
    outcome = station.on_announcement(_announce(energy_global, 1))
    assert outcome.kind == "trained", outcome.detail
    assert station.served.tasks() == {TASK: 1}
    update_id, payload = outcome.update
    update = read_update(payload)
    msg = update.message
    assert (msg.task_id, msg.station_id, msg.base_version) == (TASK, energy_global.station, 1)
    assert msg.update_id == update_id == f"{energy_global.station}:{TASK}:v1"
    assert msg.sample_count > 0
    assert [m.exit for m in msg.metrics] == ["edge", "fog", "cloud"]
    assert [w.shape for w in update.weights] == [w.shape for w in energy_global.weights]
    assert any(
        not np.array_equal(a, b) for a, b in zip(update.weights, energy_global.weights, strict=True)
    )
    state = station.store.task_state(TASK)
    assert state.trained_version == 1 and state.serving_version == 1
    assert state.watermark == station.store.max_seq()
    assert [u for u, _, _ in station.store.pending_updates()] == [update_id]
    assert station.metrics.announcements.labels("trained")._value.get() == 1


def test_a_redelivered_version_is_stale_and_new_sessions_are_needed_for_the_next(
    station, energy_global
):
    assert station.on_announcement(_announce(energy_global, 1)).kind == "trained"
    assert station.on_announcement(_announce(energy_global, 1)).kind == "stale"
    nothing_new = station.on_announcement(_announce(energy_global, 2))
    assert nothing_new.kind == "incompatible"
    assert "only 0 new usable sessions" in nothing_new.detail
    assert station.served.tasks() == {TASK: 2}  # still serves the newest version
    station.store.add(list(iter_sessions(energy_global.station_sessions.iloc[400:600])))
    assert station.on_announcement(_announce(energy_global, 3)).kind == "trained"


def test_a_round_announced_again_after_its_update_was_sent_gets_the_same_update(
    station, energy_global
):
    outcome = station.on_announcement(_announce(energy_global, 1))
    assert outcome.kind == "trained"
    assert station.on_announcement(_announce(energy_global, 1)).kind == "stale"  # not sent yet
    update_id, payload = outcome.update
    assert station.store.confirm_update(update_id)  # the loop delivered it
    again = station.on_announcement(_announce(energy_global, 1))
    assert (again.kind, again.update) == ("resend", (update_id, payload))  # not retrained
    assert station.store.task_state(TASK).trained_version == 1


def test_serving_survives_a_restart(tmp_path, station, energy_global):
    station.on_announcement(_announce(energy_global, 4))
    path = tmp_path / "sessions.sqlite3"
    station.store.close()
    store = SessionStore(path)
    again = Participant(
        energy_global.station,
        [TASK],
        store,
        ServedVersions(),
        FogMetrics(),
        IncrementalSettings(epochs=1),
    )
    assert again.restore() == [f"{TASK} v4"]
    assert again.served.tasks() == {TASK: 4}
    assert again.on_announcement(_announce(energy_global, 4)).kind == "stale"
    store.close()


@pytest.mark.parametrize(
    ("make", "kind", "words"),
    [
        (lambda g: b"\x08\x96\x01 not a protobuf \xff", "MalformedMessage", "parse"),
        (lambda g: _flip_weight_byte(_announce(g, 1)), "HashMismatch", "sha256"),
        (
            lambda g: _announce(g, 1, weights=[w[..., :1] for w in g.weights]),
            "shape_mismatch",
            "shape",
        ),
        (
            lambda g: _announce(g, 1, weights=[np.full_like(w, np.nan) for w in g.weights]),
            "NonFiniteWeights",
            "NaN",
        ),
        (lambda g: _announce(g, 1, min_samples=10_000), "incompatible", "round needs 10000"),
        (lambda g: _announce(g, 1, deadline_s=-60), "deadline_passed", "deadline"),
    ],
    ids=["garbage", "bad-hash", "wrong-shapes", "nan-weights", "too-few-sessions", "late"],
)
def test_bad_announcements_are_refused_counted_and_change_nothing(
    station, energy_global, make, kind, words
):
    outcome = station.on_announcement(make(energy_global))
    assert outcome.kind == kind
    assert words in outcome.detail
    assert outcome.update is None
    assert station.metrics.announcements.labels(kind)._value.get() == 1
    assert station.store.task_state(TASK).trained_version == -1
    assert station.store.count() == 400


def _flip_weight_byte(data: bytes) -> bytes:
    from proto import federation_pb2

    message = federation_pb2.ModelAnnouncement.FromString(data)
    stored = bytearray(message.weights.data)
    stored[len(stored) // 2] ^= 0x01
    message.weights.data = bytes(stored)
    return message.SerializeToString()


def test_unknown_tasks_and_the_end_of_a_task(station, energy_global):
    other = station.on_announcement(
        _announce(energy_global, 1).replace(TASK.encode(), b"perth-energyX")
    )
    assert other.kind == "unknown_task"
    assert station.on_announcement(_announce(energy_global, 1)).kind == "trained"
    ended = station.on_announcement(end_of_task(TASK, int(time.time() * 1000)))
    assert ended.kind == "ended"
    assert station.served.tasks() == {TASK: 1}  # the last model keeps answering vehicles
    assert station.store.task_state(TASK).last_compatibility == "task ended"


def test_signed_announcements_only_from_known_keys(tmp_path, station, energy_global):
    private, public = generate_keypair(tmp_path / "keys", "coordinator-1")
    ring = KeyRing()
    from proto.signing import load_public_key

    ring.add("coordinator-1", load_public_key(public))
    station.keyring, station.require_signed = ring, True
    unsigned = station.on_announcement(_announce(energy_global, 1))
    assert unsigned.kind == "BadSignature"
    rogue_private, _ = generate_keypair(tmp_path / "rogue", "coordinator-1")
    forged = station.on_announcement(
        _announce(energy_global, 1, signer=load_signer(rogue_private, "coordinator-1"))
    )
    assert forged.kind == "BadSignature"
    signed = station.on_announcement(
        _announce(energy_global, 1, signer=load_signer(private, "coordinator-1"))
    )
    assert signed.kind == "trained", signed.detail


TOPK = UpdateEncoding.parse("topk-int8@0.05")


def _sent_delta(outcome, base) -> list[np.ndarray]:
    """What an update adds to ``base``, decoded as the coordinator decodes it."""
    update = read_update(outcome.update[1], base_weights=base)
    assert update.message.encoding == federation_pb2.UPDATE_TOPK_INT8_DELTA
    return [w.astype(np.float64) - b for w, b in zip(update.weights, base, strict=True)]


def _diff(a, b) -> list[np.ndarray]:
    return [x.astype(np.float64) - y for x, y in zip(a, b, strict=True)]


def _sum(*parts) -> list[np.ndarray]:
    return [sum(arrays) for arrays in zip(*parts, strict=True)]


def _assert_close(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=2e-5)


def test_top_k_updates_keep_what_they_do_not_send_for_the_next_round(
    station, energy_global, monkeypatch
):
    """Error feedback: over rounds, what was sent plus what is held back is what was learnt."""
    trained = []

    def spy(*args, **kwargs):
        result = train_round(*args, **kwargs)
        trained.append(result.weights)
        return result

    monkeypatch.setattr(participant, "train_round", spy)
    g = energy_global
    base1 = g.weights
    first = station.on_announcement(_announce(g, 1, encoding=TOPK))
    assert first.kind == "trained", first.detail
    sent1 = _sent_delta(first, base1)
    for d in sent1:
        assert np.count_nonzero(d) <= math.ceil(0.05 * d.size)
    residual1 = station.store.residual(TASK)
    assert residual1 is not None
    assert [r.shape for r in residual1] == [w.shape for w in g.weights]
    assert all(r.dtype == np.float32 for r in residual1)
    assert sum(float(np.abs(r).sum()) for r in residual1) > 0
    true1 = _diff(trained[0], base1)
    _assert_close(_sum(sent1, residual1), true1)

    # The coordinator's next version moved by what was sent; the station trains on new rows.
    base2 = [(b + d).astype(np.float32) for b, d in zip(base1, sent1, strict=True)]
    station.store.add(list(iter_sessions(g.station_sessions.iloc[400:600])))
    second = station.on_announcement(_announce(g, 2, weights=base2, encoding=TOPK))
    assert second.kind == "trained", second.detail
    sent2 = _sent_delta(second, base2)
    residual2 = station.store.residual(TASK)
    assert residual2 is not None
    true2 = _diff(trained[1], base2)
    _assert_close(_sum(sent2, residual2), _sum(true2, residual1))  # round 1's rest joined in
    _assert_close(_sum(sent1, sent2, residual2), _sum(true1, true2))


def test_an_update_not_top_k_clears_the_residual(station, energy_global):
    station.store.put_pending_update(
        "old", TASK, b"old", residual=[np.ones_like(w) for w in energy_global.weights]
    )
    outcome = station.on_announcement(
        _announce(energy_global, 1, encoding=UpdateEncoding.parse("int8"))
    )
    assert outcome.kind == "trained", outcome.detail
    assert station.store.residual(TASK) is None


def test_a_residual_that_no_longer_fits_the_model_is_dropped(station, energy_global):
    """A residual from another architecture is not added; the update is top-k all the same."""
    g = energy_global
    station.store.put_pending_update(
        "old", TASK, b"old", residual=[np.full((3, 3), 1e3, np.float32)]
    )
    outcome = station.on_announcement(_announce(g, 1, encoding=TOPK))
    assert outcome.kind == "trained", outcome.detail
    sent = _sent_delta(outcome, g.weights)
    assert max(float(np.abs(d).max()) for d in sent) < 1e2  # the 1e3 entries were not sent
    residual = station.store.residual(TASK)
    assert residual is not None
    assert [r.shape for r in residual] == [w.shape for w in g.weights]
    station.store.put_pending_update("later", TASK, b"later", residual=CLEAR_RESIDUAL)
    assert station.store.residual(TASK) is None
