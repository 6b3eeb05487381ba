"""Per-exit regression metrics in target units (pure numpy)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

Z_90 = 1.6448536269514722  # two-sided 90% interval of a Gaussian


@dataclass(frozen=True)
class ExitMetrics:
    n: int
    mse: float
    mae: float
    rmse: float
    coverage90: float  # share of targets inside mean ± 1.645·std; 0.90 when calibrated

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def exit_metrics(y: np.ndarray, mean: np.ndarray, std: np.ndarray | None = None) -> ExitMetrics:
    y, mean = np.asarray(y, np.float64).ravel(), np.asarray(mean, np.float64).ravel()
    if y.shape != mean.shape or y.size == 0:
        raise ValueError(f"metrics need equal, non-empty shapes; got {y.shape} and {mean.shape}")
    err = mean - y
    mse = float(np.mean(err**2))
    coverage = float("nan")
    if std is not None:
        coverage = float(np.mean(np.abs(err) <= Z_90 * np.asarray(std, np.float64).ravel()))
    return ExitMetrics(int(y.size), mse, float(np.mean(np.abs(err))), float(np.sqrt(mse)), coverage)
