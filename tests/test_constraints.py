"""A station's data-compatibility check names the first thing that stops a round."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from models.constraints import (
    Compatibility,
    ConstraintsError,
    DataConstraints,
    check_compatibility,
    constraints_for,
    feature_specs,
    window_mask,
)
from models.features import TabularEncoder
from models.normalization import Normalization
from models.preprocessing import Encoded, Preprocessing, preprocessing_from_prepared
from models.use_cases import UseCase, prepare

N_SESSIONS = 3000
WATERMARK = 2000


@pytest.fixture(scope="module")
def fitted(dundee):
    return dundee.sessions.head(N_SESSIONS).reset_index(drop=True)


@pytest.fixture(scope="module")
def energy(fitted):
    return preprocessing_from_prepared(prepare(fitted, UseCase.default("dundee", "energy")))


@pytest.fixture(scope="module")
def occupancy(fitted):
    return preprocessing_from_prepared(prepare(fitted, UseCase.default("dundee", "occupancy")))


def station_frame(dundee, station: str | None = None, n: int = 3000) -> pd.DataFrame:
    """A station's store: its sessions in insertion order with the store's seq column."""
    s = dundee.sessions
    station = station or s["station_id"].value_counts().index[0]
    frame = s[s["station_id"] == station].head(n).reset_index(drop=True)
    frame["seq"] = np.arange(1, len(frame) + 1, dtype=np.int64)
    return frame


@pytest.fixture(scope="module")
def busiest(dundee):
    return station_frame(dundee)


def check(constraints, pre, frame, watermark=WATERMARK, encoded=None) -> Compatibility:
    return check_compatibility(constraints, pre, encoded, frame, watermark=watermark)


def test_compatible_sessions_report_new_and_replay_rows(energy, busiest):
    constraints = constraints_for(energy, min_samples=50)
    result = check(constraints, energy, busiest, encoded=energy.encode(busiest))
    assert result == Compatibility(True, "compatible: 1000 new rows (+2000 older for replay)", 1000)
    assert check(constraints, energy, busiest) == result  # encodes by itself when not given
    everything = check_compatibility(constraints, energy, None, busiest)  # no watermark
    assert everything.ok and everything.usable_rows == len(busiest)


def test_target_not_computable_from_local_sessions(energy, busiest):
    occupancy_tab = replace(energy, target="occupancy")
    no_end = busiest.drop(columns="end")
    result = check(constraints_for(occupancy_tab, 50), occupancy_tab, no_end)
    assert not result.ok and result.usable_rows == 0
    assert (
        result.reason == "target 'occupancy' not computable from local sessions (no column 'end')"
    )
    charging = replace(energy, target="charging_time")
    result = check(constraints_for(charging, 50), charging, busiest)
    assert result.reason == (
        "target 'charging_time' not computable from local sessions"
        " (this dataset records no charging time)"
    )
    other = check(constraints_for(charging, 50), energy, busiest)
    assert other.reason == (
        "target differs: the model predicts 'charging_time', the preprocessing encodes 'energy'"
    )


def test_feature_schema_differences_are_spelled_out(dundee, energy, occupancy, busiest):
    # The station still holds a preprocessing fitted on fewer stations (an older version).
    old_enc = TabularEncoder.fit(dundee.sessions.head(300), "paper")
    x = old_enc.transform(dundee.sessions.head(300))
    old = Preprocessing(
        "energy",
        old_enc.to_dict(),
        Normalization.fit(x, dundee.sessions.head(300)["energy_kwh"].to_numpy()),
    )
    n, m = len(energy.feature_names), len(old.feature_names)
    assert m < n
    result = check(constraints_for(energy, 50), old, busiest)
    assert result.reason == (
        f"feature schema differs: model expects {n} features ending with 'hour=23', "
        f"preprocessing produces {m} ending with 'hour=23'"
    )
    specs = list(feature_specs(energy))
    specs[0], specs[1] = specs[1], specs[0]
    swapped = replace(constraints_for(energy, 50), features=tuple(specs))
    assert check(swapped, energy, busiest).reason == (
        f"feature schema differs: feature 0 is {specs[0].name!r} in the model, "
        f"{specs[1].name!r} in the preprocessing"
    )
    short = replace(occupancy, encoder={**occupancy.encoder, "k": 4})
    assert check(constraints_for(occupancy, 50), short, busiest).reason == (
        "feature schema differs: feature 'past_target' is float32 shape (8,) in the model, "
        "float32 shape (4,) in the preprocessing"
    )


def test_empty_window_and_old_only_window(energy, busiest):
    later = constraints_for(energy, 50, datetime(2019, 1, 1), datetime(2019, 2, 1))
    result = check(later, energy, busiest)
    assert result == Compatibility(False, "no sessions inside the window 2019-01-01..2019-02-01", 0)
    first_day = busiest["start"].iloc[0].normalize().tz_localize(None).to_pydatetime()
    early = constraints_for(energy, 50, first_day, None)  # open end
    assert check(early, energy, busiest).ok
    old_only = constraints_for(energy, 50, window_end=busiest["start"].iloc[100].to_pydatetime())
    result = check(old_only, energy, busiest)
    assert not result.ok
    assert result.reason.startswith("only 0 new usable sessions inside the window ..2017-")
    assert result.reason.endswith(", round needs 50")


def test_too_few_new_sessions(energy, occupancy, dundee, busiest):
    result = check(constraints_for(energy, 50), energy, busiest, watermark=len(busiest) - 12)
    assert result == Compatibility(False, "only 12 new usable sessions, round needs 50", 12)
    # LSTM: a young station's first sessions have no history of 8 ended sessions yet
    young = busiest.head(15)
    result = check(constraints_for(occupancy, 5), occupancy, young, watermark=0)
    assert result == Compatibility(True, "compatible: 7 new rows (+0 older for replay)", 7)
    result = check(constraints_for(occupancy, 50), occupancy, young, watermark=0)
    assert result.reason == (
        "only 7 new usable sessions, round needs 50 (15 new sessions stored; 8 lack a target"
        " value or 8 earlier ended sessions at their station)"
    )


def test_station_outside_the_vocabulary(energy, dundee):
    vocabulary = set(TabularEncoder.from_dict(energy.encoder).stations)
    newcomer = next(
        s for s in dundee.sessions["station_id"].value_counts().index if s not in vocabulary
    )
    frame = station_frame(dundee, newcomer, n=200)
    result = check(constraints_for(energy, 10), energy, frame, watermark=100)
    assert result == Compatibility(
        False,
        f"station {newcomer!r} not in the model's station vocabulary "
        "(its rows would encode as all-zero station one-hots)",
        0,
    )


def test_missing_seq_column_and_inconsistent_encoding(energy, busiest):
    constraints = constraints_for(energy, 50)
    result = check(constraints, energy, busiest.drop(columns="seq"))
    assert not result.ok and "no 'seq' column" in result.reason
    encoded = energy.encode(busiest)
    clipped = Encoded(encoded.x[:, :-1], encoded.y, encoded.rows)
    result = check(constraints, energy, busiest, encoded=clipped)
    assert result.reason.startswith("encoded rows do not fit the preprocessing")
    beyond = Encoded(encoded.x, encoded.y, encoded.rows + 10)
    assert check(constraints, energy, busiest, encoded=beyond).reason == (
        f"encoded rows point outside the {len(busiest)} local sessions"
    )


@pytest.mark.filterwarnings("ignore::pandas.errors.PerformanceWarning")
def test_odd_data_is_reported_never_raised(energy, occupancy, busiest):
    constraints = constraints_for(energy, 50)
    no_seq = busiest.assign(seq=None)
    assert check(constraints, energy, no_seq).reason == "column 'seq' holds 3000 non-numeric values"
    empty = busiest.head(0)
    assert check(constraints, energy, empty).reason == "only 0 new usable sessions, round needs 50"
    texts = busiest.assign(start=busiest["start"].astype(str))
    result = check(constraints, energy, texts)
    assert not result.ok and result.reason.startswith("local sessions cannot be encoded")
    odd = (
        busiest.drop(columns="station_id"),
        busiest.assign(seq=None),
        busiest.assign(end=busiest["end"].astype(str), energy_kwh="many"),
        pd.DataFrame({"x": [1, 2]}),
    )
    for frame in odd:
        for pre in (energy, occupancy):
            result = check(constraints_for(pre, 50), pre, frame)
            assert isinstance(result, Compatibility) and not result.ok, result


def test_window_mask_takes_naive_times_as_utc(energy, busiest):
    t = busiest["start"].iloc[10]
    aware = constraints_for(energy, 1, t.to_pydatetime())
    naive = constraints_for(energy, 1, t.tz_convert("UTC").tz_localize(None).to_pydatetime())
    np.testing.assert_array_equal(window_mask(aware, busiest), window_mask(naive, busiest))
    assert window_mask(aware, busiest).sum() == len(busiest) - 10


def test_constraints_validate_and_round_trip(energy):
    start = datetime(2018, 1, 1, tzinfo=UTC)
    end = datetime(2018, 2, 1, 12, tzinfo=UTC)
    c = constraints_for(energy, 50, start, end)
    assert DataConstraints.from_dict(c.to_dict()) == c
    assert c.features[0].shape == () and c.target == "energy"
    with pytest.raises(ConstraintsError, match="start must be before end"):
        constraints_for(energy, 50, end, start)
    with pytest.raises(ConstraintsError, match="min_samples=-1"):
        constraints_for(energy, -1)
    with pytest.raises(ConstraintsError, match=r"constraints\.target: required key"):
        DataConstraints.from_dict({k: v for k, v in c.to_dict().items() if k != "target"})
