"""FedAvg (McMahan et al. 2017): the average of client weights, weighted by sample count.

The default strategy. Kafka-ML, which this project replaces, instead averaged each incoming
update 50/50 with the global model and ignored sample counts, so the last client to report
weighed as much as all earlier ones together and a client with ten examples as much as one
with ten thousand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from models.aggregate.base import ClientResult, NDArrays, Strategy, StrategyState
from models.aggregate.numeric import weighted_average


def fedavg(results: Sequence[ClientResult]) -> NDArrays:
    """The sample-count weighted average of the results' weights, in float64."""
    return weighted_average([r.weights for r in results], [r.num_examples for r in results])


@dataclass(frozen=True, repr=False)
class FedAvg(Strategy):
    name: ClassVar[str] = "fedavg"
    summary: ClassVar[str] = "average of client weights weighted by num_examples"

    def _update(
        self, current: NDArrays, results: Sequence[ClientResult], state: StrategyState
    ) -> tuple[NDArrays, dict[str, NDArrays]]:
        return fedavg(results), {}
