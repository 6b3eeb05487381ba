"""The coordinator's durable model registry: tasks, committed versions, the round in progress.

Layout under ``root``::

    registry.lock                        flock'd while open, so one process writes a root
    registry.sqlite3                     the index and the single commit point
    <task dir>/v00000003-<token>.weights a version's weights (a serialized TensorBundle)
    <task dir>/v00000003-<token>.state   its strategy state (a serialized TensorBundle)

SQLite runs in WAL mode with ``synchronous=FULL``; a version's files are written under a
temporary name, fsynced, renamed and their directory fsynced *before* the row naming them
commits, so after a crash at any point (kill -9 included) a version is either wholly there or
absent, and a committed row never names a missing or partial file. Files no row names (a crash
between rename and commit) are deleted on open. File names carry a random token, so retrying a
version number can never replace a committed file.

Version numbers are dense: 0 first, then exactly latest + 1, checked in the transaction that
inserts the row. Updates and refusals are rows committed before the method returns, so
duplicate detection holds across restarts. Threads share one connection behind one lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import operator
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from proto.limits import WireLimits
from proto.sqlite_store import SqliteStore
from proto.tensor_codec import NamedArrays, bundle_from_bytes, bundle_to_bytes
from proto.wire_errors import WireError

__all__ = [
    "DB_NAME",
    "MIGRATIONS",
    "InvalidRecord",
    "Registry",
    "RegistryCorrupt",
    "RegistryError",
    "RegistryLocked",
    "RoundConflict",
    "RoundState",
    "SchemaTooNew",
    "StoredUpdate",
    "TaskEnded",
    "TaskInfo",
    "TaskNotFound",
    "TaskSpecChanged",
    "VersionConflict",
    "VersionNotFound",
    "VersionRecord",
    "VersionSummary",
]

log = logging.getLogger("evfl.registry")

DB_NAME = "registry.sqlite3"
LOCK_NAME = "registry.lock"
_TMP_PREFIX = ".tmp-"
_BLOB_NAME = re.compile(r"v\d{8,}-[0-9a-f]{12}\.(?:weights|state)")

# One entry per schema version: MIGRATIONS[i] takes a database from version i to i + 1.
# Append only; never edit a released entry (registries upgrade in place).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE tasks (
            task_id TEXT PRIMARY KEY,
            spec TEXT NOT NULL,
            dir TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL CHECK (status IN ('running', 'ended')),
            created_unix_ms INTEGER NOT NULL,
            ended_unix_ms INTEGER
        )""",
        """CREATE TABLE versions (
            task_id TEXT NOT NULL REFERENCES tasks (task_id),
            version INTEGER NOT NULL CHECK (version >= 0),
            round INTEGER NOT NULL,
            created_unix_ms INTEGER NOT NULL,
            model_config TEXT NOT NULL,
            preprocessing TEXT NOT NULL,
            metrics TEXT NOT NULL,
            exit_policy TEXT NOT NULL,
            update_ids TEXT NOT NULL,
            update_count INTEGER NOT NULL,
            weights_file TEXT NOT NULL,
            weights_sha256 TEXT NOT NULL,
            state_file TEXT NOT NULL,
            state_sha256 TEXT NOT NULL,
            PRIMARY KEY (task_id, version)
        )""",
        """CREATE TABLE rounds (
            task_id TEXT NOT NULL REFERENCES tasks (task_id),
            round INTEGER NOT NULL,
            base_version INTEGER NOT NULL,
            deadline_unix_ms INTEGER NOT NULL,
            opened_unix_ms INTEGER NOT NULL,
            closed_unix_ms INTEGER,
            closed_by_version INTEGER,
            PRIMARY KEY (task_id, round)
        )""",
        "CREATE UNIQUE INDEX one_open_round ON rounds (task_id) WHERE closed_unix_ms IS NULL",
        """CREATE TABLE updates (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            task_id TEXT NOT NULL REFERENCES tasks (task_id),
            round INTEGER NOT NULL,
            update_id TEXT NOT NULL,
            station_id TEXT NOT NULL,
            sample_count INTEGER NOT NULL,
            payload BLOB NOT NULL,
            received_unix_ms INTEGER NOT NULL,
            UNIQUE (task_id, update_id)
        )""",
        "CREATE INDEX updates_by_round ON updates (task_id, round, seq)",
        """CREATE TABLE refusals (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            task_id TEXT NOT NULL REFERENCES tasks (task_id),
            round INTEGER NOT NULL,
            reason TEXT NOT NULL,
            update_id TEXT NOT NULL,
            station_id TEXT NOT NULL,
            detail TEXT NOT NULL,
            unix_ms INTEGER NOT NULL
        )""",
        "CREATE INDEX refusals_by_round ON refusals (task_id, round)",
    ),
)


