"""The car's durable queue of charging sessions waiting to be uploaded to a station.

A session is queued as its serialized ``evfl.v1.Session`` message, keyed by session id, and
leaves the queue only when a station has acknowledged it (``acknowledge``: stored) or refused
it (``reject``: kept aside for inspection, never re-sent). SQLite in WAL mode with
``synchronous=FULL``, every write committed before it returns, so a session recorded before a
power cut is still queued after it, and one acknowledged is never sent again.

Uploaded ids are remembered, so a session the car records a second time (a replayed log, a
re-synced charger) is a duplicate and not re-sent. That memory is bounded by
:class:`Retention`: ids older than ``max_age_days`` or beyond the newest ``max_entries`` are
pruned at each acknowledgement. A session re-recorded after its id was pruned is queued and
sent again, which is harmless: the station stores by session id and answers "duplicate".

Threads: one connection guarded by one lock (the local API enqueues while the uploader
drains). No pandas or TensorFlow here: this runs on the vehicle.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from models.datasets.record import Session
from proto.session_codec import session_to_proto
from proto.sqlite_store import SqliteStore

__all__ = [
    "MIGRATIONS",
    "EnqueueResult",
    "QueueError",
    "QueueSchemaTooNew",
    "Retention",
    "UploadQueue",
]

# MIGRATIONS[i] takes a database from schema version i to i + 1. Append only: cars upgrade
# their queue in place.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE queue (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id TEXT NOT NULL UNIQUE,
            payload BLOB NOT NULL,
            enqueued_unix_ms INTEGER NOT NULL
        )""",
        """CREATE TABLE uploaded (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id TEXT NOT NULL UNIQUE,
            uploaded_unix_ms INTEGER NOT NULL
        )""",
        "CREATE INDEX uploaded_by_time ON uploaded (uploaded_unix_ms)",
        """CREATE TABLE rejected (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id TEXT NOT NULL UNIQUE,
            payload BLOB NOT NULL,
            reason TEXT NOT NULL,
            rejected_unix_ms INTEGER NOT NULL
        )""",
        "CREATE INDEX rejected_by_time ON rejected (rejected_unix_ms)",
        # Totals survive the pruning of the id tables above.
        """CREATE TABLE totals (
            name TEXT PRIMARY KEY,
            count INTEGER NOT NULL
        )""",
    ),
)

_UPLOADED = "uploaded"
_REJECTED_PREFIX = "rejected:"


class QueueError(Exception):
    """The upload queue cannot do what was asked; the message names the file."""


class QueueSchemaTooNew(QueueError):
    """The queue was written by a newer evfl; opening it could corrupt it."""


@dataclass(frozen=True)
class Retention:
    """How long uploaded (and rejected) session ids are remembered.

    At 100 bytes or so per id, the defaults cap the memory at a few MB on the car's flash:
    far more sessions than a car records in 90 days.
    """

    max_age_days: float = 90.0
    max_entries: int = 50_000

    def __post_init__(self) -> None:
        if self.max_age_days <= 0 or self.max_entries < 1:
            raise ValueError(f"retention must keep something, got {self}")


@dataclass(frozen=True)
class EnqueueResult:
    """Ids newly queued, and ids ignored because already queued, uploaded or rejected."""

    queued: tuple[str, ...]
    duplicate: tuple[str, ...]


