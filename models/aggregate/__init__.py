"""Federated aggregation strategies: pure numpy, no TensorFlow and no transport.

The coordinator picks a strategy by name (`make_strategy`), screens each update
(`screening`), then calls `Strategy.aggregate` once per round and persists the returned
`StrategyState` between rounds.
"""

from __future__ import annotations

from models.aggregate.base import (
    AggregationError,
    ClientResult,
    NDArrays,
    Strategy,
    StrategyConfigError,
    StrategyState,
    StrategyStateError,
)
from models.aggregate.fedavg import FedAvg, fedavg
from models.aggregate.fedopt import FedAdam, FedAvgM, pseudo_gradient
from models.aggregate.numeric import (
    coordinatewise_median,
    delta,
    global_norm,
    trimmed_mean,
    weighted_average,
)
from models.aggregate.robust import Median, TrimmedMean
from models.aggregate.screening import (
    NonFiniteRefusal,
    NormOutlierRefusal,
    ShapeMismatchRefusal,
    UpdateRefused,
    check_update,
    norm_outliers,
)

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FedAvg, FedAvgM, FedAdam, Median, TrimmedMean)
}
DEFAULT_STRATEGY = FedAvg.name


def make_strategy(name: str = DEFAULT_STRATEGY, **params: float | int | str) -> Strategy:
    """Build a strategy from config; values are coerced to float, so CLI strings work.

    Raises `StrategyConfigError` naming the valid choices for an unknown name or parameter.
    """
    cls = STRATEGIES.get(name.strip().lower())
    if cls is None:
        raise StrategyConfigError(
            f"unknown strategy {name!r}; choose one of {', '.join(sorted(STRATEGIES))}"
        )
    valid = cls.param_names()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        choices = ", ".join(valid) or "none"
        raise StrategyConfigError(f"{cls.name}: unknown parameter(s) {unknown}; valid: {choices}")
    coerced: dict[str, float] = {}
    for key, value in params.items():
        try:
            coerced[key] = float(value)
        except ValueError as exc:
            raise StrategyConfigError(f"{cls.name}: {key}={value!r} is not a number") from exc
    return cls(**coerced)


__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "AggregationError",
    "ClientResult",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "Median",
    "NDArrays",
    "NonFiniteRefusal",
    "NormOutlierRefusal",
    "ShapeMismatchRefusal",
    "Strategy",
    "StrategyConfigError",
    "StrategyState",
    "StrategyStateError",
    "TrimmedMean",
    "UpdateRefused",
    "check_update",
    "coordinatewise_median",
    "delta",
    "fedavg",
    "global_norm",
    "make_strategy",
    "norm_outliers",
    "pseudo_gradient",
    "trimmed_mean",
    "weighted_average",
]
