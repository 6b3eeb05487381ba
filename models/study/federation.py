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


@dataclass(frozen=True)
class RowUsage:
    """How often each client's inputs use each row of ``weights[array_index]`` (a first kernel).

    A one-hot input row gets no gradient on a client that never sees that category, so the
    client returns it unchanged; plain FedAvg then shrinks the real updates of the few clients
    that do see it by their share. Averaging each row only over its users (weighted by use)
    fixes that; a row used by one station alone is that station's personal row.
    """

    array_index: int
    counts: Mapping[str, np.ndarray]  # client_id -> (n_rows,) non-zero inputs per row

    @classmethod
    def of(cls, array_index: int, clients: Sequence[Client]) -> RowUsage:
        return cls(array_index, {c.client_id: (c.x != 0).sum(axis=0) for c in clients})


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


def rescale_row_updates(
    current: NDArrays, results: Sequence[ClientResult], usage: RowUsage
) -> list[ClientResult]:
    """Client results whose row updates are rescaled so that sample-weighted FedAvg of them
    averages each row over its users only (weighted by use).

    Row ``j`` of client ``c`` becomes ``g + (w - g) * (u_cj / n_c) * (N / U_j)``, with ``N``
    the total samples and ``U_j`` the row's total use. Rescaling the updates, not the result,
    lets any server optimizer (FedAvgM, FedAdam) run on the corrected pseudo-gradient.
    """
    base = np.asarray(current[usage.array_index], np.float64)
    total_n = float(sum(r.num_examples for r in results))
    total_use = np.zeros(base.shape[0], np.float64)
    for r in results:
        total_use += usage.counts.get(r.client_id, 0)
    out = []
    for r in results:
        use = usage.counts.get(r.client_id)
        if use is None or r.num_examples == 0:
            out.append(r)
            continue
        factor = np.divide(
            use * total_n,
            r.num_examples * total_use,
            out=np.zeros_like(total_use),
            where=total_use > 0,
        )
        w = np.asarray(r.weights[usage.array_index], np.float64)
        rows = (base + (w - base) * factor[:, None]).astype(r.weights[usage.array_index].dtype)
        weights = list(r.weights)
        weights[usage.array_index] = rows
        out.append(ClientResult(r.client_id, weights, r.num_examples))
    return out


def run_rounds(
    initial: NDArrays,
    clients: Sequence[Client],
    local_train: LocalTrainer,
    strategy: Strategy,
    rounds: int,
    personal: PersonalRows | None = None,
    row_usage: RowUsage | None = None,
    per_round: int | None = None,
    seed: int = 0,
) -> NDArrays:
    """``rounds`` synchronous rounds; the final global weights.

    Every client takes part, or ``per_round`` clients drawn uniformly without replacement
    each round (FedAvg's client fraction C): more rounds for the same work, so more
    sequential local steps reach the global model.
    """
    weights = [np.array(w, copy=True) for w in initial]
    state = strategy.initial_state()
    active = [c for c in clients if c.num_examples > 0]
    rng = np.random.default_rng([seed, len(active)])
    for round_index in range(rounds):
        chosen = active
        if per_round is not None and per_round < len(active):
            picks = np.sort(rng.choice(len(active), per_round, replace=False))
            chosen = [active[i] for i in picks]
        results = [
            ClientResult(c.client_id, local_train(weights, c, round_index), c.num_examples)
            for c in chosen
        ]
        if row_usage is not None:
            results = rescale_row_updates(weights, results, row_usage)
        weights, state = strategy.aggregate(weights, results, state)
        if personal is not None:
            weights = merge_personal(weights, results, personal)
    return weights
