"""The one place that decides whether an exit is confident enough to answer.

An exit answers when its predicted standard deviation (target units) is at or below its
threshold; the last exit always answers. Thresholds are calibrated on validation data so that
the samples an early exit answers are predicted almost as well as the last exit would have
predicted them (``tolerance`` = allowed relative increase in MAE).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_ANSWERED = 30  # a threshold fitted on fewer samples is noise


@dataclass(frozen=True)
class ExitPolicy:
    thresholds: tuple[float, ...]  # one per early exit (edge, fog); +inf answers always

    def choose(self, stds: np.ndarray) -> np.ndarray:
        """(n, exits) predicted stds -> index of the first exit confident enough, per row."""
        stds = np.atleast_2d(stds)
        last = stds.shape[1] - 1
        confident = stds[:, :last] <= np.asarray(self.thresholds)[None, :]
        first = np.where(confident.any(axis=1), confident.argmax(axis=1), last)
        return first.astype(np.int64)

    def confident(self, exit_index: int, std: float) -> bool:
        return exit_index >= len(self.thresholds) or std <= self.thresholds[exit_index]

    def to_dict(self) -> dict:
        return {"thresholds": list(self.thresholds)}

    @classmethod
    def from_dict(cls, d: dict) -> ExitPolicy:
        return cls(tuple(float(t) for t in d["thresholds"]))


def calibrate(
    y: np.ndarray, means: np.ndarray, stds: np.ndarray, tolerance: float = 0.05
) -> ExitPolicy:
    """Largest threshold per early exit whose answered set stays within ``tolerance`` of the
    last exit's MAE on the same samples (means, stds: (n, exits), target units)."""
    y = np.asarray(y, np.float64).ravel()
    last_err = np.abs(means[:, -1] - y)
    thresholds = []
    for k in range(means.shape[1] - 1):
        order = np.argsort(stds[:, k], kind="stable")
        err = np.cumsum(np.abs(means[order, k] - y[order]))
        ref = np.cumsum(last_err[order])
        ok = err <= (1.0 + tolerance) * ref
        ok[: MIN_ANSWERED - 1] = False
        idx = np.flatnonzero(ok)
        thresholds.append(float(stds[order[idx[-1]], k]) if idx.size else float("-inf"))
    return ExitPolicy(tuple(thresholds))
