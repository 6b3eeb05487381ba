"""Server optimizers on the FedAvg pseudo-gradient (Reddi et al. 2021, "Adaptive Federated
Optimization"; FedAvgM from Hsu et al. 2019).

The pseudo-gradient is `current - fedavg(results)`: treating the averaged client change as a
gradient lets the server keep momentum or Adam moments across rounds, which damps the round-to-
round swings of non-IID clients (stations with different charging patterns). The state is kept
in float64 so tiny second moments do not underflow, and is returned as new arrays each round,
so a persisted-and-restored run continues exactly like an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from models.aggregate.base import (
    ClientResult,
    NDArrays,
    Strategy,
    StrategyConfigError,
    StrategyState,
    state_buffer,
)
from models.aggregate.fedavg import fedavg
from models.aggregate.numeric import delta


def pseudo_gradient(current: NDArrays, results: Sequence[ClientResult]) -> NDArrays:
    """`current - fedavg(results)` in float64: the step FedAvg would take, as a gradient."""
    return delta(current, fedavg(results))


@dataclass(frozen=True, repr=False)
class FedAvgM(Strategy):
    """`m = momentum·m + g; x = x - server_lr·m`; with momentum 0 and lr 1 this is FedAvg."""

    server_lr: float = 1.0
    momentum: float = 0.9

    name: ClassVar[str] = "fedavgm"
    summary: ClassVar[str] = "FedAvg with server momentum on the pseudo-gradient"

    def __post_init__(self) -> None:
        if not self.server_lr > 0:
            raise StrategyConfigError(f"fedavgm: server_lr must be > 0, got {self.server_lr}")
        if not 0 <= self.momentum < 1:
            raise StrategyConfigError(f"fedavgm: momentum must be in [0, 1), got {self.momentum}")

    def _update(
        self, current: NDArrays, results: Sequence[ClientResult], state: StrategyState
    ) -> tuple[NDArrays, dict[str, NDArrays]]:
        grad = pseudo_gradient(current, results)
        prev = state_buffer(state, "m", current, 0.0)
        m = [self.momentum * p + g for p, g in zip(prev, grad, strict=True)]
        new = [
            np.subtract(x, self.server_lr * mi, dtype=np.float64)
            for x, mi in zip(current, m, strict=True)
        ]
        return new, {"m": m}


@dataclass(frozen=True, repr=False)
class FedAdam(Strategy):
    """Adam on the pseudo-gradient, as in Reddi et al. Algorithm 2 (no bias correction).

    `tau` bounds the adaptivity: a step is at most `server_lr·|m|/tau`, so coordinates with
    tiny second moments cannot take huge steps. `v` starts at tau², as the paper requires.
    """

    server_lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    name: ClassVar[str] = "fedadam"
    summary: ClassVar[str] = "Adam on the pseudo-gradient (Reddi et al. 2021)"

    def __post_init__(self) -> None:
        if not self.server_lr > 0:
            raise StrategyConfigError(f"fedadam: server_lr must be > 0, got {self.server_lr}")
        for label, beta in (("beta1", self.beta1), ("beta2", self.beta2)):
            if not 0 <= beta < 1:
                raise StrategyConfigError(f"fedadam: {label} must be in [0, 1), got {beta}")
        if not self.tau > 0:
            raise StrategyConfigError(f"fedadam: tau must be > 0, got {self.tau}")

    def _update(
        self, current: NDArrays, results: Sequence[ClientResult], state: StrategyState
    ) -> tuple[NDArrays, dict[str, NDArrays]]:
        grad = pseudo_gradient(current, results)
        m_prev = state_buffer(state, "m", current, 0.0)
        v_prev = state_buffer(state, "v", current, self.tau**2)
        b1, b2 = self.beta1, self.beta2
        m = [b1 * mp + (1 - b1) * g for mp, g in zip(m_prev, grad, strict=True)]
        v = [b2 * vp + (1 - b2) * np.square(g) for vp, g in zip(v_prev, grad, strict=True)]
        new = [
            np.subtract(x, self.server_lr * mi / (np.sqrt(vi) + self.tau), dtype=np.float64)
            for x, mi, vi in zip(current, m, v, strict=True)
        ]
        return new, {"m": m, "v": v}
