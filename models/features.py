"""Targets and tabular features known at plug-in time.

``paper`` is the FEDL paper's set (one-hot station id, weekday, hour); ``rich`` adds month,
charger model and connector, all known when a car plugs in. Vocabularies are fitted on
training sessions only; an unseen category encodes as all zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

TARGETS = ("energy", "occupancy", "charging_time")
FEATURE_SETS = ("paper", "rich")


class FeatureError(ValueError):
    """A target or feature set that this dataset cannot provide."""


def target_values(sessions: pd.DataFrame, target: str) -> np.ndarray:
    """Energy (kWh), occupancy = plug-in duration (h), or charging time (h)."""
    if target == "energy":
        y = sessions["energy_kwh"].to_numpy(np.float64)
    elif target == "occupancy":
        y = (sessions["end"] - sessions["start"]).dt.total_seconds().to_numpy(np.float64) / 3600
    elif target == "charging_time":
        y = sessions["charging_time_h"].to_numpy(np.float64)
        if np.isnan(y).all():
            raise FeatureError("target 'charging_time': this dataset records no charging time")
    else:
        raise FeatureError(f"target {target!r} is unknown; choose one of {', '.join(TARGETS)}")
    return y


def one_hot(values: np.ndarray, vocabulary: tuple[str, ...]) -> np.ndarray:
    lookup = {v: i for i, v in enumerate(vocabulary)}
    out = np.zeros((len(values), len(vocabulary)), dtype=np.float32)
    rows = [(r, lookup[v]) for r, v in enumerate(values) if v in lookup]
    if rows:
        r, c = np.asarray(rows).T
        out[r, c] = 1.0
    return out


def category_strings(column: pd.Series) -> np.ndarray:
    return column.astype("string").fillna("?").to_numpy(dtype=object)


@dataclass(frozen=True)
class TabularEncoder:
    feature_set: str
    stations: tuple[str, ...]
    charger_models: tuple[str, ...] = ()
    connectors: tuple[str, ...] = ()

    @classmethod
    def fit(cls, sessions: pd.DataFrame, feature_set: str = "paper") -> TabularEncoder:
        if feature_set not in FEATURE_SETS:
            raise FeatureError(
                f"feature set {feature_set!r} is unknown; choose one of {', '.join(FEATURE_SETS)}"
            )
        stations = tuple(sorted(set(category_strings(sessions["station_id"]))))
        if feature_set == "paper":
            return cls(feature_set, stations)
        models = tuple(sorted(set(category_strings(sessions["charger_model"]))))
        connectors = tuple(sorted(set(category_strings(sessions["connector"]))))
        return cls(feature_set, stations, models, connectors)

    @property
    def names(self) -> tuple[str, ...]:
        names = [f"station={s}" for s in self.stations]
        names += [f"weekday={d}" for d in range(7)] + [f"hour={h}" for h in range(24)]
        if self.feature_set == "rich":
            names += [f"month={m}" for m in range(1, 13)]
            names += [f"model={m}" for m in self.charger_models]
            names += [f"connector={c}" for c in self.connectors]
        return tuple(names)

    def transform(self, sessions: pd.DataFrame) -> np.ndarray:
        start = sessions["start"]
        parts = [
            one_hot(category_strings(sessions["station_id"]), self.stations),
            np.eye(7, dtype=np.float32)[start.dt.weekday.to_numpy()],
            np.eye(24, dtype=np.float32)[start.dt.hour.to_numpy()],
        ]
        if self.feature_set == "rich":
            parts += [
                np.eye(12, dtype=np.float32)[start.dt.month.to_numpy() - 1],
                one_hot(category_strings(sessions["charger_model"]), self.charger_models),
                one_hot(category_strings(sessions["connector"]), self.connectors),
            ]
        return np.concatenate(parts, axis=1)

    def to_dict(self) -> dict:
        return {
            "kind": "tabular",
            "feature_set": self.feature_set,
            "stations": list(self.stations),
            "charger_models": list(self.charger_models),
            "connectors": list(self.connectors),
        }

    @classmethod
    def from_dict(cls, d: dict) -> TabularEncoder:
        return cls(
            d["feature_set"],
            tuple(d["stations"]),
            tuple(d["charger_models"]),
            tuple(d["connectors"]),
        )
