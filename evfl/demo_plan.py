"""Which real sessions the demo replays, through which vehicle, in which round (pure pandas).

The chosen stations are the dataset's busiest. The task holds out the latest share of
sessions by time (the coordinator's test set); everything before that is replayed in time
order, in one chunk per round, as data that keeps arriving. Dundee records which card (vehicle)
charged; the most frequent cards at these stations run as vehicle agents of their own, and a
"fleet" agent uploads the sessions of every other vehicle (Perth records no vehicle). Prediction
requests come from the held-out period at the same stations, so no answer is scored on a
session any station trained on.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

FLEET = "fleet"


@dataclass(frozen=True)
class Query:
    vehicle: str
    station: str
    raw: np.ndarray  # encoded features before normalisation, shape (1, ...)
    truth: float


@dataclass(frozen=True)
class DemoPlan:
    stations: tuple[str, ...]
    vehicles: tuple[str, ...]  # the fleet agent last
    chunks: tuple[dict[str, pd.DataFrame], ...]  # per round: vehicle -> its sessions
    cutoff: pd.Timestamp  # sessions from here on are held out
    home: dict[str, str]  # vehicle -> the station it uses most (forwarding while driving)

    def sessions_in(self, round_index: int) -> int:
        return sum(len(f) for f in self.chunks[round_index].values())

    @property
    def total_sessions(self) -> int:
        return sum(self.sessions_in(i) for i in range(len(self.chunks)))


def plan(
    sessions: pd.DataFrame,
    n_stations: int,
    n_vehicles: int,
    rounds: int,
    train_ratio: float = 0.8,
    max_per_station: int | None = None,
) -> DemoPlan:
    starts = sessions["start"].sort_values()
    cutoff = starts.iloc[int(train_ratio * len(starts))]
    stations = tuple(str(s) for s in sessions["station_id"].value_counts().index[:n_stations])
    here = sessions[sessions["station_id"].isin(stations) & (sessions["start"] < cutoff)]
    here = here.sort_values("start")
    if max_per_station is not None:  # the most recent sessions: the ones nearest the test
        here = here.groupby("station_id", group_keys=False).tail(max_per_station)
    cards = here["vehicle_id"].dropna().astype(str)
    vehicles = tuple(str(v) for v in cards.value_counts().index[:n_vehicles])
    owner = here["vehicle_id"].astype("string").where(
        here["vehicle_id"].astype("string").isin(vehicles), FLEET
    ).fillna(FLEET)
    here = here.assign(_owner=owner.to_numpy())
    # Each station's sessions in time order, split into one part per round: every station
    # gets new data every round, as a charge point in use does.
    chunks: list[dict[str, pd.DataFrame]] = []
    parts = []
    for _, frame in here.groupby("station_id"):
        bounds = np.linspace(0, len(frame), rounds + 1).astype(int)
        parts.append([frame.iloc[a:b] for a, b in itertools.pairwise(bounds)])
    for r in range(rounds):
        part = pd.concat([p[r] for p in parts]).sort_values("start")
        chunks.append({v: f.drop(columns="_owner") for v, f in part.groupby("_owner")})
    home = {
        v: str(f["station_id"].value_counts().index[0])
        for v, f in here.groupby("_owner")
    }
    return DemoPlan(stations, (*vehicles, FLEET), tuple(chunks), cutoff, home)


def queries(
    sessions: pd.DataFrame,
    demo: DemoPlan,
    preprocessing: object,
    per_vehicle: int,
    seed: int = 0,
) -> list[Query]:
    """Held-out sessions at the demo's stations, as each vehicle would ask about them."""
    from models.preprocessing import Preprocessing

    assert isinstance(preprocessing, Preprocessing)
    at = sessions[sessions["station_id"].isin(demo.stations)].sort_values("start")
    at = at.reset_index(drop=True)
    encoded = preprocessing.encode(at)  # LSTM windows use the history before each session
    held = np.flatnonzero(at.loc[encoded.rows, "start"].to_numpy() >= demo.cutoff)
    rng = np.random.default_rng(seed)
    norm = preprocessing.normalization
    out = []
    for vehicle in demo.vehicles:
        pick = rng.choice(held, size=min(per_vehicle, len(held)), replace=False)
        for i in pick:
            raw = encoded.x[i : i + 1] * norm.x_std + norm.x_mean
            station = str(at.loc[encoded.rows[i], "station_id"])
            out.append(Query(vehicle, station, raw.astype(np.float32), float(encoded.y[i])))
    return out
