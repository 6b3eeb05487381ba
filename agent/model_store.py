"""The vehicle's installed edge partitions on disk, so a restarted agent serves at once.

Layout, per task::

    <root>/models/<task>/v<N>/edge.tflite     the file, exactly the bytes the manifest pins
    <root>/models/<task>/v<N>/manifest.pb     the signed manifest it came with
    <root>/models/<task>/current              "v<N>": the version to serve
    <root>/models/<task>/previous             "v<M>": the last good one before it, for rollback

Every write goes to a temporary name, is fsynced, and is renamed into place, so a power cut
leaves either the old or the new state, never half a file. ``previous`` is written before
``current``: a cut between the two leaves both naming the old version, which serves. Only the
current and previous versions are kept; older ones are pruned after each install.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

from google.protobuf.message import DecodeError

from proto import partitions_pb2

__all__ = [
    "InvalidTaskId",
    "ModelStore",
    "StoredModel",
    "StoredModelCorrupt",
    "check_task_id",
]

log = logging.getLogger("evfl.agent.model_store")

MODEL_FILE = "edge.tflite"
MANIFEST_FILE = "manifest.pb"
CURRENT = "current"
PREVIOUS = "previous"
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # never "..", never a path
_VERSION_DIR = re.compile(r"v([1-9][0-9]{0,17})")


class InvalidTaskId(ValueError):
    """A task id that cannot name a directory safely."""


class StoredModelCorrupt(ValueError):
    """An installed version's files are missing, do not parse, or no longer match their hash."""


class StoredModel(NamedTuple):
    """One installed version: its manifest and the file bytes it pins."""

    manifest: partitions_pb2.PartitionManifest
    data: bytes


def check_task_id(task_id: str) -> str:
    """The task id if it can name a directory safely, else InvalidTaskId."""
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
        raise InvalidTaskId(f"task id {task_id!r} is not 1-100 letters, digits, '.', '_' or '-'")
    return task_id


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync, rename, fsync the directory."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class ModelStore:
    """Installed edge partitions per task: the current version and the previous good one."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.models = self.root / "models"
        self._lock = threading.Lock()  # one install or rollback at a time

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r}, tasks={self.tasks()})"

    def tasks(self) -> list[str]:
        """Tasks with an installed current version, sorted."""
        if not self.models.is_dir():
            return []
        names = (p.name for p in self.models.iterdir() if _TASK_ID.fullmatch(p.name))
        return sorted(name for name in names if self._pointer(name, CURRENT) is not None)

    def install(self, manifest: partitions_pb2.PartitionManifest, file_bytes: bytes) -> Path:
        """Write a version's file and manifest, make it current, keep the old current as previous.

        Returns the version's directory. The caller has verified the file (hash, signature,
        self-test): the store records it, it does not judge it.
        """
        with self._lock:
            return self._install(manifest, file_bytes)

    def _install(self, manifest: partitions_pb2.PartitionManifest, file_bytes: bytes) -> Path:
        task = check_task_id(manifest.task_id)
        if manifest.version < 1:
            raise ValueError(f"task {task}: version {manifest.version} must be >= 1")
        if hashlib.sha256(file_bytes).hexdigest() != manifest.sha256:
            raise ValueError(f"task {task} v{manifest.version}: bytes do not match the manifest")
        task_dir = self.models / task
        task_dir.mkdir(parents=True, exist_ok=True)
        name = f"v{manifest.version}"
        staging = Path(tempfile.mkdtemp(dir=task_dir, prefix=f".{name}.", suffix=".tmp"))
        try:
            _write_durably(staging / MODEL_FILE, file_bytes)
            _write_durably(staging / MANIFEST_FILE, manifest.SerializeToString(deterministic=True))
            final = task_dir / name
            current = self._pointer(task, CURRENT)
            if final.exists():  # a re-install of a version already on disk: replace it whole
                if current == name:
                    raise ValueError(f"task {task}: {name} is the current version already")
                shutil.rmtree(final)
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(task_dir)
        if current is not None:
            _write_durably(task_dir / PREVIOUS, current.encode())
        _write_durably(task_dir / CURRENT, name.encode())
        self._prune(task)
        log.info("task %s: installed %s (%d bytes) in %s", task, name, len(file_bytes), final)
        return final

    def current(self, task_id: str) -> StoredModel | None:
        """The version to serve, or None if none is installed; StoredModelCorrupt if damaged."""
        return self._load(check_task_id(task_id), self._pointer(task_id, CURRENT))

    def previous(self, task_id: str) -> StoredModel | None:
        """The last good version before the current one, or None."""
        return self._load(check_task_id(task_id), self._previous_name(task_id))

    def rollback(self, task_id: str) -> StoredModel | None:
        """Make the previous version current again and delete the one rolled back from.

        Returns the now-current version, or None (nothing changed) if there is no previous.
        """
        with self._lock:
            return self._rollback(check_task_id(task_id))

    def _rollback(self, task: str) -> StoredModel | None:
        back_to = self._previous_name(task)
        if back_to is None:
            return None
        stored = self._load(task, back_to)
        task_dir = self.models / task
        bad = self._pointer(task, CURRENT)
        _write_durably(task_dir / CURRENT, back_to.encode())
        (task_dir / PREVIOUS).unlink(missing_ok=True)
        _fsync_dir(task_dir)
        self._prune(task)
        log.warning("task %s: rolled back from %s to %s", task, bad, back_to)
        return stored

    def _pointer(self, task: str, which: str) -> str | None:
        try:
            name = (self.models / task / which).read_text().strip()
        except FileNotFoundError:
            return None
        return name if _VERSION_DIR.fullmatch(name) else None

    def _previous_name(self, task: str) -> str | None:
        name = self._pointer(task, PREVIOUS)
        return None if name is None or name == self._pointer(task, CURRENT) else name

    def _load(self, task: str, name: str | None) -> StoredModel | None:
        if name is None:
            return None
        folder = self.models / task / name
        try:
            data = (folder / MODEL_FILE).read_bytes()
            raw = (folder / MANIFEST_FILE).read_bytes()
        except OSError as exc:
            raise StoredModelCorrupt(f"task {task} {name}: cannot read {exc.filename}") from None
        manifest = partitions_pb2.PartitionManifest()
        try:
            manifest.ParseFromString(raw)
        except DecodeError:
            raise StoredModelCorrupt(f"task {task} {name}: manifest does not parse") from None
        if (manifest.task_id, f"v{manifest.version}") != (task, name):
            raise StoredModelCorrupt(
                f"task {task} {name}: manifest is for {manifest.task_id} v{manifest.version}"
            )
        if len(data) != manifest.size or hashlib.sha256(data).hexdigest() != manifest.sha256:
            raise StoredModelCorrupt(f"task {task} {name}: file does not match its manifest")
        return StoredModel(manifest, data)

    def _prune(self, task: str) -> None:
        """Remove versions other than current and previous, and leftovers of interrupted writes."""
        task_dir = self.models / task
        keep = {self._pointer(task, CURRENT), self._previous_name(task)}
        for entry in task_dir.iterdir():
            stale_version = _VERSION_DIR.fullmatch(entry.name) and entry.name not in keep
            if entry.is_dir() and (stale_version or entry.name.endswith(".tmp")):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.is_file() and entry.name.endswith(".tmp"):
                entry.unlink(missing_ok=True)
