"""The station's session store: durable, idempotent, and what it returns is what went in."""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from fog_node import session_store
from fog_node.session_store import (
    CLEAR_RESIDUAL,
    AddResult,
    SchemaTooNew,
    SessionStore,
    TaskState,
    UnknownSeq,
    UpdateIdConflict,
)
from models.datasets.record import SESSION_COLUMNS, Session, iter_sessions
from proto.tensor_codec import bundle_from_bytes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def real_frame(dundee) -> pd.DataFrame:
    """2000 real Dundee sessions from late October 2017, across the clock change."""
    frame = dundee.sessions
    start = frame.index[frame["start"] >= "2017-10-20"][0]
    return frame.iloc[start : start + 2000].reset_index(drop=True)


@pytest.fixture(scope="module")
def real(real_frame) -> list[Session]:
    return list(iter_sessions(real_frame))


@pytest.fixture
def store(tmp_path):
    with SessionStore(tmp_path / "station.db") as s:
        yield s


def _ids(sessions: list[Session]) -> tuple[str, ...]:
    return tuple(s.session_id for s in sessions)


def test_add_twice_stores_once(store, real):
    first = store.add(real[:500])
    assert first == AddResult(committed=_ids(real[:500]), duplicate=())
    again = store.add(real[:500])
    assert again == AddResult(committed=(), duplicate=_ids(real[:500]))
    assert store.count() == 500
    assert store.max_seq() == 500


def test_duplicates_within_one_call_and_changed_content(store, real):
    result = store.add([*real[:10], *real[:3]])
    assert result.committed == _ids(real[:10])
    assert result.duplicate == _ids(real[:3])
    edited = dataclasses.replace(real[0], energy_kwh=real[0].energy_kwh + 1)
    assert store.add([edited]).duplicate == (real[0].session_id,)
    assert store.frame()["energy_kwh"].iloc[0] == real[0].energy_kwh


def test_empty_store(store):
    assert store.count() == 0
    assert store.max_seq() == 0
    frame = store.frame()
    assert list(frame.columns) == [*SESSION_COLUMNS, "seq"]
    assert frame.empty
    assert store.sample_seqs(until_seq=10, n=5, seed=0) == []


def test_frame_round_trips_the_session_frame(store, real, real_frame):
    crossing = [s for s in real if s.start.utcoffset() != s.end.utcoffset()]
    assert crossing, "the slice must hold sessions that span the clock change"
    store.add(real)
    frame = store.frame()
    assert list(frame.columns) == [*SESSION_COLUMNS, "seq"]
    assert frame["seq"].dtype == "int64"
    assert frame["seq"].tolist() == list(range(1, len(real) + 1))
    pd.testing.assert_frame_equal(frame.drop(columns="seq"), real_frame)


def test_frame_slices_by_seq(store, real, real_frame):
    store.add(real[:100])
    part = store.frame(after_seq=40, until_seq=60)
    assert part["seq"].tolist() == list(range(41, 61))
    expected = real_frame.iloc[40:60].reset_index(drop=True)
    pd.testing.assert_frame_equal(part.drop(columns="seq"), expected)
    assert store.frame(after_seq=100).empty


def test_mixed_zones_come_back_in_utc(store, real):
    """A real session re-expressed in another zone (same instants) forces a UTC frame."""
    la = ZoneInfo("America/Los_Angeles")
    moved = dataclasses.replace(
        real[1], start=real[1].start.astimezone(la), end=real[1].end.astimezone(la)
    )
    store.add([real[0], moved])
    frame = store.frame()
    assert str(frame["start"].dt.tz) == "UTC"
    assert frame["start"].iloc[1] == pd.Timestamp(real[1].start)
    assert str(store.frame(until_seq=1)["start"].dt.tz) == "Europe/London"


