"""The preprocessing a model version ships: JSON round trip, and encoding exactly like prepare."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from models.features import TabularEncoder
from models.normalization import Normalization
from models.preprocessing import (
    Preprocessing,
    PreprocessingError,
    encoder_from_dict,
    preprocessing_from_prepared,
)
from models.sequences import SequenceEncoder
from models.splits import random_split, time_split
from models.use_cases import UseCase, prepare

N_SESSIONS = 3000


@pytest.fixture(scope="module")
def sessions(dundee):
    return dundee.sessions.head(N_SESSIONS).reset_index(drop=True)


@pytest.fixture(scope="module")
def energy(sessions):
    return prepare(sessions, UseCase.default("dundee", "energy"))


@pytest.fixture(scope="module")
def occupancy(sessions):
    return prepare(sessions, UseCase.default("dundee", "occupancy"))


@pytest.mark.parametrize("use_case", ["energy", "occupancy"])
def test_json_round_trip_keeps_everything(use_case, request):
    prepared = request.getfixturevalue(use_case)
    pre = preprocessing_from_prepared(prepared)
    text = pre.to_json()
    back = Preprocessing.from_json(text)
    assert back == pre
    assert back.to_dict() == json.loads(text)
    np.testing.assert_array_equal(back.normalization.x_std, prepared.normalization.x_std)
    assert back.input_shape == prepared.input_shape
    assert back.feature_names == prepared.feature_names
    assert back != replace(pre, normalization=replace(pre.normalization, y_mean=-1.0))


def test_encode_matches_prepare_for_the_tabular_encoder(sessions, energy):
    pre = preprocessing_from_prepared(energy)
    encoded = pre.encode(sessions)
    assert len(encoded) == len(sessions)  # every Dundee session has an energy
    assert encoded.x.dtype == np.float32 and encoded.y.dtype == np.float64
    _, test = random_split(len(sessions), energy.use_case.train_ratio, energy.use_case.seed)
    np.testing.assert_array_equal(encoded.x[test], energy.x_test)
    np.testing.assert_array_equal(encoded.y[test], energy.y_test)


def test_encode_matches_prepare_for_the_sequence_encoder(sessions, occupancy):
    pre = preprocessing_from_prepared(occupancy)
    encoded = pre.encode(sessions)
    assert encoded.x.shape[1:] == pre.input_shape == (8, len(pre.feature_names))
    assert len(sessions) - len(encoded) == occupancy.dropped_no_history
    times = sessions["start"].dt.tz_convert("UTC").to_numpy()
    _, test = time_split(times[encoded.rows], occupancy.use_case.train_ratio)
    np.testing.assert_array_equal(encoded.x[test], occupancy.x_test)
    np.testing.assert_array_equal(encoded.y[test], occupancy.y_test)


def test_encode_skips_sessions_without_target_and_keeps_frame_positions(sessions, energy):
    frame = sessions.head(200).copy()
    frame.index = frame.index + 1000  # positions, not labels
    frame.loc[frame.index[[3, 50]], "energy_kwh"] = np.nan
    encoded = preprocessing_from_prepared(energy).encode(frame)
    assert len(encoded) == 198
    assert 3 not in encoded.rows and 50 not in encoded.rows and 4 in encoded.rows
    np.testing.assert_array_equal(encoded.y, frame["energy_kwh"].to_numpy()[encoded.rows])


def test_windows_with_a_missing_history_value_are_dropped(sessions, occupancy):
    pre = preprocessing_from_prepared(occupancy)
    frame = sessions.copy()
    clean = pre.encode(frame)
    station = frame["station_id"].value_counts().index[0]
    first = frame.index[frame["station_id"] == station][20]
    frame.loc[first, "energy_kwh"] = np.nan  # history only: the target is occupancy
    encoded = pre.encode(frame)
    assert np.isfinite(encoded.x).all()
    assert len(clean) - 8 <= len(encoded) < len(clean)


def test_encoder_from_dict_dispatches_on_kind(energy, occupancy):
    assert isinstance(encoder_from_dict(energy.encoder), TabularEncoder)
    assert isinstance(encoder_from_dict(occupancy.encoder), SequenceEncoder)
    with pytest.raises(PreprocessingError, match=r"encoder.kind='image'"):
        encoder_from_dict({**energy.encoder, "kind": "image"})
    with pytest.raises(PreprocessingError, match=r"encoder.stations: required key is missing"):
        encoder_from_dict({k: v for k, v in energy.encoder.items() if k != "stations"})


def _bad(d: dict, **changes: object) -> str:
    return json.dumps({**d, **changes})


def test_bad_preprocessing_is_refused_with_the_field_named(energy, occupancy):
    good = preprocessing_from_prepared(energy).to_dict()
    norm = good["normalization"]
    cases = {
        "not json": "unreadable",
        "[1, 2]": "must be a dict",
        json.dumps({k: v for k, v in good.items() if k != "normalization"}): (
            "preprocessing.normalization: required key is missing"
        ),
        _bad(good, extra=1): "preprocessing.extra: unknown key",
        _bad(good, target="price"): "target='price'",
        _bad(good, normalization={**norm, "x_mean": norm["x_mean"][:-1]}): (
            f"normalization.x_mean: needs {len(norm['x_mean'])} finite values"
        ),
        _bad(good, normalization={**norm, "y_std": 0.0}): "y_std > 0",
        _bad(good, normalization={**norm, "x_std": "wide"}): "normalization",
        _bad(good, encoder={"kind": "tabular"}): "encoder.feature_set: required key is missing",
    }
    for text, message in cases.items():
        with pytest.raises(PreprocessingError, match=message):
            Preprocessing.from_json(text)
    seq = preprocessing_from_prepared(occupancy)
    with pytest.raises(PreprocessingError, match=r"encoder\.target='occupancy'"):
        Preprocessing("energy", seq.encoder, seq.normalization)


def test_a_normalization_of_another_width_is_refused(energy):
    pre = preprocessing_from_prepared(energy)
    n = len(pre.feature_names)
    narrow = Normalization(np.zeros(n - 1, np.float32), np.ones(n - 1, np.float32), 0.0, 1.0)
    with pytest.raises(PreprocessingError, match=f"needs {n} finite values"):
        Preprocessing("energy", pre.encoder, narrow)