class UploadQueue(SqliteStore):
    """A car's SQLite upload queue. Open with a path; use as a context manager or ``close()``."""

    NAME = "queue"
    FOREIGN_KEYS = False
    UNAVAILABLE = QueueError
    TOO_NEW = QueueSchemaTooNew

    def __init__(
        self,
        path: Path,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.retention = retention or Retention()
        self._clock = clock
        super().__init__(path)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def migrations(self) -> Sequence[Sequence[str]]:
        return MIGRATIONS  # read at open time: tests may add a migration

    # --- the queue ----------------------------------------------------------------------

    def enqueue(self, sessions: Sequence[Session]) -> EnqueueResult:
        """Queue sessions in one transaction, committed before returning.

        A session whose id is queued, uploaded or rejected already (or earlier in
        ``sessions``) is a duplicate and ignored, even if its content differs. Every session is
        encoded first: one that cannot be (a naive time, a missing id) raises
        :class:`~proto.wire_errors.MalformedMessage` naming it, and nothing is queued.
        """
        encoded = [
            (str(s.session_id), session_to_proto(s).SerializeToString(deterministic=True))
            for s in sessions
        ]
        now = self._now_ms()
        queued: list[str] = []
        duplicate: list[str] = []
        with self._write() as cur:
            for session_id, payload in encoded:
                known = cur.execute(
                    "SELECT 1 FROM uploaded WHERE session_id = ?1 "
                    "UNION ALL SELECT 1 FROM rejected WHERE session_id = ?1 LIMIT 1",
                    (session_id,),
                ).fetchone()
                if known is None:
                    cur.execute(
                        "INSERT INTO queue (session_id, payload, enqueued_unix_ms) "
                        "VALUES (?, ?, ?) ON CONFLICT (session_id) DO NOTHING",
                        (session_id, payload, now),
                    )
                (queued if known is None and cur.rowcount == 1 else duplicate).append(session_id)
        return EnqueueResult(tuple(queued), tuple(duplicate))

    def pending(self, limit: int | None = None) -> list[tuple[str, bytes]]:
        """``(session_id, serialized Session)`` still to upload, oldest first."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        rows = self._read(
            "SELECT session_id, payload FROM queue ORDER BY seq LIMIT ?",
            (-1 if limit is None else limit,),
        )
        return [(session_id, bytes(payload)) for session_id, payload in rows]

    def acknowledge(self, session_ids: Iterable[str]) -> int:
        """Remove these sessions (a station stored them) and remember them as uploaded.

        Returns how many were queued; ids not in the queue (a repeated ack) are ignored.
        """
        wanted = json.dumps(sorted(set(session_ids)))
        now = self._now_ms()
        with self._write() as cur:
            cur.execute(
                "INSERT INTO uploaded (session_id, uploaded_unix_ms) "
                "SELECT session_id, ? FROM queue "
                "WHERE session_id IN (SELECT value FROM json_each(?)) ORDER BY seq "
                "ON CONFLICT (session_id) DO UPDATE SET "
                "uploaded_unix_ms = excluded.uploaded_unix_ms",
                (now, wanted),
            )
            cur.execute(
                "DELETE FROM queue WHERE session_id IN (SELECT value FROM json_each(?))", (wanted,)
            )
            removed = cur.rowcount
            self._add_total(cur, _UPLOADED, removed)
            self._prune(cur, "uploaded", "uploaded_unix_ms", now)
        return removed

    def reject(self, session_id: str, reason: str) -> bool:
        """Move a queued session aside (a station refused it for ``reason``): kept for
        inspection, counted, never sent again. False if it was not queued."""
        now = self._now_ms()
        with self._write() as cur:
            row = cur.execute(
                "SELECT payload FROM queue WHERE session_id = ?", (session_id,)
            ).fetchone()
            if row is None:
                return False
            cur.execute(
                "INSERT INTO rejected (session_id, payload, reason, rejected_unix_ms) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (session_id) DO UPDATE SET "
                "payload = excluded.payload, reason = excluded.reason, "
                "rejected_unix_ms = excluded.rejected_unix_ms",
                (session_id, row[0], reason, now),
            )
            cur.execute("DELETE FROM queue WHERE session_id = ?", (session_id,))
            self._add_total(cur, _REJECTED_PREFIX + reason, 1)
            self._prune(cur, "rejected", "rejected_unix_ms", now)
        return True

    @staticmethod
    def _add_total(cur: sqlite3.Cursor, name: str, n: int) -> None:
        if n:
            cur.execute(
                "INSERT INTO totals (name, count) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET count = count + excluded.count",
                (name, n),
            )

    def _prune(self, cur: sqlite3.Cursor, table: str, time_column: str, now_ms: int) -> None:
        """Forget ids beyond the retention (``table`` and ``time_column`` are ours, not input)."""
        oldest = now_ms - int(self.retention.max_age_days * 86_400_000)
        cur.execute(f"DELETE FROM {table} WHERE {time_column} < ?", (oldest,))
        cur.execute(
            f"DELETE FROM {table} WHERE seq <= ("
            f"SELECT seq FROM {table} ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            (self.retention.max_entries,),
        )

    # --- inspection ---------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM queue")[0][0])

    def uploaded_count(self) -> int:
        """Sessions ever acknowledged by a station (not reduced by pruning)."""
        rows = self._read("SELECT count FROM totals WHERE name = ?", (_UPLOADED,))
        return int(rows[0][0]) if rows else 0

    def uploaded_ids(self) -> frozenset[str]:
        """The uploaded ids still remembered (see :class:`Retention`)."""
        return frozenset(r[0] for r in self._read("SELECT session_id FROM uploaded"))

    def rejected_counts(self) -> dict[str, int]:
        """Sessions ever refused by a station, by reason (not reduced by pruning)."""
        rows = self._read(
            "SELECT name, count FROM totals WHERE name LIKE ? ORDER BY name",
            (_REJECTED_PREFIX + "%",),
        )
        return {name[len(_REJECTED_PREFIX) :]: int(count) for name, count in rows}

    def rejected(self) -> list[tuple[str, str, bytes]]:
        """``(session_id, reason, serialized Session)`` of the refused sessions still kept."""
        rows = self._read("SELECT session_id, reason, payload FROM rejected ORDER BY seq")
        return [(session_id, reason, bytes(payload)) for session_id, reason, payload in rows]
