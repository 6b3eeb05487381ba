"""Shared fixtures: the real datasets, loaded once per test session."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DATA = Path(__file__).parent / "data"
PALO_ALTO_EXCERPT = DATA / "palo-alto-2011-excerpt.csv"


@pytest.fixture(scope="session")
def dundee():
    from models.datasets.catalog import load_dataset

    return load_dataset("dundee")


@pytest.fixture(scope="session")
def perth():
    from models.datasets.catalog import load_dataset

    return load_dataset("perth")


@dataclass(frozen=True)
class GlobalVersion:
    """A global model as the coordinator would announce it: trained briefly on real Dundee data."""

    config: object  # models.model_config.ModelConfig
    preprocessing: object  # models.preprocessing.Preprocessing
    weights: list
    x_test: object  # normalised real test rows
    station: str  # the busiest Dundee charge point
    station_sessions: object  # its real sessions, in time order


@pytest.fixture(scope="session")
def energy_global(dundee) -> GlobalVersion:
    from models.partitioned import weights_of
    from models.preprocessing import preprocessing_from_prepared
    from models.training import TrainSettings, fit, new_model
    from models.use_cases import UseCase, default_model_config, prepare

    prepared = prepare(dundee.sessions, UseCase.default("dundee", "energy"))
    config = default_model_config(prepared.use_case, prepared.input_shape)
    model = new_model(config, seed=0)
    fit(model, prepared.x_train, prepared.y_train, prepared.normalization, TrainSettings(epochs=2))
    sessions = dundee.sessions
    station = str(sessions["station_id"].value_counts().idxmax())
    mine = sessions[sessions["station_id"] == station].sort_values("start").reset_index(drop=True)
    return GlobalVersion(
        config=config,
        preprocessing=preprocessing_from_prepared(prepared),
        weights=weights_of(model),
        x_test=prepared.x_test,
        station=station,
        station_sessions=mine,
    )
