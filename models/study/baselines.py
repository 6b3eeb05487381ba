"""The paper's six scikit-learn baselines plus HistGradientBoosting, on the paper's features.

All get the same inputs as the DNN: one-hot station, weekday and hour. HistGradientBoosting
instead reads the three as native categorical columns (the same information; trees split a
category set far better than 98 sparse dummies). SVR's kernel solver is quadratic in rows,
so it trains on a random subsample of ``svr_rows`` (documented in the study's output).
``HGB_RICH`` is the same booster on the rich features (plus month, charger model and
connector): the centralized baseline evfl's own federated model has to beat. ``HGB_VEHICLE``
adds the car's own charging history (``models.vehicle_history``), the extra information evfl's
model reads: it shows what a centralized booster makes of the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

HGB_RICH = "HGB, rich features"
HGB_VEHICLE = "HGB, rich + vehicle history"
BASELINES = ("KNR", "MLPR", "SGDR", "DT", "SVR", "RF", "HGB", HGB_RICH, HGB_VEHICLE)


@dataclass(frozen=True)
class BaselineInputs:
    x_train: np.ndarray  # one-hot paper features
    y_train: np.ndarray  # kWh
    x_test: np.ndarray
    codes_train: np.ndarray  # (n, 3) integer codes: station, weekday, hour (for HGB)
    codes_test: np.ndarray
    rich_codes_train: np.ndarray | None = None  # (n, 6): + month, charger model, connector
    rich_codes_test: np.ndarray | None = None
    history_train: np.ndarray | None = None  # (n, k) raw vehicle-history columns
    history_test: np.ndarray | None = None


def _estimator(name: str, seed: int):
    from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
    from sklearn.linear_model import SGDRegressor
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.neural_network import MLPRegressor
    from sklearn.svm import SVR
    from sklearn.tree import DecisionTreeRegressor

    factories: dict[str, Callable[[], object]] = {
        "KNR": lambda: KNeighborsRegressor(n_neighbors=10),
        "MLPR": lambda: MLPRegressor(
            hidden_layer_sizes=(64, 64),
            batch_size=256,
            max_iter=30,
            early_stopping=True,
            random_state=seed,
        ),
        "SGDR": lambda: SGDRegressor(random_state=seed),
        "DT": lambda: DecisionTreeRegressor(min_samples_leaf=20, random_state=seed),
        "SVR": lambda: SVR(C=10.0, epsilon=0.5),
        "RF": lambda: RandomForestRegressor(
            n_estimators=100, min_samples_leaf=5, max_features=0.33, random_state=seed
        ),
        "HGB": lambda: HistGradientBoostingRegressor(
            max_iter=300, learning_rate=0.05, categorical_features=[0, 1, 2], random_state=seed
        ),
        HGB_RICH: lambda: HistGradientBoostingRegressor(
            max_iter=300, learning_rate=0.05, categorical_features=list(range(6)), random_state=seed
        ),
        HGB_VEHICLE: lambda: HistGradientBoostingRegressor(
            max_iter=300, learning_rate=0.05, categorical_features=list(range(6)), random_state=seed
        ),
    }
    return factories[name]()


def fit_predict(name: str, data: BaselineInputs, seed: int, svr_rows: int) -> np.ndarray:
    """Test predictions (kWh) of baseline ``name`` trained on ``data``'s training rows."""
    model = _estimator(name, seed)
    x, y, x_test = data.x_train, data.y_train, data.x_test
    if name == "HGB":
        x, x_test = data.codes_train, data.codes_test
    if name in (HGB_RICH, HGB_VEHICLE):
        if data.rich_codes_train is None or data.rich_codes_test is None:
            raise ValueError(f"{name} needs rich_codes_train and rich_codes_test")
        x, x_test = data.rich_codes_train, data.rich_codes_test
    if name == HGB_VEHICLE:
        if data.history_train is None or data.history_test is None:
            raise ValueError(f"{HGB_VEHICLE} needs history_train and history_test")
        x = np.column_stack([x, data.history_train])
        x_test = np.column_stack([x_test, data.history_test])
    if name == "SVR" and len(y) > svr_rows:
        rows = np.random.default_rng(seed).choice(len(y), svr_rows, replace=False)
        x, y = x[rows], y[rows]
    model.fit(x, y)
    return np.asarray(model.predict(x_test), dtype=np.float64)
