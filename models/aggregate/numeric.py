"""Numeric helpers every strategy shares: pure functions over lists of numpy arrays.

All results are float64; strategies cast back to the model's dtypes. The benchmark runs 200
clients × 10M parameters, so nothing here holds all clients of all layers at once: averages
accumulate layer by layer, and the order statistics stack one layer at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from models.aggregate.base import AggregationError, NDArrays


def _check_consistent(clients: Sequence[NDArrays]) -> None:
    if not clients:
        raise AggregationError("no client arrays to combine")
    shapes = [np.shape(a) for a in clients[0]]
    for i, arrays in enumerate(clients[1:], start=1):
        got = [np.shape(a) for a in arrays]
        if got != shapes:
            raise AggregationError(f"client #{i} has shapes {got}, client #0 has {shapes}")


def weighted_average(clients: Sequence[NDArrays], weights: Sequence[float]) -> NDArrays:
    """Per-array average of `clients` with non-negative `weights` (normalised to sum 1)."""
    _check_consistent(clients)
    if len(weights) != len(clients):
        raise AggregationError(f"{len(weights)} weights for {len(clients)} clients")
    w = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise AggregationError(f"weights must be finite and >= 0, got {weights}")
    total = float(w.sum())
    if total <= 0:
        raise AggregationError("weights sum to zero: no client trained on any example")
    out: NDArrays = []
    for layer in range(len(clients[0])):
        acc = np.zeros(np.shape(clients[0][layer]), dtype=np.float64)
        for arrays, wi in zip(clients, w, strict=True):
            if wi:
                acc += np.multiply(arrays[layer], wi / total, dtype=np.float64)
        out.append(acc)
    return out


def coordinatewise_median(clients: Sequence[NDArrays]) -> NDArrays:
    """Unweighted per-coordinate median (Yin et al. 2018): one client cannot move it far."""
    _check_consistent(clients)
    return [
        np.median(np.stack([c[layer] for c in clients], dtype=np.float64), axis=0)
        for layer in range(len(clients[0]))
    ]


def trimmed_mean(clients: Sequence[NDArrays], beta: float) -> NDArrays:
    """Per-coordinate mean after dropping the floor(beta·n) lowest and highest values."""
    _check_consistent(clients)
    n = len(clients)
    if not beta >= 0:
        raise AggregationError(f"trimmed mean needs beta >= 0, got beta={beta}")
    cut = math.floor(beta * n)
    if n - 2 * cut < 1:
        raise AggregationError(
            f"beta={beta} trims {cut} of {n} clients from each end, leaving none; use beta < 0.5"
        )
    out: NDArrays = []
    for layer in range(len(clients[0])):
        stacked = np.stack([c[layer] for c in clients], dtype=np.float64)
        if cut:
            stacked = np.partition(stacked, (cut, n - cut - 1), axis=0)[cut : n - cut]
        out.append(stacked.mean(axis=0))
    return out


def delta(a: NDArrays, b: NDArrays) -> NDArrays:
    """`a - b` per array, in float64 (e.g. a client's update relative to the global weights)."""
    if [np.shape(x) for x in a] != [np.shape(y) for y in b]:
        raise AggregationError(
            f"shapes differ: {[np.shape(x) for x in a]} vs {[np.shape(y) for y in b]}"
        )
    return [np.subtract(x, y, dtype=np.float64) for x, y in zip(a, b, strict=True)]


def global_norm(arrays: NDArrays) -> float:
    """L2 norm of all arrays taken together, as if concatenated into one vector."""
    total = 0.0
    for arr in arrays:
        flat = np.asarray(arr, dtype=np.float64).ravel()
        total += float(flat @ flat)
    return math.sqrt(total)
