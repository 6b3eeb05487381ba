"""Sequence windows for the LSTM use case: the previous k sessions at the same station.

Only sessions that had *ended* before the query session started are history (their duration
and energy are known then); a session with fewer than k such predecessors is not used.
Each step holds one past session (its target value, duration, energy, hours since it ended,
its start time on the clock and the week) and, broadcast to every step, what is known of the
query session at plug-in (time of day, weekday, month, charger model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.features import category_strings, one_hot, target_values

HISTORY_FEATURES = (
    "past_target",
    "duration_h",
    "energy_kwh",
    "log1p_gap_h",
    "hour_sin",
    "hour_cos",
    "weekday_sin",
    "weekday_cos",
)
QUERY_FEATURES = (
    "q_hour_sin",
    "q_hour_cos",
    "q_weekday_sin",
    "q_weekday_cos",
    "q_month_sin",
    "q_month_cos",
)
SCALED = ("past_target", "duration_h", "energy_kwh", "log1p_gap_h")


def _cyclic(values: np.ndarray, period: float) -> tuple[np.ndarray, np.ndarray]:
    angle = 2 * np.pi * values / period
    return np.sin(angle), np.cos(angle)


def _clock(times: pd.Series) -> tuple[np.ndarray, ...]:
    hour = times.dt.hour.to_numpy() + times.dt.minute.to_numpy() / 60.0
    return (*_cyclic(hour, 24.0), *_cyclic(times.dt.weekday.to_numpy(), 7.0))


def _seconds(times: pd.Series) -> np.ndarray:
    return (
        times.dt.tz_convert("UTC")
        .dt.tz_localize(None)
        .astype("datetime64[s]")
        .astype(np.int64)
        .to_numpy()
    )


@dataclass(frozen=True)
class SequenceEncoder:
    target: str
    k: int
    charger_models: tuple[str, ...]

    @classmethod
    def fit(cls, sessions: pd.DataFrame, target: str, k: int = 8) -> SequenceEncoder:
        if k < 1:
            raise ValueError(f"k={k}: a window needs at least one past session")
        return cls(target, k, tuple(sorted(set(category_strings(sessions["charger_model"])))))

    @property
    def names(self) -> tuple[str, ...]:
        return HISTORY_FEATURES + QUERY_FEATURES + tuple(f"model={m}" for m in self.charger_models)

    @property
    def scaled(self) -> np.ndarray:
        return np.array([n in SCALED for n in self.names])

    def transform(self, sessions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Return windows (m, k, features) and the row positions (m,) they predict."""
        start, end = _seconds(sessions["start"]), _seconds(sessions["end"])
        duration_h = (end - start) / 3600.0
        history = np.column_stack(
            [
                target_values(sessions, self.target),
                duration_h,
                sessions["energy_kwh"].to_numpy(np.float64),
                *_clock(sessions["start"]),
            ]
        )
        month = sessions["start"].dt.month.to_numpy() - 1
        query = np.column_stack(
            [
                *_clock(sessions["start"]),
                *_cyclic(month, 12.0),
                one_hot(category_strings(sessions["charger_model"]), self.charger_models),
            ]
        )
        stations = category_strings(sessions["station_id"])
        windows, targets = [], []
        steps = np.arange(self.k)
        for station in np.unique(stations):
            rows = np.flatnonzero(stations == station)
            order = rows[np.argsort(end[rows], kind="stable")]
            # strictly earlier ends: a session is never its own history
            count = np.searchsorted(end[order], start[rows], side="left")
            ok = count >= self.k
            if not ok.any():
                continue
            past = order[count[ok, None] - self.k + steps]  # (m, k) oldest -> newest
            query_rows = rows[ok]
            gap_h = np.maximum(start[query_rows, None] - end[past], 0) / 3600.0
            win = np.concatenate(
                [
                    history[past][..., :3],
                    np.log1p(gap_h)[..., None],
                    history[past][..., 3:],
                    np.repeat(query[query_rows][:, None, :], self.k, axis=1),
                ],
                axis=2,
            )
            windows.append(win)
            targets.append(query_rows)
        if not windows:
            return np.zeros((0, self.k, len(self.names)), np.float32), np.zeros(0, np.int64)
        rows_out = np.concatenate(targets)
        order = np.argsort(rows_out, kind="stable")
        return np.concatenate(windows)[order].astype(np.float32), rows_out[order]

    def to_dict(self) -> dict:
        return {
            "kind": "sequence",
            "target": self.target,
            "k": self.k,
            "charger_models": list(self.charger_models),
        }

    @classmethod
    def from_dict(cls, d: dict) -> SequenceEncoder:
        return cls(d["target"], int(d["k"]), tuple(d["charger_models"]))
