"""The car's own charging history as features: only the past counts, and it is computed right."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.vehicle_history import HISTORY_COLUMNS, HistoryScale, vehicle_history


@pytest.fixture(scope="module")
def known(dundee) -> pd.DataFrame:
    """Real Dundee sessions of the three cars seen most often, plus real rows without an id."""
    s = dundee.sessions
    top = s["vehicle_id"].value_counts().index[:3]
    cars = s[s["vehicle_id"].isin(top)]
    anonymous = s[s["vehicle_id"].isna()].iloc[:50]
    return pd.concat([cars, anonymous]).sample(frac=1.0, random_state=0).reset_index(drop=True)


def _by_hand(frame: pd.DataFrame, row: int) -> list[float]:
    me = frame.iloc[row]
    same = frame[(frame["vehicle_id"] == me["vehicle_id"]) & (frame["end"] <= me["start"])]
    same = same.sort_values("end", kind="stable")
    energy = same["energy_kwh"].to_numpy()
    if len(energy) == 0:
        return [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    hours = (me["start"] - same["end"].iloc[-1]).total_seconds() / 3600
    return [
        energy[-1],
        energy[-5:].mean(),
        energy.mean(),
        np.log1p(len(energy)),
        np.log1p(max(hours, 0.0)),
        1.0,
    ]


def test_history_matches_a_by_hand_count_of_earlier_sessions(known):
    h = vehicle_history(known)
    assert h.shape == (len(known), len(HISTORY_COLUMNS))
    has_id = known["vehicle_id"].notna().to_numpy()
    for row in np.flatnonzero(has_id)[:60]:
        np.testing.assert_allclose(h[row], _by_hand(known, row), rtol=1e-9, atol=1e-9)
    assert (h[~has_id] == 0).all()  # no id: no history
    assert h[has_id, -1].sum() > 0.9 * has_id.sum()  # frequent cars mostly have a past


def test_history_never_reads_the_session_itself_or_the_future(known):
    """Changing a session's energy, or any later session's, leaves its features unchanged."""
    before = vehicle_history(known)
    row = int(np.flatnonzero(known["vehicle_id"].notna())[10])
    changed = known.copy()
    later = (changed["vehicle_id"] == changed.loc[row, "vehicle_id"]) & (
        changed["end"] > changed.loc[row, "start"]
    )
    changed.loc[later, "energy_kwh"] = 999.0
    after = vehicle_history(changed)
    np.testing.assert_array_equal(after[row], before[row])
    assert later[row]  # the session itself was among the changed rows


def test_scale_standardises_rows_with_history_and_zeroes_the_rest(known):
    h = vehicle_history(known)
    scale = HistoryScale.fit(h)
    z = scale.transform(h)
    has = h[:, -1] > 0
    assert z.dtype == np.float32 and z.shape == h.shape
    np.testing.assert_allclose(z[has, :-1].mean(axis=0), 0.0, atol=1e-5)
    assert (z[~has] == 0).all()
    np.testing.assert_array_equal(z[:, -1], has)
