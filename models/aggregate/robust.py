"""Byzantine-robust aggregation (Yin et al. 2018): per-coordinate median and trimmed mean.

Both are unweighted: weighting by self-reported sample counts would let one client claim a
huge count and take over the round, which is what these strategies exist to prevent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from models.aggregate.base import (
    ClientResult,
    NDArrays,
    Strategy,
    StrategyConfigError,
    StrategyState,
)
from models.aggregate.numeric import coordinatewise_median, trimmed_mean


@dataclass(frozen=True, repr=False)
class Median(Strategy):
    name: ClassVar[str] = "median"
    summary: ClassVar[str] = "unweighted coordinate-wise median of client weights"

    def _update(
        self, current: NDArrays, results: Sequence[ClientResult], state: StrategyState
    ) -> tuple[NDArrays, dict[str, NDArrays]]:
        return coordinatewise_median([r.weights for r in results]), {}


@dataclass(frozen=True, repr=False)
class TrimmedMean(Strategy):
    """Drops floor(beta·n) clients from each end per coordinate; beta=0 is the plain mean."""

    beta: float = 0.1

    name: ClassVar[str] = "trimmed_mean"
    summary: ClassVar[str] = "unweighted coordinate-wise mean after trimming beta from each end"

    def __post_init__(self) -> None:
        if not 0 <= self.beta < 0.5:
            raise StrategyConfigError(f"trimmed_mean: beta must be in [0, 0.5), got {self.beta}")

    def _update(
        self, current: NDArrays, results: Sequence[ClientResult], state: StrategyState
    ) -> tuple[NDArrays, dict[str, NDArrays]]:
        return trimmed_mean([r.weights for r in results], self.beta), {}
