"""Checks a coordinator runs on each client update before aggregating it.

Pure: each check raises an `UpdateRefused` subclass whose `.reason` is a stable code, so the
coordinator can log the offending client once and count refusals per reason in a metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from models.aggregate.base import ClientResult, NDArrays
from models.aggregate.numeric import delta, global_norm

# MAD × 1.4826 estimates σ for Gaussian data, so `k` reads as a z-score. Unscaled, k=5 would be
# ~3.4 σ and flag someone in ~8% of honest 10-client rounds (~2% scaled).
MAD_TO_SIGMA = 1.4826
# The scaled MAD is floored at this fraction of the median norm: when honest updates have
# (nearly) identical norms the MAD is ~0 and rounding noise alone would otherwise be flagged.
MAD_FLOOR = 1e-6


class UpdateRefused(ValueError):
    """A client update the coordinator must not aggregate."""

    reason: ClassVar[str] = "refused"

    def __init__(self, message: str, *, client_id: str | None = None) -> None:
        self.client_id = client_id
        prefix = f"client {client_id!r}: " if client_id is not None else ""
        super().__init__(f"{prefix}{message}")


class ShapeMismatchRefusal(UpdateRefused):
    """Wrong number of arrays, or an array whose shape or dtype kind differs from the model."""

    reason = "shape_mismatch"


class NonFiniteRefusal(UpdateRefused):
    """An update containing NaN or ±Inf, which would poison every coordinate it touches."""

    reason = "non_finite"


class NormOutlierRefusal(UpdateRefused):
    """For coordinators that refuse the ids `norm_outliers` returns, with a reason code."""

    reason = "norm_outlier"


def check_shapes(current: NDArrays, weights: NDArrays, *, client_id: str | None = None) -> None:
    """Same number of arrays, same shapes and dtype kinds (float32 for float64 is accepted)."""
    if len(weights) != len(current):
        raise ShapeMismatchRefusal(
            f"{len(weights)} arrays, the model has {len(current)}", client_id=client_id
        )
    for i, (got, ref) in enumerate(zip(weights, current, strict=True)):
        got_a, ref_a = np.asarray(got), np.asarray(ref)
        if got_a.shape != ref_a.shape:
            raise ShapeMismatchRefusal(
                f"array {i} has shape {got_a.shape}, the model {ref_a.shape}", client_id=client_id
            )
        if got_a.dtype.kind != ref_a.dtype.kind:
            raise ShapeMismatchRefusal(
                f"array {i} has dtype {got_a.dtype}, the model {ref_a.dtype}", client_id=client_id
            )


def check_finite(weights: NDArrays, *, client_id: str | None = None) -> None:
    for i, arr in enumerate(weights):
        a = np.asarray(arr)
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise NonFiniteRefusal(f"array {i} contains NaN or Inf", client_id=client_id)


def check_update(current: NDArrays, weights: NDArrays, *, client_id: str | None = None) -> None:
    """Shape and dtype checks first (cheap), then finiteness; raises an `UpdateRefused`."""
    check_shapes(current, weights, client_id=client_id)
    check_finite(weights, client_id=client_id)


def norm_outliers(
    current: NDArrays, results: Sequence[ClientResult], k: float = 5.0, min_clients: int = 4
) -> list[str]:
    """Ids of clients whose update norm ‖w − current‖ exceeds median + k·MAD of the round's.

    A robust z-score, with the MAD (median absolute deviation) scaled to σ by `MAD_TO_SIGMA`:
    median and MAD are not moved by the outliers they look for, unlike mean and std. Only
    large norms are flagged: scaled-up updates are the attack, while a small update only
    means little local training. With fewer than `min_clients` updates nothing is flagged:
    the median and MAD of two or three norms are set by single clients (with three, the MAD
    is the smaller of two gaps, so an honest but heterogeneous client is flagged whenever its
    gap is k times the other's). Results must have passed `check_update`.
    """
    if not results or len(results) < min_clients:
        return []
    norms = np.array([global_norm(delta(r.weights, current)) for r in results])
    median = float(np.median(norms))
    sigma = MAD_TO_SIGMA * float(np.median(np.abs(norms - median)))
    limit = median + k * max(sigma, MAD_FLOOR * median)
    return [r.client_id for r, n in zip(results, norms, strict=True) if n > limit]
