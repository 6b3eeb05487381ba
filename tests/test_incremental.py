"""A station's incremental round on its own Dundee sessions: what it trains on and returns."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from models.incremental import (
    BadFrame,
    IncompatibleModel,
    IncrementalSettings,
    IncrementalSettingsError,
    NotEnoughData,
    TrainingDiverged,
    conform_weights,
    hold_out,
    select_rows,
    train_round,
)
from models.partitioned import ShapeMismatch
from models.preprocessing import preprocessing_from_prepared
from models.use_cases import UseCase, default_model_config, prepare

N_FITTED = 3000  # sessions the coordinator fitted the preprocessing on
N_STORED = 3000  # sessions in the station's store
WATERMARK = 2000  # the last round trained up to here: 1000 new sessions


# --- pure selection ------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    seqs=hnp.arrays(np.int64, st.integers(0, 300), elements=st.integers(-50, 500)),
    watermark=st.integers(-60, 510),
    ratio=st.floats(0.0, 3.0),
    replay_max=st.integers(0, 400),
    seed=st.integers(0, 2**16),
)
def test_select_rows_new_is_after_watermark_and_replay_is_a_bounded_old_sample(
    seqs, watermark, ratio, replay_max, seed
):
    s = IncrementalSettings(replay_ratio=ratio, replay_max=replay_max, seed=seed)
    new, replay = select_rows(seqs, watermark, s)
    np.testing.assert_array_equal(new, np.flatnonzero(seqs > watermark))
    assert not set(new) & set(replay)
    assert len(np.unique(replay)) == len(replay)
    assert (seqs[replay] <= watermark).all()
    n_old = int((seqs <= watermark).sum())
    wanted = ratio * len(new)  # ceil, forgiving float noise such as 0.1 * 30 > 3
    low, high = (min(math.ceil(w), replay_max, n_old) for w in (wanted - 1e-6, wanted))
    assert low <= len(replay) <= high
    np.testing.assert_array_equal(select_rows(seqs, watermark, s)[1], replay)  # seeded


def test_hold_out_is_a_seeded_share_of_the_new_rows():
    new = np.arange(100, 200)
    train, val = hold_out(new, IncrementalSettings())
    assert len(val) == 20 and len(train) == 80
    assert sorted([*train, *val]) == list(new)
    np.testing.assert_array_equal(val, hold_out(new, IncrementalSettings())[1])
    assert len(hold_out(new[:30], IncrementalSettings())[1]) == 10  # min_validation
    with pytest.raises(NotEnoughData, match="only 10 new usable sessions"):
        hold_out(new[:10], IncrementalSettings())


def test_conform_weights_keeps_the_global_dtypes_and_refuses_nan():
    ref = [np.zeros((3, 2), np.float64), np.zeros(2, np.float32)]
    trained = [np.ones((3, 2), np.float32), np.ones(2, np.float32)]
    out = conform_weights(ref, trained)
    assert [w.dtype for w in out] == [np.float64, np.float32]
    with pytest.raises(TrainingDiverged, match=r"weights\[1\]"):
        conform_weights(ref, [trained[0], np.array([1.0, np.nan], np.float32)])
    with pytest.raises(ShapeMismatch):
        conform_weights(ref, [trained[0], np.ones(3, np.float32)])


def test_settings_are_validated():
    for bad in ({"epochs": 0}, {"replay_ratio": -1.0}, {"validation_share": 1.0}, {"seed": -1}):
        with pytest.raises(IncrementalSettingsError, match=next(iter(bad))):
            IncrementalSettings(**bad)


# --- rounds on real sessions ------------------------------------------------------------------


def _setup(dundee, target: str):
    """Global model version (preprocessing + config + untrained weights) and a station's store."""
    from models.partitioned import weights_of
    from models.training import new_model

    use_case = UseCase.default("dundee", target)
    pre = preprocessing_from_prepared(prepare(dundee.sessions.head(N_FITTED), use_case))
    config = default_model_config(use_case, pre.input_shape)
    weights = weights_of(new_model(config, seed=7))
    s = dundee.sessions
    busiest = s["station_id"].value_counts().index[0]
    frame = s[s["station_id"] == busiest].head(N_STORED).reset_index(drop=True)
    frame["seq"] = np.arange(1, len(frame) + 1, dtype=np.int64)
    return pre, config, weights, frame


