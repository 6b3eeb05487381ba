"""One tier's step in the early-exit chain, and the versions a tier keeps serving.

Every tier does the same thing: run its partition on the hidden tensor it received, turn its
exit into (mean, std) in target units, and ask the exit policy whether that is confident
enough to answer; if not, hand its own hidden tensor on. numpy + LiteRT only, so the vehicle
agent (edge), the station (fog) and the cloud share this code.

A tier keeps the last few versions: a request carries the version of the partition that made
its hidden tensor, and activations of version N mean nothing to the weights of N+1.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from models.exit_policy import ExitPolicy
from models.model_config import PARTITIONS
from models.normalization import Normalization
from models.tflite_runner import TfliteRunner

KEEP_VERSIONS = 3


class UnknownTask(LookupError):
    """No version of this task is served here."""


class VersionNotServed(LookupError):
    """The request's version is not (or no longer) served by this tier."""


@dataclass(frozen=True)
class TierResult:
    mean: float  # target units
    std: float
    confident: bool  # the exit policy lets this tier answer (always true at the last tier)
    hidden: np.ndarray | None  # for the next tier; None at the last tier
    compute_ms: float


@dataclass(frozen=True)
class ServedPartition:
    task_id: str
    version: int
    index: int  # 0 edge, 1 fog, 2 cloud
    runner: TfliteRunner
    normalization: Normalization
    policy: ExitPolicy

    @property
    def name(self) -> str:
        return PARTITIONS[self.index]

    @property
    def is_last(self) -> bool:
        return self.index == len(PARTITIONS) - 1

    def step(self, hidden: np.ndarray) -> TierResult:
        started = time.perf_counter()
        out = self.runner.run(hidden)
        mean, std = self.normalization.inverse(out[f"{self.name}_exit_out"])
        m, s = float(mean.reshape(-1)[0]), float(std.reshape(-1)[0])
        confident = self.is_last or self.policy.confident(self.index, s)
        nxt = None if self.is_last else out[f"{self.name}_hidden"]
        return TierResult(m, s, confident, nxt, (time.perf_counter() - started) * 1e3)


class ServedVersions:
    """Thread-safe task -> recent versions map; installing version N+1 keeps N and N-1."""

    def __init__(self, keep: int = KEEP_VERSIONS) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self._tasks: dict[str, OrderedDict[int, ServedPartition]] = {}

    def install(self, served: ServedPartition) -> None:
        with self._lock:
            versions = self._tasks.setdefault(served.task_id, OrderedDict())
            versions[served.version] = served
            for old in sorted(versions)[: max(0, len(versions) - self._keep)]:
                del versions[old]

    def get(self, task_id: str, version: int) -> ServedPartition:
        with self._lock:
            versions = self._tasks.get(task_id)
            if not versions:
                raise UnknownTask(f"task {task_id!r} is not served here")
            if version not in versions:
                raise VersionNotServed(
                    f"task {task_id!r} version {version} is not served; "
                    f"serving {sorted(versions)}"
                )
            return versions[version]

    def latest(self, task_id: str) -> ServedPartition | None:
        with self._lock:
            versions = self._tasks.get(task_id)
            return versions[max(versions)] if versions else None

    def tasks(self) -> dict[str, int]:
        """task -> newest served version."""
        with self._lock:
            return {task: max(v) for task, v in self._tasks.items() if v}

    def drop(self, task_id: str) -> None:
        with self._lock:
            self._tasks.pop(task_id, None)
