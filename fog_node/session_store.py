"""The station's durable store: sessions, per-task training state, updates, rejections.

SQLite in WAL mode with ``synchronous=FULL``: every write method commits before it returns, so
an upload ack or a "trained up to" watermark sent after the call survives a crash or power
loss. Updates are kept while unsent and, once sent, until the task's next one is sent. A task's
top-k error-feedback residual is written in the same transaction as the update it was
computed with, so a crash cannot keep the one without the other.
``sessions.seq`` is the insertion order; a task's watermark is the last seq it trained
on, so "new data" is ``frame(after_seq=watermark)``.

Threads: one connection (``check_same_thread=False``) guarded by one lock, so the gRPC
handlers and the trainer may share a store; writes are short and serialised anyway by SQLite.
pandas is imported only by the methods that return frames.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np

from models.datasets.record import (
    FLOAT_COLUMNS,
    SESSION_COLUMNS,
    STRING_COLUMNS,
    TIME_COLUMNS,
    Session,
)
from proto.session_codec import to_unix_ms, zone_name
from proto.sqlite_store import SqliteStore
from proto.tensor_codec import bundle_from_bytes, bundle_to_bytes

if TYPE_CHECKING:
    import sqlite3

    import pandas as pd

__all__ = [
    "CLEAR_RESIDUAL",
    "MIGRATIONS",
    "AddResult",
    "ClearResidual",
    "SchemaTooNew",
    "SessionStore",
    "StoreError",
    "TaskState",
    "UnknownSeq",
    "UpdateIdConflict",
]

# One entry per schema version: MIGRATIONS[i] takes a database from version i to i + 1.
# Append only; never edit a released entry (stations upgrade in place).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE sessions (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id TEXT NOT NULL UNIQUE,
            station_id TEXT NOT NULL,
            start_unix_ms INTEGER NOT NULL,
            end_unix_ms INTEGER NOT NULL,
            timezone TEXT NOT NULL,
            energy_kwh REAL NOT NULL,
            vehicle_id TEXT,
            charging_time_h REAL,
            connector TEXT,
            charger_model TEXT,
            latitude REAL,
            longitude REAL,
            received_unix_ms INTEGER NOT NULL
        )""",
        """CREATE TABLE task_state (
            task_id TEXT PRIMARY KEY,
            watermark INTEGER NOT NULL DEFAULT 0,
            trained_version INTEGER NOT NULL DEFAULT -1,
            serving_version INTEGER NOT NULL DEFAULT -1,
            updates_sent INTEGER NOT NULL DEFAULT 0,
            last_announcement BLOB,
            last_compatibility TEXT NOT NULL DEFAULT ''
        )""",
        """CREATE TABLE pending_updates (
            update_id TEXT PRIMARY KEY,
            task_id TEXT NOT NULL REFERENCES task_state (task_id),
            payload BLOB NOT NULL,
            created_unix_ms INTEGER NOT NULL
        )""",
        "CREATE INDEX pending_updates_by_task ON pending_updates (task_id)",
        """CREATE TABLE rejections (
            reason TEXT PRIMARY KEY,
            count INTEGER NOT NULL
        )""",
    ),
    # A delivered update is kept (marked sent) until the task's next update is delivered: a
    # broker that restarted empty lost it, and the station re-sends it when the round is
    # announced again.
    ("ALTER TABLE pending_updates ADD COLUMN sent_unix_ms INTEGER",),
    # Top-k error feedback: what a task's last update did not send, added to its next delta.
    # One row per task; ``update_id`` is the pending update it was computed with. The arrays
    # are a TensorBundle (proto.tensor_codec), never a pickle.
    (
        """CREATE TABLE update_residuals (
            task_id TEXT PRIMARY KEY REFERENCES task_state (task_id),
            update_id TEXT NOT NULL,
            bundle BLOB NOT NULL
        )""",
    ),
)

_STORED_COLUMNS = (
    "session_id",
    "station_id",
    "start_unix_ms",
    "end_unix_ms",
    "timezone",
    "energy_kwh",
    "vehicle_id",
    "charging_time_h",
    "connector",
    "charger_model",
    "latitude",
    "longitude",
)
_SELECT_SESSIONS = f"SELECT seq, {', '.join(_STORED_COLUMNS)} FROM sessions"
_INSERT_SESSION = (
    f"INSERT INTO sessions ({', '.join(_STORED_COLUMNS)}, received_unix_ms) "
    f"VALUES ({', '.join('?' * (len(_STORED_COLUMNS) + 1))}) "
    "ON CONFLICT (session_id) DO NOTHING"
)


