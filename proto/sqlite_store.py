"""The durable local store under the programs' queues of wire records (sessions, updates).

A station commits sessions before it acks them; a car deletes queued sessions only after the
station's ack. Both need the same SQLite discipline, kept here once: WAL with
``synchronous=FULL`` (a commit survives power loss), schema versions in ``user_version`` with
append-only migrations applied in one transaction (a newer database is refused, never
downgraded), one connection behind a lock, explicit write transactions.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self


class SqliteStore:
    """Subclasses name their migrations and the errors a caller should see."""

    NAME: ClassVar[str] = "store"  # for messages: "... use another store path"
    FOREIGN_KEYS: ClassVar[bool] = False
    UNAVAILABLE: ClassVar[type[Exception]] = RuntimeError  # WAL cannot be turned on
    TOO_NEW: ClassVar[type[Exception]] = RuntimeError  # the database is newer than the code

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        self._conn = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        try:
            self._configure()
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    def migrations(self) -> Sequence[Sequence[str]]:
        """migrations()[i] takes a database from schema version i to i + 1."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def _configure(self) -> None:
        mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise self.UNAVAILABLE(f"{self.path}: WAL journal mode is unavailable (got {mode!r})")
        self._conn.execute("PRAGMA synchronous=FULL")
        if self.FOREIGN_KEYS:
            self._conn.execute("PRAGMA foreign_keys=ON")

    def _migrate(self) -> None:
        migrations = self.migrations()
        with self._write() as cur:
            version = cur.execute("PRAGMA user_version").fetchone()[0]
            if version > len(migrations):
                raise self.TOO_NEW(
                    f"{self.path} has schema version {version}, but this evfl knows versions "
                    f"up to {len(migrations)}; upgrade evfl or use another {self.NAME} path"
                )
            for target, statements in enumerate(migrations[version:], start=version + 1):
                for statement in statements:
                    cur.execute(statement)
                cur.execute(f"PRAGMA user_version = {int(target)}")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction, committed (durably) on exit, rolled back on error."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
                cur.execute("COMMIT")  # inside: a failed commit (disk full) is rolled back too
            except BaseException:
                if self._conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()
