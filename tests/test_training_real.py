"""Central training on the real data reaches the paper's accuracy (the Foundation's bar)."""

from __future__ import annotations

import numpy as np
import pytest

from models.metrics import exit_metrics
from models.use_cases import UseCase, default_model_config, prepare

pytestmark = pytest.mark.slow


def _train(prepared, epochs: int):
    from models.training import TrainSettings, evaluate, fit, new_model

    config = default_model_config(prepared.use_case, prepared.input_shape)
    model = new_model(config, 0)
    fit(
        model,
        prepared.x_train,
        prepared.y_train,
        prepared.normalization,
        TrainSettings(epochs=epochs),
        (prepared.x_val, prepared.y_val),
    )
    return evaluate(
        model,
        prepared.normalization,
        (prepared.x_val, prepared.y_val),
        (prepared.x_test, prepared.y_test),
    )


def test_dundee_energy_paper_features_beat_fedl_edl(dundee):
    """FEDL paper: EDL (2x64 tanh MLP) reaches 5.86 kWh RMSE at 80/20; we must reach <= 5.9."""
    prepared = prepare(dundee.sessions, UseCase.default("dundee", "energy"))
    evaluation = _train(prepared, epochs=40)
    mean = exit_metrics(prepared.y_test, prepared.baselines["training mean"])
    cloud = evaluation.exits[2]
    assert cloud.rmse <= 5.9
    assert all(e.rmse < mean.rmse for e in evaluation.exits)
    # the variance heads are honest: the 90% intervals cover about 90%
    assert all(0.85 <= e.coverage90 <= 0.95 for e in evaluation.exits)
    assert sum(evaluation.exit_rates) == pytest.approx(1.0)


def test_perth_occupancy_lstm_beats_persistence_and_mean(perth):
    """A year of Perth sessions, time-ordered split: the LSTM's every exit beats both baselines."""
    sessions = perth.sessions[perth.sessions["start"] < "2017-09-01"]
    prepared = prepare(sessions, UseCase.default("perth", "occupancy"))
    evaluation = _train(prepared, epochs=15)
    for name, baseline in prepared.baselines.items():
        b = exit_metrics(prepared.y_test, baseline)
        for e in evaluation.exits:
            assert e.mae < b.mae, name
            assert e.mse < b.mse, name
    assert np.isfinite([e.coverage90 for e in evaluation.exits]).all()