class ClearResidual(Enum):
    """Tells :meth:`SessionStore.put_pending_update` to delete the task's residual."""

    CLEAR = "clear"


# An update that is not top-k carries no residual; a stale one must not leak into a later
# top-k round (its base and the updates since would not match it).
CLEAR_RESIDUAL: Final = ClearResidual.CLEAR


class StoreError(Exception):
    """The session store cannot do what was asked; the message names the file or id."""


class SchemaTooNew(StoreError):
    """The database was written by a newer evfl; opening it could corrupt it."""


class UnknownSeq(StoreError):
    """A seq asked for is not in the store."""


class UpdateIdConflict(StoreError):
    """An update id is already pending with a different task or payload."""


@dataclass(frozen=True)
class AddResult:
    """Ids newly stored and ids already present (both durable once ``add`` returns)."""

    committed: tuple[str, ...]
    duplicate: tuple[str, ...]


@dataclass(frozen=True)
class TaskState:
    """What a station has done for one federated task; persisted so a restart resumes it."""

    task_id: str
    watermark: int = 0  # last sessions.seq trained on
    trained_version: int = -1
    serving_version: int = -1
    updates_sent: int = 0
    last_announcement: bytes | None = None  # raw bytes, so serving survives a restart
    last_compatibility: str = ""


_TASK_FIELDS = tuple(f.name for f in fields(TaskState))
_UPDATABLE_TASK_FIELDS = frozenset(_TASK_FIELDS) - {"task_id"}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _session_row(s: Session, received_unix_ms: int) -> tuple[Any, ...]:
    return (
        s.session_id,
        s.station_id,
        to_unix_ms(s.start),
        to_unix_ms(s.end),
        zone_name(s.start.tzinfo),
        s.energy_kwh,
        s.vehicle_id,
        s.charging_time_h,
        s.connector,
        s.charger_model,
        s.latitude,
        s.longitude,
        received_unix_ms,
    )


def _residual_bytes(arrays: Sequence[np.ndarray]) -> bytes:
    return bundle_to_bytes([np.asarray(a) for a in arrays])


def _residual_arrays(data: bytes) -> list[np.ndarray]:
    # Our own rows: a model's weights fit the wire limits, so its residual does too.
    return [array for _, array in bundle_from_bytes(data)]


