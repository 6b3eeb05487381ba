"""The coordinator's registry: what was committed comes back, numbers are dense, crashes lose
nothing committed and leave nothing half-written."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from coordinator.registry import (
    DB_NAME,
    Registry,
    RegistryCorrupt,
    RegistryLocked,
    RoundConflict,
    SchemaTooNew,
    TaskEnded,
    TaskInfo,
    TaskNotFound,
    TaskSpecChanged,
    VersionConflict,
    VersionNotFound,
)

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"dataset": "dundee", "exits": [1, 2], "rounds": {"min_updates": 2}}


def _weights(v: int) -> list[np.ndarray]:
    return [
        np.full((3, 4), v + 0.5, dtype=np.float32),
        np.arange(5, dtype=np.int64) + v,
        np.array([True, False, True]),
        np.full((2, 1, 2), v, dtype=np.float16),
        np.array(v, dtype=np.float64),
    ]


def _state(v: int) -> list[tuple[str, np.ndarray]]:
    return [("momentum/0", np.linspace(0, 1, 7) * v), ("step", np.array(v, dtype=np.int32))]


def _commit(reg: Registry, v: int, round_: int | None = None, updates=(), task: str = "t"):
    return reg.commit_version(
        task,
        v,
        v if round_ is None else round_,
        _weights(v),
        model_config={"layers": [16, 8], "cut": 1},
        preprocessing={"mean": [0.5, 1.5], "std": [2.0, 3.0]},
        metrics={"mae": np.float32(0.25) / (v + 1), "n": 3},
        exit_policy={"thresholds": [0.9, 0.8]},
        updates=list(updates),
        strategy_state=_state(v),
    )


def _assert_arrays_equal(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)


@pytest.fixture
def reg(tmp_path):
    with Registry(tmp_path / "registry") as r:
        r.create_task("t", SPEC)
        yield r


def test_version_round_trips_across_reopen(tmp_path):
    root = tmp_path / "registry"
    with Registry(root) as reg:
        reg.create_task("t", SPEC)
        assert reg.latest("t") is None
        committed = _commit(reg, 0)
    with Registry(root) as reg:
        latest = reg.latest("t")
        assert latest == committed == reg.version("t", 0)
        assert latest.round == 0
        assert latest.model_config == {"layers": [16, 8], "cut": 1}
        assert latest.preprocessing == {"mean": [0.5, 1.5], "std": [2.0, 3.0]}
        assert latest.metrics == {"mae": 0.25, "n": 3}
        assert latest.exit_policy == {"thresholds": [0.9, 0.8]}
        _assert_arrays_equal(latest.weights(), _weights(0))
        state = latest.strategy_state()
        assert [name for name, _ in state] == ["momentum/0", "step"]
        _assert_arrays_equal([a for _, a in state], [a for _, a in _state(0)])
        summary = reg.versions("t")
        assert [(s.version, s.round, s.update_count) for s in summary] == [(0, 0, 0)]
        assert summary[0].created_unix_ms == latest.created_unix_ms
        with pytest.raises(VersionNotFound):
            reg.version("t", 1)


def test_version_numbers_start_at_zero_and_go_up_by_one(reg):
    with pytest.raises(VersionConflict, match="first version must be 0"):
        _commit(reg, 1)
    _commit(reg, 0)
    with pytest.raises(VersionConflict, match="next must be 1"):
        _commit(reg, 0)  # reuse
    with pytest.raises(VersionConflict, match="next must be 1"):
        _commit(reg, 2)  # skip
    _commit(reg, 1)
    assert [s.version for s in reg.versions("t")] == [0, 1]
    _assert_arrays_equal(reg.version("t", 0).weights(), _weights(0))  # not overwritten
    task_dir = reg.latest("t").weights_file.parent
    assert len(list(task_dir.iterdir())) == 4  # refused commits left no files


def test_create_task_is_idempotent_and_detects_a_changed_spec(reg):
    reg.create_task("t", {"rounds": {"min_updates": 2}, "exits": [1, 2], "dataset": "dundee"})
    with pytest.raises(TaskSpecChanged) as info:
        reg.create_task("t", {**SPEC, "dataset": "perth"})
    assert "dundee" in str(info.value) and "perth" in str(info.value)
    assert reg.task_spec("t") == SPEC
    [task] = reg.tasks()
    assert task == TaskInfo("t", "running", None, None, task.created_unix_ms)
    with pytest.raises(TaskNotFound):
        reg.task_spec("nope")
    with pytest.raises(TaskNotFound):
        reg.latest("nope")


def test_round_resumes_and_closes_with_its_version(tmp_path):
    root = tmp_path / "registry"
    with Registry(root) as reg:
        reg.create_task("t", SPEC)
        _commit(reg, 0)
        opened = reg.open_round("t", 1, base_version=0, deadline_unix_ms=5_000)
        assert reg.record_update("t", 1, "u-a", "st-1", 40, b"a" * 10)
        assert reg.record_update("t", 1, "u-b", "st-2", 60, b"b")
        with pytest.raises(RoundConflict):
            _commit(reg, 1, round_=2)  # round 1 is open
    with Registry(root) as reg:
        again = reg.open_round("t", 1, base_version=0, deadline_unix_ms=9_999)
        assert again == reg.current_round("t")
        assert (again.deadline_unix_ms, again.opened_unix_ms) == (5_000, opened.opened_unix_ms)
        assert again.update_ids == ("u-a", "u-b")
        assert reg.tasks()[0].current_round == 1
        with pytest.raises(RoundConflict):
            reg.open_round("t", 1, base_version=1, deadline_unix_ms=5_000)
        record = _commit(reg, 1, updates=["u-a", "u-b"])
        assert record.updates == ("u-a", "u-b")
        assert reg.current_round("t") is None
        assert reg.tasks()[0] == TaskInfo("t", "running", 1, None, reg.tasks()[0].created_unix_ms)
        stored = reg.round_updates("t", 1)
        assert [(u.update_id, u.station_id, u.sample_count, u.payload) for u in stored] == [
            ("u-a", "st-1", 40, b"a" * 10),
            ("u-b", "st-2", 60, b"b"),
        ]
        assert reg.versions("t")[1].update_count == 2
        with pytest.raises(RoundConflict):
            reg.open_round("t", 1, base_version=1, deadline_unix_ms=0)  # already committed
        with pytest.raises(RoundConflict):
            reg.open_round("t", 2, base_version=0, deadline_unix_ms=0)  # stale base
        reg.open_round("t", 2, base_version=1, deadline_unix_ms=0)
        reg.open_round("t", 3, base_version=1, deadline_unix_ms=0)  # abandons round 2
        assert reg.current_round("t").round == 3


def test_duplicate_updates_are_detected_across_restarts_and_rounds(tmp_path):
    root = tmp_path / "registry"
    with Registry(root) as reg:
        reg.create_task("t", SPEC)
        reg.open_round("t", 0, base_version=-1, deadline_unix_ms=0)
        assert reg.record_update("t", 0, "u1", "st-1", 10, b"x")
        assert not reg.record_update("t", 0, "u1", "st-1", 10, b"x")
    with Registry(root) as reg:
        assert not reg.record_update("t", 0, "u1", "st-1", 10, b"other")
        _commit(reg, 0, updates=["u1"])
        reg.open_round("t", 1, base_version=0, deadline_unix_ms=0)
        assert not reg.record_update("t", 1, "u1", "st-1", 10, b"x")  # re-sent after its round
        assert reg.seen_update("t", "u1")
        assert not reg.seen_update("t", "u2")
        with pytest.raises(RoundConflict, match="round 1 is open"):
            reg.record_update("t", 0, "u2", "st-1", 10, b"x")  # late for a closed round
        assert reg.current_round("t").update_ids == ()
        assert [u.update_id for u in reg.round_updates("t", 0)] == ["u1"]


def test_concurrent_updates_are_recorded_once(reg):
    reg.open_round("t", 0, base_version=-1, deadline_unix_ms=0)
    results: list[tuple[str, bool]] = []

    def send(worker: int) -> None:
        for i in range(30):
            update_id = f"u{(i + worker) % 40}"
            results.append((update_id, reg.record_update("t", 0, update_id, "st", 1, b"p")))

    threads = [threading.Thread(target=send, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = [u for u, ok in results if ok]
    assert len(accepted) == len(set(accepted)) == len({u for u, _ in results})
    assert len(reg.round_updates("t", 0)) == len(accepted)


def test_refusals_are_counted_by_reason(reg):
    for round_, reason in [(0, "stale"), (0, "stale"), (0, "bad_signature"), (1, "stale")]:
        reg.record_refusal("t", round_, reason, "u", "st-1", "base version 3, round is on 4")
    assert reg.refusals("t") == {"bad_signature": 1, "stale": 3}
    assert reg.refusals("t", 0) == {"bad_signature": 1, "stale": 2}
    assert reg.refusals("t", 7) == {}


def test_corrupt_or_missing_files_are_detected(reg):
    record = _commit(reg, 0)
    data = bytearray(record.weights_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    record.weights_file.write_bytes(bytes(data))
    with pytest.raises(RegistryCorrupt, match="sha256"):
        reg.latest("t").weights()
    record.state_file.unlink()
    with pytest.raises(RegistryCorrupt, match="missing"):
        reg.version("t", 0).strategy_state()


def test_orphan_files_from_a_crash_are_ignored_and_removed(tmp_path):
    root = tmp_path / "registry"
    with Registry(root) as reg:
        reg.create_task("t", SPEC)
        task_dir = _commit(reg, 0).weights_file.parent
    partial = task_dir / ".tmp-v00000001-0123456789ab.weights"
    orphan = task_dir / "v00000001-0123456789ab.weights"
    unrelated = task_dir / "notes.txt"
    partial.write_bytes(b"half a bund")
    orphan.write_bytes(b"renamed, never committed")
    unrelated.write_text("not ours")
    with Registry(root) as reg:
        assert reg.latest("t").version == 0
        assert not partial.exists() and not orphan.exists() and unrelated.exists()
        _assert_arrays_equal(_commit(reg, 1).weights(), _weights(1))


def test_a_second_open_of_the_same_root_is_refused(reg):
    with pytest.raises(RegistryLocked):
        Registry(reg.root)


def test_ended_task_takes_no_more_versions(reg):
    _commit(reg, 0)
    reg.open_round("t", 1, base_version=0, deadline_unix_ms=0)
    reg.end_task("t")
    reg.end_task("t")
    assert reg.tasks()[0].status == "ended"
    assert reg.current_round("t") is None
    with pytest.raises(TaskEnded):
        _commit(reg, 1)
    with pytest.raises(TaskEnded):
        reg.record_update("t", 1, "u", "st", 1, b"")
    assert reg.latest("t").version == 0


def test_a_newer_schema_is_refused(tmp_path):
    root = tmp_path / "registry"
    Registry(root).close()
    with sqlite3.connect(root / DB_NAME) as raw:
        raw.execute("PRAGMA user_version = 99")
    with pytest.raises(SchemaTooNew):
        Registry(root)
    with pytest.raises(SchemaTooNew):  # not RegistryLocked: the failed open let go of the root
        Registry(root)
    with sqlite3.connect(root / DB_NAME) as raw:
        raw.execute("PRAGMA user_version = 1")
    Registry(root).close()


CRASH_CHILD = r"""
import sys
from pathlib import Path

