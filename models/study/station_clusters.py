"""K balanced clusters of charging stations by latitude/longitude (the FEDL paper's clustering).

The solver is ``k-means-constrained`` (min-cost-flow k-means with cluster size bounds). A
station without coordinates cannot be placed by geography; rather than dropping its sessions
it joins the cluster with the fewest stations, and the caller reports how many did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd


class ClusteringError(ValueError):
    """Too few located stations for the requested number of clusters."""


@dataclass(frozen=True)
class StationClusters:
    labels: dict[str, int]  # station_id -> cluster
    without_coordinates: tuple[str, ...]  # placed by size, not geography
    size_min: int  # bounds the solver enforced on the located stations
    size_max: int

    def sizes(self) -> tuple[int, ...]:
        k = max(self.labels.values(), default=-1) + 1
        counts = np.bincount(list(self.labels.values()), minlength=k)
        return tuple(int(c) for c in counts)

    def of(self, station_ids: np.ndarray) -> np.ndarray:
        """Cluster per row; -1 for a station the clustering never saw."""
        return np.array([self.labels.get(str(s), -1) for s in station_ids], dtype=np.int64)


def size_bounds(n: int, k: int, slack: float) -> tuple[int, int]:
    """Balanced bounds: each cluster holds n/k stations ± ``slack`` of n (at least feasible)."""
    size_min = max(1, math.floor(n / k - slack * n))
    size_max = min(n, math.ceil(n / k + slack * n))
    return size_min, size_max


def cluster_stations(
    locations: pd.DataFrame, k: int = 2, slack: float = 0.1, seed: int = 0
) -> StationClusters:
    """``locations``: index station_id, columns latitude and longitude (NaN when unknown)."""
    from k_means_constrained import KMeansConstrained

    has = locations["latitude"].notna() & locations["longitude"].notna()
    located, missing = locations[has], locations[~has]
    if len(located) < k:
        raise ClusteringError(f"{len(located)} stations have coordinates; need at least {k}")
    size_min, size_max = size_bounds(len(located), k, slack)
    solver = KMeansConstrained(
        n_clusters=k, size_min=size_min, size_max=size_max, random_state=seed, n_init=10
    )
    coords = located[["latitude", "longitude"]].to_numpy(np.float64)
    found = solver.fit_predict(coords)
    labels = {str(s): int(c) for s, c in zip(located.index, found, strict=True)}
    counts = np.bincount(found, minlength=k)
    for station in sorted(str(s) for s in missing.index):
        smallest = int(np.argmin(counts))
        labels[station] = smallest
        counts[smallest] += 1
    return StationClusters(labels, tuple(sorted(str(s) for s in missing.index)), size_min, size_max)


def station_locations(sessions: pd.DataFrame) -> pd.DataFrame:
    """One row per station with its (first known) coordinates."""
    frame = sessions[["station_id", "latitude", "longitude"]].copy()
    frame["station_id"] = frame["station_id"].astype("string").fillna("?").astype(str)
    return frame.groupby("station_id")[["latitude", "longitude"]].first()