def _to_frame(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    """Rows of ``_SELECT_SESSIONS`` as a frame typed like ``to_session_frame`` output."""
    import pandas as pd

    raw = pd.DataFrame.from_records(rows, columns=["seq", *_STORED_COLUMNS])
    zones = set(raw["timezone"])
    zone = zones.pop() if len(zones) == 1 else "UTC"
    out = pd.DataFrame(index=raw.index)
    for name in SESSION_COLUMNS:
        if name in TIME_COLUMNS:
            ms = raw[f"{name}_unix_ms"].astype("int64")
            out[name] = pd.to_datetime(ms, unit="ms", utc=True).dt.as_unit("us").dt.tz_convert(zone)
        elif name in STRING_COLUMNS:
            out[name] = raw[name].astype("string")
        elif name in FLOAT_COLUMNS:
            out[name] = pd.to_numeric(raw[name]).astype("float64")
    out["seq"] = raw["seq"].astype("int64")
    return out


class SessionStore(SqliteStore):
    """One station's SQLite store. Open with a path; use as a context manager or ``close()``."""

    NAME = "store"
    FOREIGN_KEYS = True
    UNAVAILABLE = StoreError
    TOO_NEW = SchemaTooNew

    def migrations(self) -> Sequence[Sequence[str]]:
        return MIGRATIONS  # read at open time: tests may add a migration

    # --- sessions -----------------------------------------------------------------------

    def add(self, sessions: Sequence[Session]) -> AddResult:
        """Store sessions in one transaction, committed before returning.

        A session whose id is already stored (or appears earlier in ``sessions``) is a
        duplicate: not stored again, even if its content differs. Sessions must already be
        valid (:func:`models.datasets.validation.validate_session`).
        """
        received = _now_ms()
        rows = [(s.session_id, _session_row(s, received)) for s in sessions]
        committed: list[str] = []
        duplicate: list[str] = []
        with self._write() as cur:
            for session_id, row in rows:
                cur.execute(_INSERT_SESSION, row)
                (committed if cur.rowcount == 1 else duplicate).append(session_id)
        return AddResult(tuple(committed), tuple(duplicate))

    def count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM sessions")[0][0])

    def max_seq(self) -> int:
        """The newest seq, 0 when the store is empty."""
        return int(self._read("SELECT COALESCE(MAX(seq), 0) FROM sessions")[0][0])

    def frame(self, after_seq: int = 0, until_seq: int | None = None) -> pd.DataFrame:
        """Sessions with ``after_seq < seq <= until_seq`` as SESSION_COLUMNS plus ``seq``.

        Times are in the sessions' zone, or UTC if the selected sessions have several zones.
        """
        until = until_seq if until_seq is not None else 2**63 - 1
        rows = self._read(
            f"{_SELECT_SESSIONS} WHERE seq > ? AND seq <= ? ORDER BY seq", (after_seq, until)
        )
        return _to_frame(rows)

    def sample_seqs(self, until_seq: int, n: int, seed: int) -> list[int]:
        """A uniform sample (without replacement, sorted) of ``n`` stored seqs <= ``until_seq``;
        all of them if fewer are stored. The same seed and store give the same sample."""
        if n < 0:
            raise ValueError(f"sample size must be >= 0, got {n}")
        seqs = [r[0] for r in self._read("SELECT seq FROM sessions WHERE seq <= ?", (until_seq,))]
        seqs.sort()
        return sorted(random.Random(seed).sample(seqs, min(n, len(seqs))))

    def frame_for_seqs(self, seqs: Iterable[int]) -> pd.DataFrame:
        """The sessions with these seqs, ordered by seq; raises :class:`UnknownSeq` if any is
        missing."""
        wanted = sorted({int(s) for s in seqs})
        rows = self._read(
            f"{_SELECT_SESSIONS} WHERE seq IN (SELECT value FROM json_each(?)) ORDER BY seq",
            (json.dumps(wanted),),
        )
        if len(rows) != len(wanted):
            missing = sorted(set(wanted) - {r[0] for r in rows})
            raise UnknownSeq(f"{self.path}: no session with seq {missing[:10]}")
        return _to_frame(rows)

    # --- rejections ---------------------------------------------------------------------

    def count_rejection(self, reason: str, n: int = 1) -> None:
        """Add ``n`` sessions refused at upload for ``reason``."""
        if n < 0:
            raise ValueError(f"rejection count must be >= 0, got {n}")
        with self._write() as cur:
            cur.execute(
                "INSERT INTO rejections (reason, count) VALUES (?, ?) "
                "ON CONFLICT (reason) DO UPDATE SET count = count + excluded.count",
                (reason, n),
            )

    def rejections(self) -> dict[str, int]:
        return dict(self._read("SELECT reason, count FROM rejections ORDER BY reason"))

    # --- task state ---------------------------------------------------------------------

    def task_state(self, task_id: str) -> TaskState:
        """The stored state of a task, or the defaults for a task never seen."""
        rows = self._read(
            f"SELECT {', '.join(_TASK_FIELDS)} FROM task_state WHERE task_id = ?", (task_id,)
        )
        return TaskState(*rows[0]) if rows else TaskState(task_id)

    def update_task_state(self, task_id: str, **changes: Any) -> TaskState:
        """Set some fields of a task's state in one atomic upsert; returns the new state."""
        with self._write() as cur:
            _upsert_task_state(cur, task_id, changes)
            row = cur.execute(
                f"SELECT {', '.join(_TASK_FIELDS)} FROM task_state WHERE task_id = ?", (task_id,)
            ).fetchone()
        return TaskState(*row)

    def task_ids(self) -> list[str]:
        return [r[0] for r in self._read("SELECT task_id FROM task_state ORDER BY task_id")]

    # --- pending updates ----------------------------------------------------------------

    def put_pending_update(
        self,
        update_id: str,
        task_id: str,
        payload: bytes,
        *,
        residual: Sequence[np.ndarray] | Literal[ClearResidual.CLEAR] | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        """Keep an update until its delivery is confirmed. Putting the same update again is a
        no-op; reusing its id for another task or payload raises :class:`UpdateIdConflict`.

        ``residual`` is the task's error-feedback state, written in the same transaction:
        arrays replace the stored residual, :data:`CLEAR_RESIDUAL` deletes it, None (the
        default) leaves it as it is. ``state`` sets task-state fields in the same transaction
        (the trained version and watermark: a crash cannot keep the update and lose the fact
        that its round was trained, which would train it again and add the residual twice).
        A conflict changes neither the updates, the residual nor the state.
        """
        bundle = (
            None if residual is None or residual is CLEAR_RESIDUAL else _residual_bytes(residual)
        )
        with self._write() as cur:
            cur.execute(
                "INSERT INTO task_state (task_id) VALUES (?) ON CONFLICT DO NOTHING", (task_id,)
            )
            cur.execute(
                "INSERT INTO pending_updates (update_id, task_id, payload, created_unix_ms) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (update_id) DO NOTHING",
                (update_id, task_id, bytes(payload), _now_ms()),
            )
            if cur.rowcount == 0:
                stored = cur.execute(
                    "SELECT task_id, payload FROM pending_updates WHERE update_id = ?",
                    (update_id,),
                ).fetchone()
                if tuple(stored) != (task_id, bytes(payload)):
                    raise UpdateIdConflict(
                        f"update {update_id} is already pending with another task or payload"
                    )
            if state:
                _upsert_task_state(cur, task_id, state)
            if residual is CLEAR_RESIDUAL:
                cur.execute("DELETE FROM update_residuals WHERE task_id = ?", (task_id,))
            elif bundle is not None:
                cur.execute(
                    "INSERT INTO update_residuals (task_id, update_id, bundle) VALUES (?, ?, ?) "
                    "ON CONFLICT (task_id) DO UPDATE SET "
                    "update_id = excluded.update_id, bundle = excluded.bundle",
                    (task_id, update_id, bundle),
                )

    def residual(self, task_id: str) -> list[np.ndarray] | None:
        """The error-feedback residual stored with the task's latest update, else None."""
        rows = self._read("SELECT bundle FROM update_residuals WHERE task_id = ?", (task_id,))
        return _residual_arrays(bytes(rows[0][0])) if rows else None

    def pending_updates(self, task_id: str | None = None) -> list[tuple[str, str, bytes]]:
        """``(update_id, task_id, payload)`` not yet confirmed, oldest first."""
        sql = "SELECT update_id, task_id, payload FROM pending_updates WHERE sent_unix_ms IS NULL"
        params: tuple[str, ...] = ()
        if task_id is not None:
            sql += " AND task_id = ?"
            params = (task_id,)
        return [(u, t, bytes(p)) for u, t, p in self._read(f"{sql} ORDER BY rowid", params)]

    def confirm_update(self, update_id: str) -> bool:
        """Mark a pending update delivered; False if it was not pending (a repeated
        confirmation). It stays readable by :meth:`sent_update` until the next update of its
        task is confirmed."""
        with self._write() as cur:
            cur.execute(
                "UPDATE pending_updates SET sent_unix_ms = ? "
                "WHERE update_id = ? AND sent_unix_ms IS NULL",
                (_now_ms(), update_id),
            )
            if cur.rowcount != 1:
                return False
            cur.execute(
                "DELETE FROM pending_updates WHERE sent_unix_ms IS NOT NULL AND update_id != ? "
                "AND task_id = (SELECT task_id FROM pending_updates WHERE update_id = ?)",
                (update_id, update_id),
            )
            return True

    def sent_update(self, update_id: str) -> bytes | None:
        """The payload of a delivered update still kept (its task's latest), else None."""
        rows = self._read(
            "SELECT payload FROM pending_updates WHERE update_id = ? AND sent_unix_ms IS NOT NULL",
            (update_id,),
        )
        return bytes(rows[0][0]) if rows else None


def _upsert_task_state(cur: sqlite3.Cursor, task_id: str, changes: Mapping[str, Any]) -> None:
    unknown = set(changes) - _UPDATABLE_TASK_FIELDS
    if unknown:
        raise TypeError(f"TaskState has no updatable field(s) {sorted(unknown)}")
    names = sorted(changes)
    columns = ", ".join(["task_id", *names])
    marks = ", ".join("?" * (len(names) + 1))
    if names:
        sets = ", ".join(f"{n} = excluded.{n}" for n in names)
        conflict = f"DO UPDATE SET {sets}"
    else:
        conflict = "DO NOTHING"
    cur.execute(
        f"INSERT INTO task_state ({columns}) VALUES ({marks}) ON CONFLICT (task_id) {conflict}",
        (task_id, *(changes[n] for n in names)),
    )
