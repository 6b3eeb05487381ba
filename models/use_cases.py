"""From a cleaned dataset to model-ready arrays for one use case.

A use case is a (dataset, target) pair with its model family: energy per session uses the
tabular MLP (FEDL paper features), occupancy and charging time use the partitioned LSTM over
the previous sessions at the station (Kafka-ML). Encoders and normalisation are fitted on the
training rows only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd

from models.features import FeatureError, TabularEncoder, target_values
from models.model_config import LayerSpec, ModelConfig
from models.normalization import Normalization
from models.sequences import SequenceEncoder
from models.splits import random_split, time_split

VALIDATION_SHARE = 0.1


@dataclass(frozen=True)
class UseCase:
    dataset: str
    target: str
    model: Literal["mlp", "lstm"] = "mlp"
    features: str = "paper"
    split: Literal["random", "time"] = "random"
    train_ratio: float = 0.8
    seed: int = 0
    window: int = 8

    @classmethod
    def default(cls, dataset: str, target: str, **overrides: object) -> UseCase:
        """Energy: MLP on a random split (FEDL); occupancy / charging time: LSTM, time split."""
        base = cls(dataset, target)
        if target in ("occupancy", "charging_time"):
            base = replace(base, model="lstm", split="time")
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class PreparedData:
    use_case: UseCase
    x_train: np.ndarray  # normalised
    y_train: np.ndarray  # target units
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    normalization: Normalization
    encoder: dict
    feature_names: tuple[str, ...]
    station_train: np.ndarray  # station id per training row (federated clients)
    baselines: dict[str, np.ndarray] = field(default_factory=dict)  # name -> test predictions
    dropped_no_history: int = 0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def default_model_config(use_case: UseCase, input_shape: tuple[int, ...]) -> ModelConfig:
    if use_case.model == "mlp":
        layers = (
            LayerSpec("dense", 64, "tanh"),
            LayerSpec("dense", 64, "tanh"),
            LayerSpec("dense", 64, "tanh", dropout=0.15),
        )
        return ModelConfig(input_shape, layers, (1, 2), learning_rate=0.003)
    layers = (
        LayerSpec("lstm", 16, "tanh"),
        LayerSpec("lstm", 32, "tanh"),
        LayerSpec("dense", 32, "tanh", dropout=0.1),
    )
    return ModelConfig(input_shape, layers, (1, 2), exit_hidden_units=16, learning_rate=0.003)


def _split(use_case: UseCase, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if use_case.split == "random":
        return random_split(len(times), use_case.train_ratio, use_case.seed)
    if use_case.split == "time":
        return time_split(times, use_case.train_ratio)
    raise FeatureError(f"split {use_case.split!r} is unknown; choose random or time")


def _validation(train: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    fit, val = random_split(len(train), 1.0 - VALIDATION_SHARE, seed + 1)
    return train[fit], train[val]


def prepare(sessions: pd.DataFrame, use_case: UseCase) -> PreparedData:
    y_all = target_values(sessions, use_case.target)
    known = ~np.isnan(y_all)
    sessions, y_all = sessions[known].reset_index(drop=True), y_all[known]
    times = sessions["start"].dt.tz_convert("UTC").to_numpy()
    stations = sessions["station_id"].astype("string").fillna("?").to_numpy(dtype=object)
    dropped = 0
    if use_case.model == "mlp":
        train, test = _split(use_case, times)
        encoder = TabularEncoder.fit(sessions.iloc[train], use_case.features)
        x_all, rows = encoder.transform(sessions), np.arange(len(sessions))
        scaled = None
        names = encoder.names
    else:
        # History may come from any earlier session; the encoder's vocabulary from training.
        seq_train, _ = _split(use_case, times)
        encoder = SequenceEncoder.fit(sessions.iloc[seq_train], use_case.target, use_case.window)
        x_all, rows = encoder.transform(sessions)
        dropped = len(sessions) - len(rows)
        train, test = _split(use_case, times[rows])
        scaled = encoder.scaled
        names = encoder.names
    y = y_all[rows]
    fit, val = _validation(train, use_case.seed)
    norm = Normalization.fit(x_all[fit], y[fit], scaled)
    baselines = {"training mean": np.full(len(test), float(np.mean(y[fit])))}
    if use_case.model == "lstm":
        baselines["persistence (last session)"] = x_all[test, -1, 0].astype(np.float64)
    return PreparedData(
        use_case=use_case,
        x_train=norm.transform_x(x_all[fit]),
        y_train=y[fit],
        x_val=norm.transform_x(x_all[val]),
        y_val=y[val],
        x_test=norm.transform_x(x_all[test]),
        y_test=y[test],
        normalization=norm,
        encoder=encoder.to_dict(),
        feature_names=tuple(names),
        station_train=stations[rows][fit],
        baselines=baselines,
        dropped_no_history=dropped,
    )
