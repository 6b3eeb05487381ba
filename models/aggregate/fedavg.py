"""FedAvg (McMahan et al. 2017): the average of client weights, weighted by sample count.

The default strategy. Kafka-ML, which this project replaces, instead averaged each incoming
update 50/50 with the global model and ignored sample counts, so the last client to report
weighed as much as all earlier ones together and a client with ten examples as much as one
with ten thousand.

The average is computed in float64, one cache-sized tile at a time: for each slice of a layer,
up to `BLOCK_BYTES` of client slices are copied (widened to float64) into one tile that a
single BLAS vector-matrix product (`np.dot`) reduces. Every update is read from memory once,
nothing the size of N updates is ever allocated (the extra memory is the float64 result plus
one tile), and the Python loop runs once per tile, not once per client and element. The
previous version (multiply, then add, per client and whole layer) wrote and re-read a float64
temporary of the layer per client: ~2× slower at 10 updates × 10M parameters. `bench/aggregate.py`
measures it against Flower's `aggregate` and a one-pass float32 BLAS bound; what is left of the
gap to that bound is the float32 → float64 widening copy, the price of the float64 result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from models.aggregate.base import (
    AggregationError,
    ClientResult,
    NDArrays,
    Strategy,
    StrategyState,
)

# One tile of client slices, in float64: half of a 1 MiB L2, so the tile, the result slice
# and BLAS's own buffers stay in cache while the tile is reduced.
BLOCK_BYTES = 1 << 19
# Elements per slice of a layer: 128 KiB in float64; small layers are one slice, so one tile
# then holds many clients and the per-tile Python cost is paid rarely.
SLICE = 16384


def fedavg(results: Sequence[ClientResult]) -> NDArrays:
    """The sample-count weighted average of the results' weights, in float64.

    Raises `AggregationError` for no results, results of different shapes, or counts that
    sum to zero. Clients with zero examples are skipped (so a NaN they carry cannot leak in).
    """
    if not results:
        raise AggregationError("no client results to aggregate")
    shapes = _shapes(results[0].weights)
    for r in results[1:]:
        got = _shapes(r.weights)
        if got != shapes:
            raise AggregationError(
                f"client {r.client_id!r} has shapes {got}, "
                f"client {results[0].client_id!r} has {shapes}"
            )
    counts = np.array([r.num_examples for r in results], dtype=np.float64)
    total = float(counts.sum())
    if total <= 0:
        raise AggregationError("weights sum to zero: no client trained on any example")
    kept = [i for i, n in enumerate(counts) if n > 0]
    scale = counts[kept] / total
    return [
        weighted_layer([results[i].weights[layer] for i in kept], scale)
        for layer in range(len(shapes))
    ]


def _shapes(arrays: NDArrays) -> list[tuple[int, ...]]:
    return [a.shape if isinstance(a, np.ndarray) else np.shape(a) for a in arrays]


def weighted_layer(arrays: Sequence[np.ndarray], scale: np.ndarray) -> np.ndarray:
    """Σ scale[i]·arrays[i] in float64 for same-shaped arrays, tile by tile (see module doc)."""
    shape = np.shape(arrays[0])
    size = math.prod(shape)
    out = np.empty(size, dtype=np.float64)
    if size == 0:
        return out.reshape(shape)
    width = min(size, SLICE)
    group = max(1, min(len(arrays), BLOCK_BYTES // (8 * width)))
    block = np.empty(group * width, dtype=np.float64)
    partial = np.empty(width if group < len(arrays) else 0, dtype=np.float64)
    whole = size <= SLICE  # one slice: stack the arrays as they are, no flattening or slicing
    sources = arrays if whole else [np.asarray(a).ravel() for a in arrays]
    for start in range(0, size, width):
        stop = min(start + width, size)
        acc = out[start:stop]
        for first in range(0, len(sources), group):
            members = sources[first : first + group]
            k = len(members)
            flat = block[: k * (stop - start)]
            # concatenate, not stack: one C call, no per-array Python (expand_dims) for k arrays
            if not whole:
                np.concatenate([a[start:stop] for a in members], out=flat, casting="same_kind")
            elif shape:
                np.concatenate(members, out=flat.reshape(-1, *shape[1:]), casting="same_kind")
            else:  # 0-d arrays cannot be concatenated
                np.stack(members, out=flat, casting="same_kind")
            tile = flat.reshape(k, stop - start)
            weights = scale[first : first + k]
            if first == 0:
                np.dot(weights, tile, out=acc)
            else:
                part = partial[: stop - start]
                np.dot(weights, tile, out=part)
                acc += part
    return out.reshape(shape)


@dataclass(frozen=True, repr=False)
class FedAvg(Strategy):
    name: ClassVar[str] = "fedavg"
    summary: ClassVar[str] = "average of client weights weighted by num_examples"

    def _update(
        self, current: NDArrays, results: Sequence[ClientResult], state: StrategyState
    ) -> tuple[NDArrays, dict[str, NDArrays]]:
        return fedavg(results), {}
