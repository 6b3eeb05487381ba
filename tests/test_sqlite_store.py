"""The shared SQLite discipline: a commit that fails is rolled back and the store goes on."""

from __future__ import annotations

import sqlite3

import pytest

from proto.sqlite_store import SqliteStore


class _Store(SqliteStore):
    NAME = "test store"
    FOREIGN_KEYS = True

    def migrations(self):
        return [
            [
                "CREATE TABLE parent (id INTEGER PRIMARY KEY)",
                "CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER "
                "REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)",
            ]
        ]


def test_a_failed_commit_is_rolled_back_and_the_next_write_works(tmp_path):
    with _Store(tmp_path / "s.sqlite3") as store:
        # a deferred foreign key is checked at COMMIT: the commit itself fails
        with pytest.raises(sqlite3.IntegrityError), store._write() as cur:
            cur.execute("INSERT INTO child VALUES (1, 42)")
        assert not store._conn.in_transaction
        assert store._read("SELECT COUNT(*) FROM child") == [(0,)]
        with store._write() as cur:
            cur.execute("INSERT INTO parent VALUES (42)")
            cur.execute("INSERT INTO child VALUES (1, 42)")
        assert store._read("SELECT parent FROM child") == [(42,)]


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "s.sqlite3"
    _Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(RuntimeError, match=r"schema version 7.*another test store path"):
        _Store(path)
