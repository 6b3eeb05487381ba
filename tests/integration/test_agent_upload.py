"""The vehicle's upload path against real stations: an in-process station gRPC server, and a
real fog process killed with SIGKILL in the middle of a stream.

What a user would notice: every recorded session ends up stored at the station exactly once,
whatever breaks and whenever; a session the car records twice is sent once; a session the
station refuses is set aside with the station's reason, and the good ones around it are kept.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from concurrent import futures
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from agent.upload_queue import UploadQueue
from agent.uploader import Backoff, Uploader, UploadInterrupted, upload
from fog_node.metrics import FogMetrics
from fog_node.service import StationServicer
from fog_node.session_store import SessionStore
from models.datasets.record import iter_sessions
from models.served_partition import ServedVersions
from proto import station_pb2, station_pb2_grpc
from proto.grpc_channel import bind, open_channel
from tests.integration.processes import fog_program, station_status, station_stub

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real_sessions(energy_global):
    """Real sessions of the busiest Dundee charge point, in time order (8,053 of them)."""
    return list(iter_sessions(energy_global.station_sessions.head(6000)))


@pytest.fixture
def queue(tmp_path):
    with UploadQueue(tmp_path / "agent" / "queue.sqlite3") as q:
        yield q


@pytest.fixture
def station(tmp_path, energy_global):
    """A real station gRPC server in this process: (store, port)."""
    store = SessionStore(tmp_path / "station" / "sessions.sqlite3")
    servicer = StationServicer(energy_global.station, [], store, ServedVersions(), FogMetrics())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    station_pb2_grpc.add_StationServiceServicer_to_server(servicer, server)
    port = bind(server, "127.0.0.1:0")
    server.start()
    yield store, port
    server.stop(0)
    store.close()


@pytest.fixture
def stub(station):
    channel = open_channel(f"127.0.0.1:{station[1]}")
    yield station_pb2_grpc.StationServiceStub(channel)
    channel.close()


def _stored_ids(store: SessionStore) -> list[str]:
    return list(store.frame()["session_id"])


class _SlowLink:
    """A station stub whose upload streams leave the car at one batch per ``pause_s`` (a weak
    link): a loopback stream of 6,000 sessions otherwise ends in a quarter of a second, too
    soon to be sure a kill or an unplug lands in the middle of it. The station and the channel
    are real."""

    def __init__(self, stub: station_pb2_grpc.StationServiceStub, pause_s: float) -> None:
        self.UploadSessions = self
        self._call = stub.UploadSessions
        self._pause_s = pause_s

    def future(self, requests, timeout=None):
        def paced():
            for batch in requests:
                time.sleep(self._pause_s)
                yield batch

        return self._call.future(paced(), timeout=timeout)


# --- upload() against an in-process station ---------------------------------------------------


def test_a_thousand_real_sessions_are_stored_and_leave_the_queue(
    queue, station, stub, real_sessions
):
    store, _ = station
    sessions = real_sessions[:1000]
    queue.enqueue(sessions)
    outcome = upload(queue, stub, batch_size=100, max_sessions_per_stream=300)
    assert (outcome.acked, outcome.duplicate, outcome.rejected) == (1000, 0, 0)
    assert (outcome.remaining, outcome.streams) == (0, 4)  # 300 + 300 + 300 + 100
    assert len(queue) == 0 and queue.uploaded_count() == 1000
    assert store.count() == 1000
    assert _stored_ids(store) == [s.session_id for s in sessions]  # in recording order
    assert queue.uploaded_ids() == frozenset(_stored_ids(store))

    # The car records one of them again (a replayed charger log): it is not re-sent.
    assert queue.enqueue([sessions[123]]).duplicate == (sessions[123].session_id,)
    again = upload(queue, stub)
    assert again.streams == 0 and store.count() == 1000


def test_a_refused_session_is_set_aside_with_the_stations_reason_and_its_neighbours_stored(
    queue, station, stub, real_sessions
):
    store, _ = station
    good = real_sessions[:40]
    # Crafted bad case: a real session whose energy reading was lost (NaN).
    bad = replace(real_sessions[40], energy_kwh=float("nan"))
    queue.enqueue([*good[:20], bad, *good[20:]])
    outcome = upload(queue, stub, batch_size=7)
    assert (outcome.acked, outcome.rejected, outcome.remaining) == (40, 1, 0)
    assert queue.rejected_counts() == {"non_finite_energy": 1}
    assert [(i, reason) for i, reason, _ in queue.rejected()] == [
        (bad.session_id, "non_finite_energy")
    ]
    assert _stored_ids(store) == [s.session_id for s in good]
    assert store.rejections() == {"non_finite_energy": 1}
    assert queue.enqueue([bad]).duplicate == (bad.session_id,)  # never re-sent
    assert upload(queue, stub).streams == 0


def test_a_broken_stream_removes_nothing_from_the_queue(queue, real_sessions):
    queue.enqueue(real_sessions[:50])
    channel = open_channel("127.0.0.1:1")  # nothing listens there
    try:
        with pytest.raises(UploadInterrupted) as err:
            upload(queue, station_pb2_grpc.StationServiceStub(channel), timeout_s=5)
    finally:
        channel.close()
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert err.value.outcome.acked == 0
    assert len(queue) == 50 and queue.uploaded_count() == 0


def test_a_cancelled_stream_removes_nothing_and_the_next_one_completes(
    queue, station, stub, real_sessions
):
    store, _ = station
    queue.enqueue(real_sessions[:2000])
    cancel = threading.Event()  # what Uploader sets when the car is unplugged
    result: dict[str, object] = {}

    def stream() -> None:
        try:
            upload(queue, _SlowLink(stub, pause_s=0.02), batch_size=20, cancel=cancel)
        except UploadInterrupted as exc:
            result["error"] = exc

    uploading = threading.Thread(target=stream)
    uploading.start()
    _wait_until(lambda: store.count() >= 200)
    cancel.set()
    uploading.join(10)
    error = result.get("error")
    assert isinstance(error, UploadInterrupted) and error.code == grpc.StatusCode.CANCELLED
    assert len(queue) == 2000  # nothing removed without the station's ack

    committed = store.count()
    outcome = upload(queue, stub)
    assert (outcome.acked, outcome.duplicate, len(queue)) == (2000, committed, 0)
    assert store.count() == 2000


# --- the Uploader thread ----------------------------------------------------------------------


def _wait_until(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def test_the_uploader_backs_off_from_a_dead_station_and_drains_once_plugged_in_at_a_live_one(
    queue, station, real_sessions
):
    store, port = station
    queue.enqueue(real_sessions[:500])
    uploader = Uploader(
        queue, batch_size=50, timeout_s=5, backoff=Backoff(initial_s=0.05, max_s=0.2)
    ).start()
    try:
        assert uploader.target is None
        uploader.plug("127.0.0.1:1")  # a station whose service is down
        _wait_until(lambda: uploader.stats().consecutive_failures >= 3)
        assert isinstance(uploader.last_error, UploadInterrupted)
        assert uploader.last_error.code == grpc.StatusCode.UNAVAILABLE
        assert len(queue) == 500

        uploader.plug(f"127.0.0.1:{port}")  # plugged in at another, working station
        _wait_until(lambda: len(queue) == 0)
        _wait_until(lambda: uploader.last_outcome is not None)
        assert uploader.target == f"127.0.0.1:{port}"
        assert uploader.stats().acked == 500 and uploader.stats().consecutive_failures == 0
        assert store.count() == 500

        queue.enqueue(real_sessions[500:520])  # recorded while plugged in
        uploader.wake()
        _wait_until(lambda: store.count() == 520)

        uploader.unplug()
        assert uploader.target is None
        queue.enqueue(real_sessions[520:530])  # recorded while driving: not uploaded
        uploader.wake()
        time.sleep(0.3)
        assert len(queue) == 10 and store.count() == 520
    finally:
        uploader.stop()
    assert not uploader.running


def test_backoff_grows_is_bounded_and_jittered():
    backoff = Backoff(initial_s=1.0, max_s=30.0, multiplier=2.0, jitter=0.5)
    delays = [[backoff.delay(n) for _ in range(200)] for n in range(1, 12)]
    for n, ds in enumerate(delays, start=1):
        top = min(30.0, 2.0 ** (n - 1))
        assert all(top / 2 <= d <= top for d in ds)
        assert len(set(ds)) > 100  # spread out, not in lockstep
    assert backoff.delay(0) == 0.0 and backoff.delay(10_000) <= 30.0


def test_the_uploader_imports_neither_pandas_nor_tensorflow():
    script = (
        "import sys, agent.uploader\n"
        "heavy = {'pandas', 'tensorflow', 'keras'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=60)


# --- Must-show: a real station killed mid-stream ----------------------------------------------


@pytest.fixture
def fog(tmp_path, kafka, energy_global):
    program = fog_program(
        tmp_path / "fog",
        energy_global.station,
        kafka.bootstrap_servers,
        [f"it-{uuid.uuid4().hex[:8]}"],
    )
    yield program
    program.kill()


def test_upload_interrupted_by_killing_the_station_mid_stream_then_resumed_stores_each_session_once(
    fog, queue, real_sessions
):
    """Must-show: upload interrupted by killing the station mid-stream, then resumed: every
    session stored exactly once."""
    total = len(real_sessions)
    assert total == 6000
    assert queue.enqueue(real_sessions).queued == tuple(s.session_id for s in real_sessions)

    fog.start()
    status_stub = station_stub(fog.port)
    result: dict[str, object] = {}

    def stream() -> None:
        try:
            link = _SlowLink(station_stub(fog.port), pause_s=0.02)  # 120 batches: > 2 s
            result["outcome"] = upload(queue, link, batch_size=50, max_sessions_per_stream=total)
        except UploadInterrupted as exc:
            result["error"] = exc

    uploading = threading.Thread(target=stream)
    uploading.start()
    deadline = time.monotonic() + 60
    stored = 0
    while stored < 1000:  # wait until the station has committed some batches of the stream
        assert time.monotonic() < deadline and uploading.is_alive(), result
        stored = status_stub.Status(station_pb2.StatusRequest(), timeout=5).sessions_stored
    fog.kill()  # SIGKILL of the station's process group, mid-stream
    assert stored < total
    uploading.join(30)
    assert not uploading.is_alive()

    error = result.get("error")
    assert isinstance(error, UploadInterrupted), f"the stream was not interrupted: {result}"
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert len(queue) == total and queue.uploaded_count() == 0  # nothing removed without an ack

    fog.start()  # the same state dir; a new port
    committed_before_kill = station_status(fog.port).sessions_stored
    assert stored <= committed_before_kill < total
    outcome = upload(queue, station_stub(fog.port), batch_size=500)
    assert (outcome.acked, outcome.duplicate) == (total, committed_before_kill)
    assert (outcome.rejected, outcome.remaining) == (0, 0)
    assert len(queue) == 0
    assert fog.terminate() == 0

    with SessionStore(fog.workdir / "state" / "sessions.sqlite3") as store:
        ids = _stored_ids(store)
    assert len(ids) == total and len(set(ids)) == total  # each session exactly once
    assert set(ids) == queue.uploaded_ids() == {s.session_id for s in real_sessions}
