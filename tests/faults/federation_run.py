"""A small federated run for the fault tests: a real coordinator and real stations on Kafka.

Two of the busiest Dundee charge points each get their latest real sessions before the task's
held-out period, in time order, one chunk per round (the data keeps arriving). The task closes
a round when both sent an update, re-announces every few seconds, and ends after ``rounds``
versions.
"""

from __future__ import annotations

import itertools
import re
import uuid
from pathlib import Path

import numpy as np

from evfl import launch
from evfl.launch import Program
from models.datasets.record import iter_sessions
from proto import sessions_pb2
from proto.session_codec import session_to_proto
from tests.faults.conftest import wait_for
from tests.integration.processes import station_status, station_stub

STATIONS = 2
REANNOUNCE_S = 3
CHUNK = 400  # sessions per station and round
TRAINING = {"epochs": 1, "time_budget_s": 60}


def station_chunks(dundee, stations: list[str], rounds: int) -> dict[str, list[list]]:
    """Per station: its real sessions before the task's held-out period, in rounds + 1 chunks."""
    s = dundee.sessions
    starts = s["start"].sort_values()
    cutoff = starts.iloc[int(0.8 * len(starts))]  # the time split holds out what follows
    out = {}
    for station in stations:
        mine = s[(s["station_id"] == station) & (s["start"] < cutoff)].sort_values("start")
        mine = mine.iloc[-CHUNK * (rounds + 1) :]  # the latest ones: a short run trains fast
        bounds = np.linspace(0, len(mine), rounds + 2).astype(int)
        out[station] = [list(iter_sessions(mine.iloc[a:b])) for a, b in itertools.pairwise(bounds)]
    return out


class FederationRun:
    """Task file, coordinator and station programs of one run, and what to ask them."""

    def __init__(
        self,
        root: Path,
        dundee,
        bootstrap: str,
        rounds: int,
        mqtt: tuple[str, int] | None = None,
        key_file: Path | None = None,
        stations: int = STATIONS,
    ) -> None:
        self.root = root
        self.rounds = rounds
        self.task = f"fault-{uuid.uuid4().hex[:8]}"
        counts = dundee.sessions["station_id"].value_counts()
        self.stations = [str(s) for s in counts.index[:stations]]
        self.chunks = station_chunks(dundee, self.stations, rounds)
        self.task_file = root / "task.toml"
        launch.write_toml(
            self.task_file,
            {
                "task_id": self.task,
                "dataset": "dundee",
                "target": "energy",
                "split": "time",
                "rounds": rounds,
                "stations": self.stations,
                "min_updates": len(self.stations),
                "round_deadline_s": 600,
                "reannounce_s": REANNOUNCE_S,
                "min_samples": 50,
            },
        )
        self.coordinator = launch.coordinator_program(
            root / "coordinator", [self.task_file], bootstrap, mqtt, key_file
        )
        self.fogs = [
            launch.fog_program(root / f"fog{i}", s, bootstrap, [self.task], training=TRAINING)
            for i, s in enumerate(self.stations)
        ]

    @property
    def programs(self) -> list[Program]:
        return [self.coordinator, *self.fogs]

    @property
    def registry_dir(self) -> Path:
        return self.coordinator.workdir / "registry"

    def start_stations(self, coordinator_too: bool = False) -> None:
        """Start the stations (and the coordinator) side by side; return once all are ready."""
        started = [*self.fogs, *([self.coordinator] if coordinator_too else [])]
        for program in started:
            program.start(wait_ready=False)
        for program in started:
            program.wait_ready()

    def upload(self, station: int, chunk: int) -> int:
        sessions = self.chunks[self.stations[station]][chunk]
        protos = [session_to_proto(x) for x in sessions]
        batches = (
            sessions_pb2.SessionBatch(sessions=protos[i : i + 500])
            for i in range(0, len(protos), 500)
        )
        ack = station_stub(self.fogs[station].port).UploadSessions(batches, timeout=60)
        assert len(ack.committed) == len(sessions), ack.rejected[:3]
        return len(sessions)

    def task_state(self, station: int):
        tasks = station_status(self.fogs[station].port).tasks
        return tasks[0] if tasks else None

    def trained(self, station: int, version: int) -> bool:
        state = self.task_state(station)
        return state is not None and state.trained_version >= version

    def coordinator_log(self) -> str:
        path = self.coordinator.log_path
        return path.read_text(errors="replace") if path.exists() else ""

    def log_count(self, pattern: str, program: Program | None = None) -> int:
        text = self.coordinator_log() if program is None else program.log_path.read_text()
        return len(re.findall(pattern, text))

    def wait_log(self, what: str, pattern: str, at_least: int = 1, timeout: float = 180) -> None:
        wait_for(what, lambda: self.log_count(pattern) >= at_least, self.programs, timeout, 0.05)

    def kill_all(self) -> None:
        for p in self.programs:
            p.kill()