def test_replay_sample(store, real, real_frame):
    store.add(real[:300])
    sample = store.sample_seqs(until_seq=200, n=50, seed=7)
    assert sample == store.sample_seqs(until_seq=200, n=50, seed=7)
    assert sample != store.sample_seqs(until_seq=200, n=50, seed=8)
    assert len(set(sample)) == 50
    assert all(1 <= q <= 200 for q in sample)
    assert store.sample_seqs(until_seq=20, n=50, seed=7) == list(range(1, 21))
    frame = store.frame_for_seqs(reversed(sample))
    assert frame["seq"].tolist() == sorted(sample)
    expected = real_frame.iloc[[q - 1 for q in sorted(sample)]].reset_index(drop=True)
    pd.testing.assert_frame_equal(frame.drop(columns="seq"), expected)
    with pytest.raises(UnknownSeq, match="301"):
        store.frame_for_seqs([1, 301])


def test_wal_mode_and_schema_version(store):
    assert store.schema_version == len(session_store.MIGRATIONS)
    with sqlite3.connect(store.path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(session_store.MIGRATIONS)
    conn = store._conn  # per-connection settings can only be read on the store's connection
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_refuses_a_database_from_a_newer_evfl(tmp_path):
    path = tmp_path / "station.db"
    SessionStore(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {len(session_store.MIGRATIONS) + 1}")
    with pytest.raises(SchemaTooNew, match="schema version"):
        SessionStore(path)


def test_new_migrations_apply_in_order_and_keep_data(tmp_path, real, monkeypatch):
    path = tmp_path / "station.db"
    with SessionStore(path) as store:
        store.add(real[:5])
    added = ("ALTER TABLE sessions ADD COLUMN note TEXT",)
    monkeypatch.setattr(session_store, "MIGRATIONS", (*session_store.MIGRATIONS, added))
    with SessionStore(path) as store:
        assert store.schema_version == len(session_store.MIGRATIONS)
        assert store.count() == 5
    with sqlite3.connect(path) as raw:
        columns = [row[1] for row in raw.execute("PRAGMA table_info(sessions)")]
    assert "note" in columns


def test_failed_migration_rolls_back(tmp_path, monkeypatch):
    path = tmp_path / "station.db"
    SessionStore(path).close()
    version = len(session_store.MIGRATIONS)
    broken = ("CREATE TABLE half_done (a INTEGER)", "THIS IS NOT SQL")
    monkeypatch.setattr(session_store, "MIGRATIONS", (*session_store.MIGRATIONS, broken))
    with pytest.raises(sqlite3.OperationalError):
        SessionStore(path)
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == version
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "half_done" not in tables


def test_task_state_persists_across_reopen(tmp_path, real):
    path = tmp_path / "station.db"
    with SessionStore(path) as store:
        store.add(real[:50])
        assert store.task_state("demand") == TaskState("demand")
        store.update_task_state("demand", watermark=50, trained_version=3)
        state = store.update_task_state(
            "demand", serving_version=2, last_announcement=b"\x00\x01ann", updates_sent=4
        )
        assert state.watermark == 50
        store.update_task_state("duration", last_compatibility="v2-compatible")
        with pytest.raises(TypeError, match="colour"):
            store.update_task_state("demand", colour="blue")
    with SessionStore(path) as store:
        assert store.task_state("demand") == TaskState(
            "demand",
            watermark=50,
            trained_version=3,
            serving_version=2,
            updates_sent=4,
            last_announcement=b"\x00\x01ann",
        )
        assert store.task_ids() == ["demand", "duration"]
        assert store.frame(after_seq=store.task_state("demand").watermark).empty


def test_pending_updates_until_confirmed(tmp_path):
    path = tmp_path / "station.db"
    with SessionStore(path) as store:
        store.put_pending_update("u1", "demand", b"one")
        store.put_pending_update("u2", "duration", b"two")
        store.put_pending_update("u3", "demand", b"three")
        store.put_pending_update("u1", "demand", b"one")  # a retry is a no-op
        with pytest.raises(UpdateIdConflict, match="u1"):
            store.put_pending_update("u1", "demand", b"other")
        assert store.confirm_update("u1") is True
        assert store.confirm_update("u1") is False
    with SessionStore(path) as store:
        assert store.pending_updates() == [("u2", "duration", b"two"), ("u3", "demand", b"three")]
        assert store.pending_updates("demand") == [("u3", "demand", b"three")]
        assert set(store.task_ids()) == {"demand", "duration"}


def test_rejections_are_counted_and_kept(tmp_path):
    path = tmp_path / "station.db"
    with SessionStore(path) as store:
        store.count_rejection("absurd_energy")
        store.count_rejection("absurd_energy", 2)
        store.count_rejection("naive_time")
    with SessionStore(path) as store:
        assert store.rejections() == {"absurd_energy": 3, "naive_time": 1}


def test_concurrent_adds_lose_nothing(store, real):
    """Four threads add their own sessions and race on a shared block of the same ones."""
    shared = real[1000:1100]
    own = [real[k * 250 : (k + 1) * 250] for k in range(4)]
    results: list[list[AddResult]] = [[] for _ in range(4)]
    barrier = threading.Barrier(4)

    def work(k: int) -> None:
        barrier.wait()
        for i in range(0, 250, 25):
            results[k].append(store.add(own[k][i : i + 25]))
            results[k].append(store.add(shared[i // 25 * 10 : i // 25 * 10 + 10]))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    committed = [sid for rs in results for r in rs for sid in r.committed]
    assert len(committed) == len(set(committed)) == 1100
    assert set(committed) == set(_ids(real[:1000] + shared))
    assert store.count() == 1100
    assert store.frame()["session_id"].is_unique


CRASH_CHILD = """
import pickle, sys, time
from pathlib import Path
from fog_node.session_store import SessionStore
sessions = pickle.loads(Path(sys.argv[1]).read_bytes())
store = SessionStore(Path(sys.argv[2]))
for i in range(0, len(sessions), 10):
    print(" ".join(store.add(sessions[i : i + 10]).committed), flush=True)
time.sleep(60)
"""


def test_acked_sessions_survive_sigkill(tmp_path, real):
    """Every id the child printed (its 'ack') is stored exactly once after a hard kill."""
    batch = tmp_path / "sessions.pickle"
    batch.write_bytes(pickle.dumps(real))
    path = tmp_path / "station.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, str(batch), str(path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        lines = [child.stdout.readline() for _ in range(20)]
        os.kill(child.pid, signal.SIGKILL)  # right after the 20th ack, likely mid-transaction
        lines += child.stdout.read().splitlines(keepends=True)
    finally:
        child.kill()
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    acked = {sid for line in lines if line.endswith("\n") for sid in line.split()}
    assert len(acked) >= 200
    with SessionStore(path) as store:
        stored = store.frame()["session_id"]
        assert stored.is_unique
        assert acked <= set(stored)
        assert store.count() == len(stored)
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_module_imports_without_pandas():
    code = "import sys, fog_node.session_store; sys.exit('pandas' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_a_sent_update_is_kept_until_the_tasks_next_one_is_sent(tmp_path):
    """A broker that restarts empty loses delivered updates: the station can send it again."""
    path = tmp_path / "station.db"
    with SessionStore(path) as store:
        store.put_pending_update("s:t:v1", "t", b"one")
        store.put_pending_update("s:u:v1", "u", b"other task")
        assert store.sent_update("s:t:v1") is None  # pending, not sent
        assert store.confirm_update("s:t:v1") is True
        assert store.confirm_update("s:u:v1") is True
        assert store.pending_updates() == []
    with SessionStore(path) as store:
        assert store.sent_update("s:t:v1") == b"one"
        store.put_pending_update("s:t:v2", "t", b"two")
        assert store.sent_update("s:t:v1") == b"one"  # until v2 is delivered
        assert store.confirm_update("s:t:v2") is True
        assert store.sent_update("s:t:v1") is None
        assert store.sent_update("s:t:v2") == b"two"
        assert store.sent_update("s:u:v1") == b"other task"  # other tasks keep theirs


def _residual(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(3, 4)).astype(np.float32),
        rng.normal(size=(4,)).astype(np.float32),
        np.float32(rng.normal()) * np.ones((), np.float32),
        rng.normal(size=(2, 1, 5)).astype(np.float64),
    ]


def _assert_same(got: list[np.ndarray] | None, want: list[np.ndarray]) -> None:
    assert got is not None
    assert [(a.shape, a.dtype) for a in got] == [(a.shape, a.dtype) for a in want]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)  # exact: the bundle codec is lossless


def test_a_residual_is_stored_with_its_update_and_replaced_or_cleared(tmp_path):
    path = tmp_path / "station.db"
    first, second = _residual(1), _residual(2)
    with SessionStore(path) as store:
        assert store.residual("t") is None
        store.put_pending_update("s:t:v1", "t", b"one", residual=first)
        _assert_same(store.residual("t"), first)
        store.put_pending_update("s:t:v1", "t", b"one", residual=first)  # a retry: no change
        _assert_same(store.residual("t"), first)
        store.put_pending_update("s:u:v1", "u", b"other task", residual=second)
        store.put_pending_update("s:t:v2", "t", b"two", residual=second)
        _assert_same(store.residual("t"), second)
        store.put_pending_update("s:t:v3", "t", b"three")  # None: the residual stays
        _assert_same(store.residual("t"), second)
    with SessionStore(path) as store:  # survives reopening
        _assert_same(store.residual("t"), second)
        store.put_pending_update("s:t:v4", "t", b"four", residual=CLEAR_RESIDUAL)
        assert store.residual("t") is None
        _assert_same(store.residual("u"), second)  # other tasks keep theirs
        assert [u for u, _, _ in store.pending_updates("t")] == [
            "s:t:v1",
            "s:t:v2",
            "s:t:v3",
            "s:t:v4",
        ]
    with sqlite3.connect(path) as raw:
        rows = raw.execute("SELECT task_id, update_id FROM update_residuals").fetchall()
        assert rows == [("u", "s:u:v1")]
        (blob,) = raw.execute("SELECT bundle FROM update_residuals").fetchone()
    named = bundle_from_bytes(bytes(blob))  # a TensorBundle, not a pickle
    assert [name for name, _ in named] == ["0", "1", "2", "3"]


def test_a_conflicting_update_changes_neither_the_updates_nor_the_residual(tmp_path):
    path = tmp_path / "station.db"
    kept = _residual(1)
    with SessionStore(path) as store:
        store.put_pending_update("s:t:v1", "t", b"one", residual=kept)
        for residual in (_residual(2), CLEAR_RESIDUAL):
            with pytest.raises(UpdateIdConflict, match="s:t:v1"):
                store.put_pending_update("s:t:v1", "t", b"not one", residual=residual)
            _assert_same(store.residual("t"), kept)
    with SessionStore(path) as store:
        assert store.pending_updates() == [("s:t:v1", "t", b"one")]
        _assert_same(store.residual("t"), kept)


def test_an_older_store_gains_the_residual_table_and_keeps_its_updates(tmp_path, monkeypatch):
    path = tmp_path / "station.db"
    with monkeypatch.context() as m:
        m.setattr(session_store, "MIGRATIONS", session_store.MIGRATIONS[:2])
        with SessionStore(path) as old:
            old.put_pending_update("s:t:v1", "t", b"one")
            assert old.schema_version == 2
    with SessionStore(path) as store:
        assert store.schema_version == len(session_store.MIGRATIONS) == 3
        assert store.pending_updates() == [("s:t:v1", "t", b"one")]
        assert store.residual("t") is None
        store.put_pending_update("s:t:v2", "t", b"two", residual=_residual(3))
        _assert_same(store.residual("t"), _residual(3))


def test_an_update_and_its_rounds_trained_state_commit_together(tmp_path):
    """The round's trained version is written with its update, and not at all on a conflict."""
    with SessionStore(tmp_path / "station.db") as store:
        state = {"trained_version": 4, "watermark": 1234}
        store.put_pending_update("s:t:v4", "t", b"four", residual=_residual(1), state=state)
        got = store.task_state("t")
        assert (got.trained_version, got.watermark) == (4, 1234)
        with pytest.raises(UpdateIdConflict):
            store.put_pending_update(
                "s:t:v4", "t", b"other", state={"trained_version": 5, "watermark": 9}
            )
        got = store.task_state("t")
        assert (got.trained_version, got.watermark) == (4, 1234)
        with pytest.raises(TypeError, match="no updatable field"):
            store.put_pending_update("s:t:v6", "t", b"six", state={"colour": 1})
        assert [u for u, _, _ in store.pending_updates("t")] == ["s:t:v4"]