@pytest.fixture(scope="module")
def energy(dundee):
    return _setup(dundee, "energy")


@pytest.fixture(scope="module")
def occupancy(dundee):
    return _setup(dundee, "occupancy")


def _assert_valid_round(result, weights, settings_used: IncrementalSettings):
    assert [w.shape for w in result.weights] == [w.shape for w in weights]
    assert [w.dtype for w in result.weights] == [w.dtype for w in weights]
    assert all(np.isfinite(w).all() for w in result.weights)
    assert any(not np.array_equal(a, b) for a, b in zip(result.weights, weights, strict=True))
    assert result.sample_count == result.new_rows + result.replay_rows
    assert 1 <= result.epochs_run <= settings_used.epochs
    assert len(result.metrics_before) == len(result.metrics_after) == 3
    assert {m.n for m in (*result.metrics_before, *result.metrics_after)} == {
        result.validation_rows
    }


@pytest.mark.parametrize("use_case", ["energy", "occupancy"])
def test_round_learns_from_new_sessions_plus_replay(use_case, request):
    """Energy MLP (tabular) and occupancy LSTM (sequence) from untrained global weights."""
    pre, config, weights, frame = request.getfixturevalue(use_case)
    s = IncrementalSettings(epochs=2)
    result = train_round(config, pre, weights, frame, WATERMARK, s)
    _assert_valid_round(result, weights, s)
    new = len(frame) - WATERMARK
    if use_case == "energy":  # every session is usable; LSTM windows need 8 earlier sessions
        assert result.new_rows + result.validation_rows == new
        assert result.replay_rows == new  # replay_ratio 1.0
    assert result.validation_rows == round(0.2 * (result.new_rows + result.validation_rows))
    assert result.epochs_run == 2
    assert result.new_watermark == len(frame)
    cloud_before, cloud_after = result.metrics_before[-1], result.metrics_after[-1]
    assert cloud_after.mse <= cloud_before.mse
    assert cloud_after.mae <= cloud_before.mae


def test_a_tiny_time_budget_stops_after_the_first_epoch(energy):
    pre, config, weights, frame = energy
    as_averaged = [w.astype(np.float64) for w in weights]  # e.g. straight from np.average
    window = np.zeros(len(frame), dtype=bool)
    window[WATERMARK - 500 : WATERMARK + 300] = True  # the round's time window
    s = IncrementalSettings(epochs=5, time_budget_s=1e-6)
    result = train_round(config, pre, as_averaged, frame, WATERMARK, s, eligible=window)
    _assert_valid_round(result, as_averaged, s)
    assert result.epochs_run == 1
    assert (result.new_rows, result.validation_rows, result.replay_rows) == (240, 60, 300)
    assert result.new_watermark == WATERMARK + 300


def test_nothing_new_or_misfit_inputs_raise_before_training(energy, occupancy):
    pre, config, weights, frame = energy
    with pytest.raises(NotEnoughData, match=f"no new usable sessions after watermark {len(frame)}"):
        train_round(config, pre, weights, frame, len(frame))
    with pytest.raises(NotEnoughData, match="only 5 new usable sessions"):
        train_round(config, pre, weights, frame, len(frame) - 5)
    with pytest.raises(BadFrame, match="'seq'"):
        train_round(config, pre, weights, frame.drop(columns="seq"), WATERMARK)
    with pytest.raises(BadFrame, match="eligible"):
        train_round(config, pre, weights, frame, WATERMARK, eligible=np.ones(3, dtype=bool))
    lstm_config = occupancy[1]
    with pytest.raises(IncompatibleModel, match="input_shape"):
        train_round(lstm_config, pre, weights, frame, WATERMARK)
