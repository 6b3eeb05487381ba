"""Draining the upload queue into the station the car is plugged in at.

One stream (client-streaming ``UploadSessions``) carries at most ``max_sessions_per_stream``
sessions in batches; the station commits each batch in one transaction and answers once, at
the end, with the ids it stored (committed or already there) and those it refused. Only then
is anything removed from the queue: stored ids are acknowledged, refused ones set aside with
the station's reason. If the stream breaks (station killed, car unplugged, deadline), nothing
is removed. The station may have committed some batches before it broke; those come back as
duplicates on the next stream, which is correct because upload is idempotent by session id.

:class:`Uploader` is the thread that does this while the car is plugged in, backing off
(exponentially, bounded, jittered) after failures so a broken station is not hammered.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from agent.upload_queue import UploadQueue
from proto import sessions_pb2, station_pb2_grpc
from proto.grpc_channel import ClientTls, open_channel

__all__ = [
    "UNREADABLE",
    "Backoff",
    "UploadInterrupted",
    "UploadOutcome",
    "Uploader",
    "UploaderStats",
    "upload",
]

log = logging.getLogger("evfl.agent.uploader")

UNREADABLE = "unreadable"  # reject reason for a queued payload that no longer parses
_CANCEL_POLL_S = 0.1


@dataclass(frozen=True)
class UploadOutcome:
    """What one :func:`upload` call did.

    ``acked`` counts every session the station holds durably and that left the queue,
    ``duplicate`` the part of those it already had (from a stream that broke after commits).
    """

    acked: int = 0
    duplicate: int = 0
    rejected: int = 0
    remaining: int = 0
    streams: int = 0


class UploadInterrupted(Exception):
    """A stream failed before the station's ack; nothing of it was removed from the queue.

    ``outcome`` is what earlier, completed streams of the same call did (they are removed),
    ``code`` the gRPC status of the failure.
    """

    def __init__(self, message: str, code: grpc.StatusCode, outcome: UploadOutcome) -> None:
        super().__init__(message)
        self.code = code
        self.outcome = outcome


def _decode(queue: UploadQueue, items: list[tuple[str, bytes]]) -> list[sessions_pb2.Session]:
    """The queued sessions as messages; one whose bytes no longer parse is set aside, since
    no retry can fix it."""
    messages = []
    for session_id, payload in items:
        try:
            messages.append(sessions_pb2.Session.FromString(payload))
        except DecodeError:
            log.error("upload: queued session %s does not parse; set aside", session_id)
            queue.reject(session_id, UNREADABLE)
    return messages


def _batches(
    messages: Sequence[sessions_pb2.Session], batch_size: int
) -> Iterator[sessions_pb2.SessionBatch]:
    for i in range(0, len(messages), batch_size):
        yield sessions_pb2.SessionBatch(sessions=messages[i : i + batch_size])


def _ack(
    stub: station_pb2_grpc.StationServiceStub,
    messages: Sequence[sessions_pb2.Session],
    batch_size: int,
    timeout_s: float,
    cancel: threading.Event | None,
) -> sessions_pb2.UploadAck:
    """One stream; its ack, or the grpc.RpcError / grpc.FutureCancelledError that ended it."""
    call = stub.UploadSessions.future(_batches(messages, batch_size), timeout=timeout_s)
    if cancel is not None:
        done = threading.Event()
        call.add_done_callback(lambda _: done.set())
        while not done.wait(_CANCEL_POLL_S):
            if cancel.is_set():
                call.cancel()
                break
    return call.result()


def upload(
    queue: UploadQueue,
    stub: station_pb2_grpc.StationServiceStub,
    batch_size: int = 200,
    timeout_s: float = 60.0,
    max_sessions_per_stream: int = 5000,
    cancel: threading.Event | None = None,
) -> UploadOutcome:
    """Upload the queue until it is empty, one stream per ``max_sessions_per_stream``.

    Raises :class:`UploadInterrupted` (after logging it) when a stream fails or ``cancel`` is
    set during it. Stops early, with ``remaining > 0``, if a whole stream was neither stored
    nor refused (a station that acks nothing), rather than re-sending it forever.
    """
    if batch_size < 1 or max_sessions_per_stream < 1:
        raise ValueError(
            "batch_size and max_sessions_per_stream must be >= 1, "
            f"got {batch_size} and {max_sessions_per_stream}"
        )
    acked = duplicate = rejected = streams = 0
    while not (cancel is not None and cancel.is_set()):
        items = queue.pending(max_sessions_per_stream)
        if not items:
            break
        messages = _decode(queue, items)
        if not messages:
            continue  # the whole slice was unreadable and is set aside now: read on
        sent = {m.session_id for m in messages}
        try:
            ack = _ack(stub, messages, batch_size, timeout_s, cancel)
        except (grpc.RpcError, grpc.FutureCancelledError) as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.CANCELLED
            detail = exc.details() if isinstance(exc, grpc.Call) else "cancelled by the agent"
            log.warning(
                "upload interrupted (%s: %s): the %d sessions of the stream stay queued",
                code.name,
                detail,
                len(messages),
            )
            so_far = UploadOutcome(acked, duplicate, rejected, len(queue), streams)
            raise UploadInterrupted(
                f"upload stream of {len(messages)} sessions failed: {code.name}: {detail}",
                code,
                so_far,
            ) from exc
        streams += 1
        stored = [i for i in (*ack.committed, *ack.duplicate) if i in sent]
        refused = [r for r in ack.rejected if r.session_id in sent]
        foreign = len(ack.committed) + len(ack.duplicate) + len(ack.rejected)
        foreign -= len(stored) + len(refused)
        if foreign:
            log.warning("upload: the station acked %d ids that were not sent; ignored", foreign)
        acked += queue.acknowledge(stored)
        duplicate += sum(1 for i in ack.duplicate if i in sent)
        for r in refused:
            rejected += queue.reject(r.session_id, r.reason)
        if refused:
            log.warning(
                "upload: the station refused %d sessions (%s), e.g. %s",
                len(refused),
                ", ".join(sorted({r.reason for r in refused})),
                refused[0].session_id,
            )
        if not stored and not refused:
            log.error("upload: the station acked none of %d sessions sent; stopping", len(sent))
            break
    return UploadOutcome(acked, duplicate, rejected, len(queue), streams)


@dataclass(frozen=True)
class Backoff:
    """Delay after the n-th consecutive failure: ``initial_s * multiplier**(n-1)``, capped at
    ``max_s``, less up to ``jitter`` of it at random so cars behind one station spread out."""

    initial_s: float = 1.0
    max_s: float = 120.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (
            0 < self.initial_s <= self.max_s and self.multiplier >= 1 and 0 <= self.jitter <= 1
        ):
            raise ValueError(f"invalid backoff {self}")

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        if failures < 1:
            return 0.0
        exponent = min(failures - 1, 64)  # beyond that the cap holds anyway
        base = min(self.max_s, self.initial_s * self.multiplier**exponent)
        return base * (1.0 - self.jitter * (rng or random).random())


@dataclass(frozen=True)
class UploaderStats:
    """Counters of an :class:`Uploader` since it started."""

    uploads: int = 0  # upload() calls that finished
    failures: int = 0  # upload() calls interrupted
    consecutive_failures: int = 0
    acked: int = 0
    rejected: int = 0
    last_outcome: UploadOutcome | None = None
    last_error: Exception | None = None  # an UploadInterrupted, or the queue's sqlite3.Error


class Uploader:
    """A thread that uploads the queue while the car is plugged in at a known station.

    ``plug(target)`` / ``unplug()`` follow the car's plug state; unplugging, plugging in
    elsewhere or ``stop()`` cancels a stream in flight, and nothing of it leaves the queue.
    Sessions queued while plugged in are seen within ``idle_poll_s``, or at once after
    ``wake()``. The channel belongs to the thread alone: gRPC must never be called on a
    channel another thread has closed.
    """

    def __init__(
        self,
        queue: UploadQueue,
        tls: ClientTls | None = None,
        *,
        batch_size: int = 200,
        timeout_s: float = 60.0,
        max_sessions_per_stream: int = 5000,
        backoff: Backoff | None = None,
        idle_poll_s: float = 2.0,
    ) -> None:
        self.queue = queue
        self.tls = tls
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.max_sessions_per_stream = max_sessions_per_stream
        self.backoff = backoff or Backoff()
        self.idle_poll_s = idle_poll_s
        self.plugged = threading.Event()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._target: str | None = None
        self._cancel: threading.Event | None = None  # of the upload in flight
        self._stats = UploaderStats()
        self._rng = random.Random()
        self._thread = threading.Thread(target=self._run, name="evfl-uploader", daemon=True)

    def __repr__(self) -> str:
        return f"Uploader(target={self.target!r}, queued={len(self.queue)})"

    # --- control ------------------------------------------------------------------------

    def start(self) -> Uploader:
        self._thread.start()
        return self

    def plug(self, target: str) -> None:
        """The car is plugged in at the station serving ``target`` (host:port)."""
        if not target:
            raise ValueError("plug needs a station target")
        with self._lock:
            if target != self._target and self._cancel is not None:
                self._cancel.set()
            self._target = target
            self._stats = replace(self._stats, consecutive_failures=0)
            self.plugged.set()
        self._wake.set()

    def unplug(self) -> None:
        with self._lock:
            self.plugged.clear()
            self._target = None
            if self._cancel is not None:
                self._cancel.set()
        self._wake.set()

    def wake(self) -> None:
        """Upload now (new sessions were queued) instead of at the next poll."""
        self._wake.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Cancel any upload, end the thread and wait for it (the queue stays open)."""
        self._stopped.set()
        self.unplug()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    # --- state --------------------------------------------------------------------------

    @property
    def target(self) -> str | None:
        """The station uploaded to while plugged in; None when unplugged."""
        with self._lock:
            return self._target if self.plugged.is_set() else None

    @property
    def running(self) -> bool:
        """The thread is alive (started and not yet stopped)."""
        return self._thread.is_alive()

    def stats(self) -> UploaderStats:
        with self._lock:
            return self._stats

    @property
    def last_outcome(self) -> UploadOutcome | None:
        return self.stats().last_outcome

    @property
    def last_error(self) -> Exception | None:
        return self.stats().last_error

    # --- the thread ---------------------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _next_run(self) -> tuple[str, threading.Event] | None:
        """The target to upload to now, and the event that cancels that upload."""
        with self._lock:
            self._cancel = None
            if self._stopped.is_set() or not self.plugged.is_set() or self._target is None:
                return None
            self._cancel = threading.Event()
            return self._target, self._cancel

    def _run(self) -> None:
        channel: grpc.Channel | None = None
        channel_target: str | None = None
        try:
            while not self._stopped.is_set():
                run = self._next_run()
                if run is None:
                    if channel is not None:
                        channel.close()  # unplugged: let the connection go
                        channel = channel_target = None
                    self._sleep(self.idle_poll_s)
                    continue
                target, cancel = run
                if channel is None or channel_target != target:
                    if channel is not None:
                        channel.close()
                    channel, channel_target = open_channel(target, self.tls), target
                self._upload_once(station_pb2_grpc.StationServiceStub(channel), cancel)
        finally:
            if channel is not None:
                channel.close()

    def _upload_once(
        self, stub: station_pb2_grpc.StationServiceStub, cancel: threading.Event
    ) -> None:
        try:
            if not len(self.queue):
                self._sleep(self.idle_poll_s)
                return
            outcome = upload(
                self.queue,
                stub,
                self.batch_size,
                self.timeout_s,
                self.max_sessions_per_stream,
                cancel,
            )
        except (UploadInterrupted, sqlite3.Error) as exc:
            if isinstance(exc, sqlite3.Error):  # UploadInterrupted is logged by upload()
                log.error("upload: the queue at %s failed: %s", self.queue.path, exc)
            done = exc.outcome if isinstance(exc, UploadInterrupted) else UploadOutcome()
            failures = self._record(done, exc)
            # On the cancel event, not the wake one: queuing more sessions must not cut the
            # backoff short, unplugging or stopping must.
            cancel.wait(self.backoff.delay(failures, self._rng))
            return
        self._record(outcome, None)
        if outcome.remaining:
            cancel.wait(self.backoff.delay(1, self._rng))  # a station that acked nothing

    def _record(self, outcome: UploadOutcome, error: Exception | None) -> int:
        """Count one upload() call; returns the consecutive failures."""
        with self._lock:
            s = self._stats
            changes: dict[str, Any] = {
                "acked": s.acked + outcome.acked,
                "rejected": s.rejected + outcome.rejected,
            }
            if error is None:
                changes.update(uploads=s.uploads + 1, consecutive_failures=0, last_outcome=outcome)
            else:
                changes.update(
                    failures=s.failures + 1,
                    consecutive_failures=s.consecutive_failures + 1,
                    last_error=error,
                )
            self._stats = replace(s, **changes)
            return self._stats.consecutive_failures
