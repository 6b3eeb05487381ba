"""What a car's own past sessions say about its next one, known when it plugs in.

The vehicle agent keeps the car's charging sessions (it uploads them to stations), so at plug-in
the car knows how much it charged before, wherever that was. Only sessions that *ended* by the
new session's start count: their energy is known then. Sessions without a vehicle id, or a
car's first session, have no history; an indicator column says so and the values read 0.

Pure functions over a sessions frame (``vehicle_id``, ``start``, ``end``, ``energy_kwh``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

HISTORY_COLUMNS = (
    "vehicle_last_kwh",
    "vehicle_mean5_kwh",
    "vehicle_mean_kwh",
    "vehicle_log_sessions",
    "vehicle_log_hours_since",
    "vehicle_has_history",
)


def _hours(times: pd.Series) -> np.ndarray:
    """Hours since the epoch, whatever the column's time unit (ns, us or s)."""
    epoch = pd.Timestamp(0, tz="UTC")
    return (times.dt.tz_convert("UTC") - epoch).dt.total_seconds().to_numpy() / 3600.0


def vehicle_history(sessions: pd.DataFrame) -> np.ndarray:
    """(n, 6) raw history features in ``HISTORY_COLUMNS`` order; rows without history are 0."""
    start, end = _hours(sessions["start"]), _hours(sessions["end"])
    energy = sessions["energy_kwh"].to_numpy(np.float64)
    ids = sessions["vehicle_id"]
    known = ids.notna().to_numpy()
    keys = ids.fillna("").astype(str).to_numpy()
    out = np.zeros((len(sessions), len(HISTORY_COLUMNS)))
    rows_of = pd.Series(np.flatnonzero(known)).groupby(keys[known]).agg(list)
    for rows in rows_of:
        rows = np.asarray(rows)
        order = rows[np.argsort(end[rows], kind="stable")]
        ends = end[order]
        sums = np.concatenate([[0.0], np.cumsum(energy[order])])
        seen = np.searchsorted(ends, start[rows], side="right")  # ended by my start
        has = seen > 0
        last5 = np.maximum(seen - 5, 0)
        prev = np.maximum(seen - 1, 0)
        out[rows, 0] = np.where(has, energy[order][prev], 0.0)
        out[rows, 1] = np.where(has, (sums[seen] - sums[last5]) / np.maximum(seen - last5, 1), 0.0)
        out[rows, 2] = np.where(has, sums[seen] / np.maximum(seen, 1), 0.0)
        out[rows, 3] = np.log1p(seen)
        gap = np.maximum(start[rows] - ends[prev], 0.0)
        out[rows, 4] = np.where(has, np.log1p(gap), 0.0)
        out[rows, 5] = has
    return out


@dataclass(frozen=True)
class HistoryScale:
    """Standardisation of the history columns, fitted on training rows that have history;
    rows without history stay 0 (the mean) with the indicator 0."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, history: np.ndarray) -> HistoryScale:
        has = history[:, -1] > 0
        values = history[has, :-1] if has.any() else np.zeros((1, history.shape[1] - 1))
        return cls(values.mean(axis=0), np.maximum(values.std(axis=0), 1e-6))

    def transform(self, history: np.ndarray) -> np.ndarray:
        has = history[:, -1:] > 0
        scaled = np.where(has, (history[:, :-1] - self.mean) / self.std, 0.0)
        return np.concatenate([scaled, has], axis=1).astype(np.float32)
