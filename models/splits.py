"""Train/test splits: random ratio (FEDL paper), time-ordered, and per-station clients."""

from __future__ import annotations

import numpy as np


def random_split(n: int, train_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < train_ratio < 1.0:
        raise ValueError(f"train_ratio={train_ratio}: must be between 0 and 1")
    order = np.random.default_rng(seed).permutation(n)
    cut = round(n * train_ratio)
    return np.sort(order[:cut]), np.sort(order[cut:])


def time_split(times: np.ndarray, train_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Train on the earliest ``train_ratio`` of sessions, test on the rest (no look-ahead)."""
    if not 0.0 < train_ratio < 1.0:
        raise ValueError(f"train_ratio={train_ratio}: must be between 0 and 1")
    order = np.argsort(np.asarray(times), kind="stable")
    cut = round(len(order) * train_ratio)
    return np.sort(order[:cut]), np.sort(order[cut:])


def by_station(station_ids: np.ndarray, indices: np.ndarray) -> dict[str, np.ndarray]:
    """One federated client per station: the given indices grouped by station id."""
    ids = np.asarray(station_ids)[indices]
    return {str(s): indices[ids == s] for s in np.unique(ids)}
