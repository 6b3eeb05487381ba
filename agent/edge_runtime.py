"""The edge partition the vehicle serves per task, swapped for a new version without a pause.

A request takes the task's active model reference once, under a lock, and finishes on it; a
swap builds the new model first (outside the lock) and then only replaces that reference. So
in-flight requests complete on the old version, new ones start on the new one, and none is
dropped or sees half of each. numpy + LiteRT only: this runs on the car.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from models.exit_policy import ExitPolicy
from models.model_config import PARTITIONS
from models.normalization import Normalization
from models.served_partition import ServedPartition, TierResult, UnknownTask
from models.tflite_runner import BadPartitionInput, TfliteModelError, TfliteRunner
from proto import partitions_pb2

if TYPE_CHECKING:
    from agent.model_store import ModelStore

__all__ = ["EdgeModel", "EdgeRuntime", "LocalAnswer", "ModelLoadError", "UnknownTask"]

log = logging.getLogger("evfl.agent.edge_runtime")

EDGE = 0
EDGE_NAME = PARTITIONS[EDGE]
EDGE_OUTPUTS = frozenset({f"{EDGE_NAME}_hidden", f"{EDGE_NAME}_exit_out"})


class ModelLoadError(ValueError):
    """A manifest and file that do not make a servable edge partition."""


@dataclass(frozen=True)
class EdgeModel:
    """A ready-to-serve edge partition and the file hash it was built from."""

    served: ServedPartition
    sha256: str

    @property
    def task_id(self) -> str:
        return self.served.task_id

    @property
    def version(self) -> int:
        return self.served.version


@dataclass(frozen=True)
class LocalAnswer:
    """The edge's answer to one request, and the version that gave it."""

    task_id: str
    version: int
    result: TierResult  # result.hidden goes on to the station when not confident
    normalize_ms: float


def build_edge(
    manifest: partitions_pb2.PartitionManifest, file_bytes: bytes, workers: int = 2
) -> EdgeModel:
    """An edge model from a manifest and its file; ModelLoadError if they cannot serve."""
    where = f"task {manifest.task_id} v{manifest.version}"
    if manifest.partition != EDGE_NAME:
        raise ModelLoadError(f"{where}: partition {manifest.partition!r} is not {EDGE_NAME!r}")
    if manifest.format != "tflite":
        raise ModelLoadError(f"{where}: format {manifest.format!r} is not 'tflite'")
    try:
        runner = TfliteRunner(file_bytes, workers)
    except TfliteModelError as exc:
        raise ModelLoadError(f"{where}: {exc}") from None
    missing = sorted(EDGE_OUTPUTS - set(runner.output_names))
    if missing:
        raise ModelLoadError(f"{where}: the file has no output {missing}")
    try:
        normalization = Normalization.from_dict(json.loads(manifest.normalization_json))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{where}: normalization_json is unusable: {exc!r}") from None
    features = runner.input_shape[-1]
    if normalization.x_mean.shape != (features,) or normalization.x_std.shape != (features,):
        raise ModelLoadError(
            f"{where}: normalization has {normalization.x_mean.shape} features, "
            f"the model takes {features}"
        )
    policy = ExitPolicy(tuple(float(t) for t in manifest.exit_policy.thresholds))
    served = ServedPartition(
        manifest.task_id, int(manifest.version), EDGE, runner, normalization, policy
    )
    return EdgeModel(served, manifest.sha256)


class EdgeRuntime:
    """Task -> the active edge model; thread-safe, for the local API's concurrent requests."""

    def __init__(self, workers: int = 2) -> None:
        self.workers = workers
        self._lock = threading.Lock()
        self._active: dict[str, EdgeModel] = {}

    def __repr__(self) -> str:
        return f"EdgeRuntime(tasks={self.tasks()})"

    def build(self, manifest: partitions_pb2.PartitionManifest, file_bytes: bytes) -> EdgeModel:
        """Build (not yet serve) a model, e.g. to self-test it before :meth:`activate`."""
        return build_edge(manifest, file_bytes, self.workers)

    def activate(self, model: EdgeModel) -> EdgeModel | None:
        """Serve ``model`` for its task from the next request on; returns the one it replaced."""
        with self._lock:
            old = self._active.get(model.task_id)
            self._active[model.task_id] = model
        log.info(
            "task %s: serving edge v%d (was %s)",
            model.task_id,
            model.version,
            f"v{old.version}" if old is not None else "nothing",
        )
        return old

    def swap(
        self, task_id: str, manifest: partitions_pb2.PartitionManifest, file_bytes: bytes
    ) -> EdgeModel | None:
        """Build a model from a manifest and file and serve it; returns the one it replaced."""
        if manifest.task_id != task_id:
            raise ModelLoadError(f"manifest is for task {manifest.task_id!r}, not {task_id!r}")
        return self.activate(self.build(manifest, file_bytes))

    def active(self, task_id: str) -> tuple[int, str] | None:
        """(version, sha256) of the file served for a task, or None."""
        with self._lock:
            model = self._active.get(task_id)
        return None if model is None else (model.version, model.sha256)

    def tasks(self) -> dict[str, int]:
        """task -> served version."""
        with self._lock:
            return {task: model.version for task, model in sorted(self._active.items())}

    def predict_local(self, task_id: str, raw_features: np.ndarray) -> LocalAnswer:
        """Normalise one request's raw features and run the edge partition on them.

        ``raw_features`` has the model's input shape, with or without the batch axis of 1.
        UnknownTask if no version is served; BadPartitionInput for a wrong shape or NaN/Inf.
        """
        with self._lock:
            model = self._active.get(task_id)
        if model is None:
            raise UnknownTask(f"task {task_id!r} has no edge model installed")
        served = model.served
        started = time.perf_counter()
        x = np.asarray(raw_features, dtype=np.float32)
        if x.shape == served.runner.input_shape[1:]:
            x = x[None]
        if x.shape != served.runner.input_shape:  # checked before normalising broadcasts it
            raise BadPartitionInput(
                f"features of shape {x.shape} do not fit the model's {served.runner.input_shape}"
            )
        x = served.normalization.transform_x(x)
        normalize_ms = (time.perf_counter() - started) * 1e3
        return LocalAnswer(task_id, served.version, served.step(x), normalize_ms)

    def restore(self, store: ModelStore) -> dict[str, int]:
        """Serve every task's installed version, before any network; task -> version served.

        A current version that is damaged on disk or does not load is rolled back to the
        previous good one (logged); a task with neither stays unserved.
        """
        from agent.model_store import StoredModelCorrupt

        restored: dict[str, int] = {}
        for task in store.tasks():
            try:
                stored = store.current(task)
                if stored is not None:
                    self.swap(task, *stored)
                    restored[task] = stored.manifest.version
                continue
            except (StoredModelCorrupt, ModelLoadError) as exc:
                log.error("task %s: installed version unusable (%s); rolling back", task, exc)
            try:
                stored = store.rollback(task)
                if stored is None:
                    log.error("task %s: no previous version to roll back to; not serving", task)
                    continue
                self.swap(task, *stored)
                restored[task] = stored.manifest.version
            except (StoredModelCorrupt, ModelLoadError) as exc:
                log.error("task %s: previous version unusable too (%s); not serving", task, exc)
        return restored