import numpy as np

from coordinator.registry import Registry


def weights(v):
    return [np.full((128, 128), v, dtype=np.float32), np.arange(1000, dtype=np.int64) + v]


with Registry(Path(sys.argv[1])) as reg:
    reg.create_task("t", {"model": "crash"})
    latest = reg.latest("t")
    v = 0 if latest is None else latest.version + 1
    while True:
        updates = []
        if v > 0:
            reg.open_round("t", v, base_version=v - 1, deadline_unix_ms=0)
            reg.record_update("t", v, f"u{v}", "st-1", 10, bytes([v % 256]) * 1000)
            updates = [f"u{v}"]
        reg.commit_version(
            "t", v, v, weights(v), {}, {}, {"v": v}, {}, updates, [("step", np.array(v))]
        )
        print(v, flush=True)
        v += 1
"""


def _crash_weights(v: int) -> list[np.ndarray]:
    return [np.full((128, 128), v, dtype=np.float32), np.arange(1000, dtype=np.int64) + v]


def _kill_child_at_random(root: Path, delay: float, stderr_path: Path) -> list[int]:
    """Run the committing child, SIGKILL it ``delay`` s after its first commit; the versions
    it printed (its acknowledged commits)."""
    with open(stderr_path, "w") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", CRASH_CHILD, str(root)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            assert child.stdout is not None
            lines = [child.stdout.readline()]
            time.sleep(delay)
            os.kill(child.pid, signal.SIGKILL)
            lines += child.stdout.read().splitlines(keepends=True)
        finally:
            child.kill()
            child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL, stderr_path.read_text()
    printed = [int(line) for line in lines if line.endswith("\n")]
    assert printed, stderr_path.read_text()
    return printed


@pytest.mark.timeout(60)
def test_sigkill_at_any_moment_loses_no_committed_version(tmp_path):
    root = tmp_path / "registry"
    rng = random.Random(20240607)
    for attempt in range(5):
        delay = rng.uniform(0.0, 0.4)
        printed = _kill_child_at_random(root, delay, tmp_path / f"child{attempt}.err")
        with Registry(root) as reg:
            latest = reg.latest("t")
            assert latest is not None
            assert latest.version in (printed[-1], printed[-1] + 1), (attempt, delay, printed)
            assert [s.version for s in reg.versions("t")] == list(range(latest.version + 1))
            for n in range(max(0, latest.version - 2), latest.version + 1):
                record = reg.version("t", n)
                _assert_arrays_equal(record.weights(), _crash_weights(n))
                [(name, step)] = record.strategy_state()
                assert name == "step" and int(step) == n
                assert all(reg.seen_update("t", u) for u in record.updates)
            files = sorted(p.name for p in latest.weights_file.parent.iterdir())
            assert len(files) == 2 * (latest.version + 1), files  # no temp or orphan file
            with pytest.raises(VersionConflict):
                reg.commit_version(
                    "t", latest.version, latest.version + 1, [], {}, {}, {}, {}, [], []
                )
            with pytest.raises(VersionConflict):
                reg.commit_version(
                    "t", latest.version + 2, latest.version + 2, [], {}, {}, {}, {}, [], []
                )
            nxt = latest.version + 1
            record = reg.commit_version(
                "t", nxt, nxt, _crash_weights(nxt), {}, {}, {}, {}, [], [("step", np.array(nxt))]
            )
            assert reg.latest("t") == record
    with sqlite3.connect(root / DB_NAME) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