class RegistryError(Exception):
    """The registry cannot do what was asked; the message names the task, version or file."""


class SchemaTooNew(RegistryError):
    """The database was written by a newer evfl; opening it could corrupt it."""


class RegistryLocked(RegistryError):
    """Another process has this registry root open; two writers would corrupt it."""


class InvalidRecord(RegistryError, ValueError):
    """An argument cannot be stored: a negative number, an empty id, a non-JSON dict."""


class TaskNotFound(RegistryError):
    """No task with this id was ever created."""


class TaskSpecChanged(RegistryError):
    """A task was created again with a spec other than the stored one."""


class TaskEnded(RegistryError):
    """The task has ended; it takes no more rounds, updates or versions."""


class VersionConflict(RegistryError):
    """A version number is not the next one (0 first, then latest + 1)."""


class VersionNotFound(RegistryError):
    """The task has no committed version with this number."""


class RoundConflict(RegistryError):
    """A round is opened, fed or committed out of order (e.g. an update for a closed round)."""


class RegistryCorrupt(RegistryError):
    """A committed file is missing or its bytes do not match the sha256 in its row."""


TaskStatus = Literal["running", "ended"]


@dataclass(frozen=True)
class TaskInfo:
    task_id: str
    status: TaskStatus
    latest_version: int | None  # None before the first commit
    current_round: int | None  # the open round; None between rounds
    created_unix_ms: int


@dataclass(frozen=True)
class VersionSummary:
    version: int
    round: int
    created_unix_ms: int
    metrics: dict[str, Any]
    update_count: int


@dataclass(frozen=True)
class VersionRecord:
    """A committed version's metadata; the arrays are read (and verified) only when asked for."""

    task_id: str
    version: int
    round: int
    created_unix_ms: int
    model_config: dict[str, Any]
    preprocessing: dict[str, Any]
    metrics: dict[str, Any]
    exit_policy: dict[str, Any]
    updates: tuple[str, ...]
    weights_file: Path
    weights_sha256: str
    state_file: Path
    state_sha256: str

    def weights(self) -> list[np.ndarray]:
        """The model's weights in order; :class:`RegistryCorrupt` if the file does not verify."""
        return [array for _, array in _load_bundle(self.weights_file, self.weights_sha256)]

    def strategy_state(self) -> NamedArrays:
        """The strategy's ``(name, array)`` state; :class:`RegistryCorrupt` if it does not
        verify."""
        return _load_bundle(self.state_file, self.state_sha256)


@dataclass(frozen=True)
class RoundState:
    """The open round: what a restarted coordinator needs to carry on with it."""

    round: int
    base_version: int
    deadline_unix_ms: int
    opened_unix_ms: int
    update_ids: tuple[str, ...]  # accepted so far, in arrival order


@dataclass(frozen=True)
class StoredUpdate:
    update_id: str
    station_id: str
    sample_count: int
    payload: bytes
    received_unix_ms: int


_VERSION_COLUMNS = (
    "version, round, created_unix_ms, model_config, preprocessing, metrics, exit_policy, "
    "update_ids, weights_file, weights_sha256, state_file, state_sha256"
)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _json_default(value: object) -> Any:
    if isinstance(value, np.generic):  # metrics computed with numpy
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _to_json(value: Any, what: str) -> str:
    if not isinstance(value, dict):
        raise InvalidRecord(f"{what} must be a dict, got {type(value).__name__}")
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)
    except (TypeError, ValueError) as exc:
        raise InvalidRecord(f"{what} cannot be stored as JSON: {exc}") from None


