"""Synchronous federated rounds simulated in one process, aggregated by ``models.aggregate``.

Every round each client starts from the global weights, trains locally and reports its
weights and sample count; the strategy (FedAvg, FedAvgM, FedAdam — the coordinator's own
functions) combines them. Optional personalization keeps rows of one weight matrix local:
with one-hot station inputs, row ``s`` of the first kernel is only ever trained by station
``s``, so averaging it with 66 untouched copies shrinks its update by ``n_s / N`` every round
— the main reason plain per-station FedAvg drifts away from centralized training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from models.aggregate import ClientResult, Strategy
from models.splits import by_station

NDArrays = list[np.ndarray]


@dataclass(frozen=True)
class Client:
    client_id: str
    x: np.ndarray
    z: np.ndarray  # target as the model learns it (standardised)

    @property
    def num_examples(self) -> int:
        return len(self.z)


@dataclass(frozen=True)
class PersonalRows:
    """Rows of ``weights[array_index]`` that belong to one client and are never averaged."""

    array_index: int
    rows: Mapping[str, np.ndarray]  # client_id -> row indices it owns


# (global weights, client, round index) -> the client's locally trained weights
LocalTrainer = Callable[[NDArrays, Client, int], NDArrays]


def iid_clients(x: np.ndarray, z: np.ndarray, count: int, seed: int) -> list[Client]:
    """The paper's FEDL partition: the training set split into ``count`` random equal subsets."""
    order = np.random.default_rng(seed).permutation(len(z))
    return [
        Client(f"subset-{i}", x[part], z[part])
        for i, part in enumerate(np.array_split(order, count))
    ]


def station_clients(x: np.ndarray, z: np.ndarray, stations: np.ndarray) -> list[Client]:
    """One client per charging station: what evfl really runs."""
    groups = by_station(np.asarray(stations, dtype=object), np.arange(len(z)))
    return [Client(s, x[rows], z[rows]) for s, rows in groups.items()]


def station_rows(clients: Sequence[Client], feature_names: Sequence[str]) -> dict[str, np.ndarray]:
    """For each station client, the index of its ``station=<id>`` one-hot input feature."""
    index = {name: i for i, name in enumerate(feature_names)}
    out: dict[str, np.ndarray] = {}
    for c in clients:
        i = index.get(f"station={c.client_id}")
        if i is not None:
            out[c.client_id] = np.array([i])
    return out


def merge_personal(
    aggregated: NDArrays, results: Sequence[ClientResult], personal: PersonalRows
) -> NDArrays:
    """The aggregate with each owner's own rows put back, unaveraged."""
    out = [np.array(a, copy=True) for a in aggregated]
    target = out[personal.array_index]
    for r in results:
        rows = personal.rows.get(r.client_id)
        if rows is not None:
            target[rows] = r.weights[personal.array_index][rows]
    return out


def run_rounds(
    initial: NDArrays,
    clients: Sequence[Client],
    local_train: LocalTrainer,
    strategy: Strategy,
    rounds: int,
    personal: PersonalRows | None = None,
) -> NDArrays:
    """``rounds`` synchronous rounds with every client taking part; the final global weights."""
    weights = [np.array(w, copy=True) for w in initial]
    state = strategy.initial_state()
    active = [c for c in clients if c.num_examples > 0]
    for round_index in range(rounds):
        results = [
            ClientResult(c.client_id, local_train(weights, c, round_index), c.num_examples)
            for c in active
        ]
        weights, state = strategy.aggregate(weights, results, state)
        if personal is not None:
            weights = merge_personal(weights, results, personal)
    return weights
