"""The car's upload queue on real Dundee sessions: what is queued survives a restart, a
session is sent once (re-recording it is a duplicate), acks and refusals remove exactly the
sessions named, and concurrent writers lose nothing."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from agent.upload_queue import QueueSchemaTooNew, Retention, UploadQueue
from models.datasets.record import iter_sessions
from proto import sessions_pb2
from proto.session_codec import session_from_proto
from proto.wire_errors import MalformedMessage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sessions(energy_global):
    """The first 600 real sessions of the busiest Dundee charge point, in time order."""
    return list(iter_sessions(energy_global.station_sessions.head(600)))


@pytest.fixture
def queue(tmp_path):
    with UploadQueue(tmp_path / "queue.sqlite3") as q:
        yield q


def _ids(sessions):
    return [s.session_id for s in sessions]


def test_queued_sessions_come_back_oldest_first_and_decode_to_the_same_session(queue, sessions):
    result = queue.enqueue(sessions[:300])
    assert result.queued == tuple(_ids(sessions[:300])) and not result.duplicate
    assert len(queue) == 300
    pending = queue.pending()
    assert [i for i, _ in pending] == _ids(sessions[:300])
    decoded = [session_from_proto(sessions_pb2.Session.FromString(p)) for _, p in pending]
    assert decoded == sessions[:300]  # aware datetimes compare as instants
    assert [i for i, _ in queue.pending(limit=5)] == _ids(sessions[:5])


def test_a_session_queued_or_uploaded_already_is_a_duplicate(queue, sessions):
    queue.enqueue(sessions[:10])
    again = queue.enqueue([*sessions[5:15], sessions[12]])  # overlap, and 12 twice in one call
    assert again.queued == tuple(_ids(sessions[10:15]))
    assert again.duplicate == (*_ids(sessions[5:10]), sessions[12].session_id)
    assert len(queue) == 15

    assert queue.acknowledge(_ids(sessions[:15])) == 15
    edited = replace(sessions[3], energy_kwh=sessions[3].energy_kwh + 1.0)
    rerecorded = queue.enqueue([sessions[0], edited])  # same ids: the same sessions
    assert rerecorded.duplicate == (sessions[0].session_id, sessions[3].session_id)
    assert len(queue) == 0


def test_acknowledge_removes_exactly_the_named_sessions_and_remembers_them(queue, sessions):
    queue.enqueue(sessions[:100])
    acked = _ids(sessions[10:40])
    assert queue.acknowledge([*acked, "dd:never-queued", acked[0]]) == 30
    assert [i for i, _ in queue.pending()] == _ids(sessions[:10] + sessions[40:100])
    assert queue.uploaded_count() == 30
    assert queue.uploaded_ids() == frozenset(acked)
    assert queue.acknowledge(acked) == 0  # a repeated ack changes nothing
    assert queue.uploaded_count() == 30


def test_a_refused_session_is_set_aside_counted_and_never_sent_again(queue, sessions):
    queue.enqueue(sessions[:20])
    assert queue.reject(sessions[4].session_id, "non_finite_energy")
    assert queue.reject(sessions[7].session_id, "non_finite_energy")
    assert queue.reject(sessions[9].session_id, "other_station")
    assert not queue.reject("dd:never-queued", "other_station")
    assert queue.rejected_counts() == {"non_finite_energy": 2, "other_station": 1}
    pending = [i for i, _ in queue.pending()]
    assert len(pending) == 17 and sessions[4].session_id not in pending
    kept = {i: (reason, payload) for i, reason, payload in queue.rejected()}
    assert kept[sessions[9].session_id][0] == "other_station"
    decoded = session_from_proto(sessions_pb2.Session.FromString(kept[sessions[9].session_id][1]))
    assert decoded == sessions[9]
    assert queue.enqueue([sessions[4]]).duplicate == (sessions[4].session_id,)
    assert queue.uploaded_count() == 0


def test_everything_survives_closing_and_reopening(tmp_path, sessions):
    path = tmp_path / "queue.sqlite3"
    with UploadQueue(path) as q:
        q.enqueue(sessions[:200])
        q.acknowledge(_ids(sessions[:50]))
        q.reject(sessions[60].session_id, "absurd_energy")
        before = q.pending()
    with UploadQueue(path) as q:
        assert q.schema_version == 1
        assert q.pending() == before and len(q) == 149
        assert q.uploaded_count() == 50 and q.uploaded_ids() == frozenset(_ids(sessions[:50]))
        assert q.rejected_counts() == {"absurd_energy": 1}
        result = q.enqueue(sessions[:300])
        assert len(result.duplicate) == 200 and result.queued == tuple(_ids(sessions[200:300]))


def test_a_queue_written_by_a_newer_evfl_is_not_opened(tmp_path):
    path = tmp_path / "queue.sqlite3"
    UploadQueue(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(QueueSchemaTooNew, match="version 99"):
        UploadQueue(path)


def test_a_session_that_cannot_be_encoded_is_named_and_nothing_of_the_call_is_queued(
    queue, sessions
):
    naive = replace(sessions[1], start=sessions[1].start.replace(tzinfo=None))
    with pytest.raises(MalformedMessage, match=sessions[1].session_id):
        queue.enqueue([sessions[0], naive, sessions[2]])
    assert len(queue) == 0


def test_uploaded_ids_are_forgotten_by_age_and_by_count_but_the_totals_stay(tmp_path, sessions):
    now = [1_700_000_000.0]
    retention = Retention(max_age_days=1, max_entries=100)
    with UploadQueue(tmp_path / "q.sqlite3", retention, clock=lambda: now[0]) as q:
        q.enqueue(sessions[:150])
        q.acknowledge(_ids(sessions[:150]))
        assert q.uploaded_ids() == frozenset(_ids(sessions[50:150]))  # the newest 100
        assert q.uploaded_count() == 150

        now[0] += 2 * 86_400
        q.enqueue(sessions[150:160])
        q.acknowledge(_ids(sessions[150:160]))
        assert q.uploaded_ids() == frozenset(_ids(sessions[150:160]))  # the rest aged out
        assert q.uploaded_count() == 160
        # Forgotten, so queued again; the station would answer "duplicate", which is harmless.
        assert q.enqueue([sessions[0]]).queued == (sessions[0].session_id,)


def test_concurrent_recording_and_acknowledging_lose_nothing_and_send_nothing_twice(
    queue, sessions
):
    slices = [sessions[i : i + 200] for i in (0, 100, 200, 300, 400)]  # overlapping writers
    queued: list[str] = []
    acked: list[str] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def record(part):
        try:
            for i in range(0, len(part), 20):
                queued.extend(queue.enqueue(part[i : i + 20]).queued)
        except BaseException as exc:
            errors.append(exc)

    def drain():
        try:
            while not done.is_set() or len(queue):
                ids = [i for i, _ in queue.pending(limit=37)]
                if queue.acknowledge(ids) != len(ids):
                    raise AssertionError("a pending session vanished before its ack")
                acked.extend(ids)
        except BaseException as exc:
            errors.append(exc)

    drainer = threading.Thread(target=drain)
    drainer.start()
    writers = [threading.Thread(target=record, args=(part,)) for part in slices]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    drainer.join()
    assert not errors
    everything = set(_ids(sessions))
    assert sorted(queued) == sorted(everything)  # each real session queued exactly once
    assert sorted(acked) == sorted(everything)  # and acknowledged exactly once
    assert len(queue) == 0 and queue.uploaded_count() == len(everything)


def test_the_queue_imports_neither_pandas_nor_tensorflow():
    script = (
        "import sys, agent.upload_queue\n"
        "heavy = {'pandas', 'tensorflow', 'keras'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=60)