def _require_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRecord(f"{what} must be a non-empty string, got {value!r}")
    return value


def _require_count(value: object, what: str) -> int:
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidRecord(f"{what} must be an integer, got {value!r}") from None
    if number < 0:
        raise InvalidRecord(f"{what} must be >= 0, got {number}")
    return number


def _brief(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _task_dirname(task_id: str) -> str:
    """Readable, filesystem-safe and unique (the hash) whatever characters the id holds."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", task_id).strip("._")[:40] or "task"
    return f"{slug}-{hashlib.sha256(task_id.encode()).hexdigest()[:12]}"


def _lock_root(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RegistryLocked(f"{path.parent}: another registry has this root open") from None
    return fd


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(directory: Path, name: str, data: bytes) -> None:
    """Write ``directory/name`` so that it is either absent or complete; the caller fsyncs
    the directory once all its renames are done."""
    tmp = directory / f"{_TMP_PREFIX}{name}"
    with open(tmp, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / name)


def _discard(directory: Path, names: Sequence[str]) -> None:
    """Remove a commit's files after it failed before COMMIT (open() would remove them too)."""
    for name in names:
        for path in (directory / name, directory / f"{_TMP_PREFIX}{name}"):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not remove %s (removed on next open): %s", path, exc)


def _trusted_limits(size: int) -> WireLimits:
    """Our own files are hash-checked, so bound them only by their size, not by wire limits."""
    return WireLimits(
        max_raw_bytes=max(size, WireLimits.max_raw_bytes),
        max_tensor_elements=2**62,
        max_tensors=2**31,
    )


def _load_bundle(path: Path, sha256: str) -> NamedArrays:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RegistryCorrupt(f"{path}: committed file is missing") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise RegistryCorrupt(f"{path}: sha256 {digest} does not match the committed {sha256}")
    try:
        return bundle_from_bytes(data, _trusted_limits(len(data)))
    except WireError as exc:
        raise RegistryCorrupt(f"{path}: {exc}") from exc


def _encode(arrays: Sequence[Any], what: str) -> bytes:
    try:
        return bundle_to_bytes(arrays)
    except WireError as exc:
        raise InvalidRecord(f"{what}: {exc}") from exc


class Registry(SqliteStore):
    """One coordinator's registry under ``root``. Use as a context manager or ``close()``."""

    NAME = "registry root"
    FOREIGN_KEYS = True
    UNAVAILABLE = RegistryError
    TOO_NEW = SchemaTooNew

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._closed = False
        # One coordinator per root: take the lock before the database is even opened.
        self._lock_fd = _lock_root(self.root / LOCK_NAME)
        try:
            super().__init__(self.root / DB_NAME)
        except BaseException:
            self._unlock()
            raise
        try:
            self._remove_orphans()
        except BaseException:
            self.close()
            raise

    def migrations(self) -> Sequence[Sequence[str]]:
        return MIGRATIONS

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # --- lifecycle ----------------------------------------------------------------------

    def _remove_orphans(self) -> None:
        """Delete temp files and version files no committed row names (left by a crash)."""
        referenced: dict[str, set[str]] = {d: set() for (d,) in self._read("SELECT dir FROM tasks")}
        for dirname, weights_file, state_file in self._read(
            "SELECT t.dir, v.weights_file, v.state_file "
            "FROM versions v JOIN tasks t USING (task_id)"
        ):
            referenced[dirname].update((weights_file, state_file))
        for dirname, keep in referenced.items():
            task_dir = self.root / dirname
            if not task_dir.is_dir():
                continue
            for entry in task_dir.iterdir():
                name = entry.name
                if name.startswith(_TMP_PREFIX) or (
                    _BLOB_NAME.fullmatch(name) and name not in keep
                ):
                    log.info("removing %s: no committed version refers to it", entry)
                    entry.unlink(missing_ok=True)

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                super().close()
                self._unlock()

    # --- shared checks ------------------------------------------------------------------

    def _task(self, cur: sqlite3.Cursor, task_id: str) -> tuple[str, str]:
        """``(dir, status)`` of a task; :class:`TaskNotFound` if it was never created."""
        row = cur.execute("SELECT dir, status FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if row is None:
            raise TaskNotFound(f"no task {task_id!r} in {self.root}")
        return row[0], row[1]

    def _running_task(self, cur: sqlite3.Cursor, task_id: str) -> str:
        dirname, status = self._task(cur, task_id)
        if status != "running":
            raise TaskEnded(f"task {task_id!r} has ended")
        return dirname

    @staticmethod
    def _latest_row(cur: sqlite3.Cursor, task_id: str) -> tuple[int, int] | None:
        """``(version, round)`` of the task's latest version."""
        row = cur.execute(
            "SELECT version, round FROM versions WHERE task_id = ? ORDER BY version DESC LIMIT 1",
            (task_id,),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    @staticmethod
    def _open_row(cur: sqlite3.Cursor, task_id: str) -> tuple[int, int] | None:
        """``(round, base_version)`` of the task's open round."""
        row = cur.execute(
            "SELECT round, base_version FROM rounds WHERE task_id = ? AND closed_unix_ms IS NULL",
            (task_id,),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def _check_commit(self, cur: sqlite3.Cursor, task_id: str, version: int, round_: int) -> str:
        dirname = self._running_task(cur, task_id)
        latest = self._latest_row(cur, task_id)
        expected = 0 if latest is None else latest[0] + 1
        if version != expected:
            why = (
                "the first version must be 0"
                if latest is None
                else f"the latest is {latest[0]}, so the next must be {expected}"
            )
            raise VersionConflict(f"task {task_id!r}: cannot commit version {version}; {why}")
        open_round = self._open_row(cur, task_id)
        if open_round is not None and open_round[0] != round_:
            raise RoundConflict(
                f"task {task_id!r}: round {open_round[0]} is open, so version {version} cannot "
                f"be committed for round {round_}"
            )
        if latest is not None and round_ < latest[1]:
            raise RoundConflict(
                f"task {task_id!r}: version {version} for round {round_} would come after "
                f"version {latest[0]} of round {latest[1]}"
            )
        return dirname

    def _record(self, task_id: str, dirname: str, row: Sequence[Any]) -> VersionRecord:
        task_dir = self.root / dirname
        return VersionRecord(
            task_id=task_id,
            version=row[0],
            round=row[1],
            created_unix_ms=row[2],
            model_config=json.loads(row[3]),
            preprocessing=json.loads(row[4]),
            metrics=json.loads(row[5]),
            exit_policy=json.loads(row[6]),
            updates=tuple(json.loads(row[7])),
            weights_file=task_dir / row[8],
            weights_sha256=row[9],
            state_file=task_dir / row[10],
            state_sha256=row[11],
        )

    # --- tasks --------------------------------------------------------------------------

    def create_task(self, task_id: str, spec: dict[str, Any]) -> None:
        """Register a task; again with an equal spec is a no-op, with another one
        :class:`TaskSpecChanged` (a restarted coordinator must not silently change a task)."""
        _require_id(task_id, "task id")
        spec_json = _to_json(spec, f"task {task_id!r} spec")
        with self._write() as cur:
            row = cur.execute("SELECT spec FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
            if row is None:
                cur.execute(
                    "INSERT INTO tasks (task_id, spec, dir, status, created_unix_ms) "
                    "VALUES (?, ?, ?, 'running', ?)",
                    (task_id, spec_json, _task_dirname(task_id), _now_ms()),
                )
                return
        stored = row[0]
        if json.loads(stored) != json.loads(spec_json):
            raise TaskSpecChanged(
                f"task {task_id!r} exists with another spec: stored {_brief(stored)}, "
                f"given {_brief(spec_json)}"
            )

    def task_spec(self, task_id: str) -> dict[str, Any]:
        rows = self._read("SELECT spec FROM tasks WHERE task_id = ?", (task_id,))
        if not rows:
            raise TaskNotFound(f"no task {task_id!r} in {self.root}")
        return json.loads(rows[0][0])

    def tasks(self) -> list[TaskInfo]:
        rows = self._read(
            "SELECT t.task_id, t.status, "
            "(SELECT MAX(version) FROM versions v WHERE v.task_id = t.task_id), "
            "(SELECT round FROM rounds r WHERE r.task_id = t.task_id AND r.closed_unix_ms IS NULL),"
            " t.created_unix_ms FROM tasks t ORDER BY t.created_unix_ms, t.task_id"
        )
        return [TaskInfo(*row) for row in rows]

    def end_task(self, task_id: str) -> None:
        """Mark a task ended (idempotent) and abandon its open round, if any."""
        now = _now_ms()
        with self._write() as cur:
            self._task(cur, task_id)
            cur.execute(
                "UPDATE tasks SET status = 'ended', ended_unix_ms = COALESCE(ended_unix_ms, ?) "
                "WHERE task_id = ?",
                (now, task_id),
            )
            cur.execute(
                "UPDATE rounds SET closed_unix_ms = ? WHERE task_id = ? AND closed_unix_ms IS NULL",
                (now, task_id),
            )

    # --- versions -----------------------------------------------------------------------

    def commit_version(
        self,
        task_id: str,
        version: int,
        round_: int,
        weights: Sequence[np.ndarray],
        model_config: dict[str, Any],
        preprocessing: dict[str, Any],
        metrics: dict[str, Any],
        exit_policy: dict[str, Any],
        updates: Sequence[str],
        strategy_state: Sequence[tuple[str, np.ndarray]],
    ) -> VersionRecord:
        """Commit ``version`` (0 first, then exactly latest + 1, else :class:`VersionConflict`)
        atomically, and close ``round_`` if it is the open round.

        While a round is open only that round may be committed (:class:`RoundConflict`).
        """
        version = _require_count(version, "version")
        round_ = _require_count(round_, "round")
        texts = [
            _to_json(value, what)
            for value, what in (
                (model_config, "model_config"),
                (preprocessing, "preprocessing"),
                (metrics, "metrics"),
                (exit_policy, "exit_policy"),
            )
        ]
        update_ids = [_require_id(u, "update id") for u in updates]
        weights_bytes = _encode([np.asarray(w) for w in weights], f"version {version} weights")
        state_bytes = _encode(
            [(str(name), np.asarray(array)) for name, array in strategy_state],
            f"version {version} strategy state",
        )
        token = secrets.token_hex(6)
        weights_name = f"v{version:08d}-{token}.weights"
        state_name = f"v{version:08d}-{token}.state"
        weights_sha = hashlib.sha256(weights_bytes).hexdigest()
        state_sha = hashlib.sha256(state_bytes).hexdigest()
        now = _now_ms()
        row = (
            version,
            round_,
            now,
            *texts,
            json.dumps(update_ids),
            weights_name,
            weights_sha,
            state_name,
            state_sha,
        )
        # The files are written inside the transaction: we are the only writer (flock + lock),
        # and a failure before COMMIT rolls the row back and removes them. After a failed
        # COMMIT they stay: only open() can tell whether SQLite kept the row.
        with self._write() as cur:
            dirname = self._check_commit(cur, task_id, version, round_)
            task_dir = self.root / dirname
            try:
                if not task_dir.is_dir():
                    task_dir.mkdir()
                    _fsync_dir(self.root)
                _write_file(task_dir, weights_name, weights_bytes)
                _write_file(task_dir, state_name, state_bytes)
                _fsync_dir(task_dir)
                cur.execute(
                    f"INSERT INTO versions (task_id, {_VERSION_COLUMNS}, update_count) "
                    f"VALUES (?, {', '.join('?' * len(row))}, ?)",
                    (task_id, *row, len(update_ids)),
                )
                cur.execute(
                    "UPDATE rounds SET closed_unix_ms = ?, closed_by_version = ? "
                    "WHERE task_id = ? AND round = ? AND closed_unix_ms IS NULL",
                    (now, version, task_id, round_),
                )
            except BaseException:
                _discard(task_dir, (weights_name, state_name))
                raise
        return self._record(task_id, dirname, row)

    def latest(self, task_id: str) -> VersionRecord | None:
        with self._lock:
            dirname, _ = self._task(self._conn.cursor(), task_id)
            rows = self._read(
                f"SELECT {_VERSION_COLUMNS} FROM versions WHERE task_id = ? "
                "ORDER BY version DESC LIMIT 1",
                (task_id,),
            )
        return self._record(task_id, dirname, rows[0]) if rows else None

    def version(self, task_id: str, n: int) -> VersionRecord:
        with self._lock:
            dirname, _ = self._task(self._conn.cursor(), task_id)
            rows = self._read(
                f"SELECT {_VERSION_COLUMNS} FROM versions WHERE task_id = ? AND version = ?",
                (task_id, n),
            )
        if not rows:
            raise VersionNotFound(f"task {task_id!r} has no version {n}")
        return self._record(task_id, dirname, rows[0])

    def versions(self, task_id: str) -> list[VersionSummary]:
        with self._lock:
            self._task(self._conn.cursor(), task_id)
            rows = self._read(
                "SELECT version, round, created_unix_ms, metrics, update_count FROM versions "
                "WHERE task_id = ? ORDER BY version",
                (task_id,),
            )
        return [VersionSummary(v, r, c, json.loads(m), n) for v, r, c, m, n in rows]

    # --- rounds -------------------------------------------------------------------------

    def open_round(
        self, task_id: str, round_: int, base_version: int, deadline_unix_ms: int
    ) -> RoundState:
        """Open ``round_`` on ``base_version`` (the latest version, -1 if none) and return it.

        Opening the open round again is a no-op that returns the stored state (its original
        deadline and opening time), so a restarted coordinator resumes the same round. A later
        round abandons the open one; an earlier or committed one is a :class:`RoundConflict`.
        """
        round_ = _require_count(round_, "round")
        deadline_unix_ms = _require_count(deadline_unix_ms, "deadline_unix_ms")
        with self._write() as cur:
            self._running_task(cur, task_id)
            open_round = self._open_row(cur, task_id)
            if open_round is not None and open_round[0] == round_:
                if open_round[1] != base_version:
                    raise RoundConflict(
                        f"task {task_id!r}: round {round_} is open on version {open_round[1]}, "
                        f"not {base_version}"
                    )
            else:
                self._check_new_round(cur, task_id, round_, base_version)
                now = _now_ms()
                if open_round is not None:
                    log.info(
                        "task %r: round %d abandoned for round %d", task_id, open_round[0], round_
                    )
                    cur.execute(
                        "UPDATE rounds SET closed_unix_ms = ? "
                        "WHERE task_id = ? AND closed_unix_ms IS NULL",
                        (now, task_id),
                    )
                cur.execute(
                    "INSERT INTO rounds (task_id, round, base_version, deadline_unix_ms, "
                    "opened_unix_ms) VALUES (?, ?, ?, ?, ?)",
                    (task_id, round_, base_version, deadline_unix_ms, now),
                )
            state = self._round_state(cur, task_id)
        assert state is not None
        return state

    def _check_new_round(
        self, cur: sqlite3.Cursor, task_id: str, round_: int, base_version: int
    ) -> None:
        latest = self._latest_row(cur, task_id)
        last_round = cur.execute(
            "SELECT MAX(r) FROM (SELECT MAX(round) AS r FROM rounds WHERE task_id = ? "
            "UNION ALL SELECT MAX(round) FROM versions WHERE task_id = ?)",
            (task_id, task_id),
        ).fetchone()[0]
        if last_round is not None and round_ <= last_round:
            raise RoundConflict(
                f"task {task_id!r}: cannot open round {round_}, round {last_round} came already"
            )
        expected_base = -1 if latest is None else latest[0]
        if base_version != expected_base:
            raise RoundConflict(
                f"task {task_id!r}: round {round_} must build on version {expected_base}, "
                f"not {base_version}"
            )

    def _round_state(self, cur: sqlite3.Cursor, task_id: str) -> RoundState | None:
        row = cur.execute(
            "SELECT round, base_version, deadline_unix_ms, opened_unix_ms FROM rounds "
            "WHERE task_id = ? AND closed_unix_ms IS NULL",
            (task_id,),
        ).fetchone()
        if row is None:
            return None
        ids = cur.execute(
            "SELECT update_id FROM updates WHERE task_id = ? AND round = ? ORDER BY seq",
            (task_id, row[0]),
        ).fetchall()
        round_, base_version, deadline, opened = row
        return RoundState(round_, base_version, deadline, opened, tuple(i for (i,) in ids))

    def current_round(self, task_id: str) -> RoundState | None:
        """The open round, or None between rounds (after a commit, before the next open)."""
        with self._lock:
            cur = self._conn.cursor()
            self._task(cur, task_id)
            return self._round_state(cur, task_id)

    def record_update(
        self,
        task_id: str,
        round_: int,
        update_id: str,
        station_id: str,
        sample_count: int,
        payload: bytes,
    ) -> bool:
        """Store an update for the open round, durably; False if its id was ever recorded
        for this task (a duplicate, whatever its round). An update for a round that is not
        open is a :class:`RoundConflict`."""
        _require_id(update_id, "update id")
        _require_id(station_id, "station id")
        sample_count = _require_count(sample_count, "sample_count")
        with self._write() as cur:
            self._running_task(cur, task_id)
            seen = cur.execute(
                "SELECT 1 FROM updates WHERE task_id = ? AND update_id = ?", (task_id, update_id)
            ).fetchone()
            if seen is not None:
                return False
            open_round = self._open_row(cur, task_id)
            if open_round is None or open_round[0] != round_:
                now_open = "no round" if open_round is None else f"round {open_round[0]}"
                raise RoundConflict(
                    f"task {task_id!r}: update {update_id!r} is for round {round_}, "
                    f"but {now_open} is open"
                )
            cur.execute(
                "INSERT INTO updates (task_id, round, update_id, station_id, sample_count, "
                "payload, received_unix_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (task_id, round_, update_id, station_id, sample_count, bytes(payload), _now_ms()),
            )
        return True

    def seen_update(self, task_id: str, update_id: str) -> bool:
        """Whether this update id was recorded in any round of the task."""
        with self._lock:
            self._task(self._conn.cursor(), task_id)
            rows = self._read(
                "SELECT 1 FROM updates WHERE task_id = ? AND update_id = ?", (task_id, update_id)
            )
        return bool(rows)

    def round_updates(self, task_id: str, round_: int) -> list[StoredUpdate]:
        """A round's updates in arrival order, open or closed."""
        with self._lock:
            self._task(self._conn.cursor(), task_id)
            rows = self._read(
                "SELECT update_id, station_id, sample_count, payload, received_unix_ms "
                "FROM updates WHERE task_id = ? AND round = ? ORDER BY seq",
                (task_id, round_),
            )
        return [StoredUpdate(u, s, n, bytes(p), t) for u, s, n, p, t in rows]

    def record_refusal(
        self, task_id: str, round_: int, reason: str, update_id: str, station_id: str, detail: str
    ) -> None:
        """Keep a refused update's reason (counted by :meth:`refusals`) and detail for audit."""
        _require_id(reason, "refusal reason")
        with self._write() as cur:
            self._task(cur, task_id)
            cur.execute(
                "INSERT INTO refusals (task_id, round, reason, update_id, station_id, detail, "
                "unix_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (task_id, int(round_), reason, update_id, station_id, detail, _now_ms()),
            )

    def refusals(self, task_id: str, round_: int | None = None) -> dict[str, int]:
        """Refused updates counted by reason, for one round or (None) the whole task."""
        sql = "SELECT reason, COUNT(*) FROM refusals WHERE task_id = ?"
        params: tuple[Any, ...] = (task_id,)
        if round_ is not None:
            sql += " AND round = ?"
            params = (task_id, round_)
        with self._lock:
            self._task(self._conn.cursor(), task_id)
            rows = self._read(f"{sql} GROUP BY reason ORDER BY reason", params)
        return {reason: int(count) for reason, count in rows}
