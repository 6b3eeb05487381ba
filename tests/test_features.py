"""Targets, tabular encoders and LSTM windows on real sessions."""

from __future__ import annotations

import numpy as np
import pytest

from models.features import FeatureError, TabularEncoder, target_values
from models.sequences import HISTORY_FEATURES, SequenceEncoder


def test_paper_features_are_station_weekday_hour_one_hots(dundee):
    s = dundee.sessions.head(2000)
    enc = TabularEncoder.fit(s, "paper")
    x = enc.transform(s)
    assert x.shape == (2000, len(enc.stations) + 7 + 24)
    assert (x.sum(axis=1) == 3).all()  # exactly one station, one weekday, one hour
    row = s.iloc[0]
    names = np.array(enc.names)[x[0] == 1]
    assert set(names) == {
        f"station={row['station_id']}",
        f"weekday={row['start'].weekday()}",
        f"hour={row['start'].hour}",
    }


def test_unseen_station_encodes_as_zeros(dundee):
    s = dundee.sessions
    enc = TabularEncoder.fit(s.head(100), "paper")
    unseen = s[~s["station_id"].isin(enc.stations)].head(5)
    x = enc.transform(unseen)
    assert (x[:, : len(enc.stations)] == 0).all()


def test_rich_features_add_month_model_connector(dundee):
    s = dundee.sessions.head(3000)
    enc = TabularEncoder.fit(s, "rich")
    x = enc.transform(s)
    assert x.shape[1] == len(enc.names) > len(TabularEncoder.fit(s, "paper").names)
    assert (x.sum(axis=1) == 6).all()


def test_encoder_round_trips_through_its_dict(dundee):
    enc = TabularEncoder.fit(dundee.sessions.head(500), "rich")
    assert TabularEncoder.from_dict(enc.to_dict()) == enc


def test_targets(dundee):
    s = dundee.sessions.head(50)
    hours = target_values(s, "occupancy")
    assert hours == pytest.approx((s["end"] - s["start"]).dt.total_seconds() / 3600)
    assert (target_values(s, "energy") == s["energy_kwh"]).all()
    with pytest.raises(FeatureError, match="no charging time"):
        target_values(s, "charging_time")
    with pytest.raises(FeatureError, match="unknown"):
        target_values(s, "price")


def test_windows_hold_only_sessions_that_ended_before_plug_in(perth):
    s = perth.sessions.head(4000).reset_index(drop=True)
    enc = SequenceEncoder.fit(s, "occupancy", k=4)
    x, rows = enc.transform(s)
    assert x.shape[1:] == (4, len(enc.names)) and len(rows) == len(x) > 3000
    duration = HISTORY_FEATURES.index("duration_h")
    for i in np.random.default_rng(0).choice(len(rows), 25, replace=False):
        q = s.iloc[rows[i]]
        same = s[(s["station_id"] == q["station_id"]) & (s["end"] < q["start"])]
        expected = same.sort_values("end", kind="stable").tail(4)
        hours = (expected["end"] - expected["start"]).dt.total_seconds() / 3600
        np.testing.assert_allclose(x[i, :, duration], hours.to_numpy(), atol=1e-5)
    # the query's own duration never leaks into its window (past_target is history only)
    assert not np.allclose(x[:, -1, 0], target_values(s, "occupancy")[rows])
