"""The station's Kafka side: announcements in, client updates out, on a thread of its own.

An announcement's offset is committed only after it was handled (served, trained, update
stored as pending), so a station killed mid-round handles it again after a restart; the update
id is deterministic (station, task, version), so a re-sent update is a duplicate the
coordinator recognises. Pending updates are re-published at start and every RESEND_S until
the broker acknowledges them: a broker that restarted empty still gets them.

A broker that restarts empty also loses updates it had acknowledged but the coordinator had
not read yet. So when the round a sent update answered is announced again, the station sends
it again: at once if the announce log started over (its offsets went back: the broker lost
it), else at most every SENT_RESEND_S (the coordinator drops copies it has recorded). Failed
offset commits are logged, not fatal: handling an announcement again is harmless.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

from fog_node.metrics import FogMetrics
from fog_node.participant import Participant
from fog_node.session_store import SessionStore
from proto import tensors_pb2
from proto.federation_codec import parse_chunk
from proto.kafka import (
    KafkaSettings,
    KafkaTransportError,
    Publisher,
    Record,
    Subscriber,
    announce_topic,
    chunks_topic,
    ensure_topics,
    task_topic_specs,
    updates_topic,
)
from proto.wire_errors import WireError

log = logging.getLogger("evfl.fog.kafka")

RESEND_S = 10.0
SENT_RESEND_S = 60.0
MAX_CHUNKED_BLOBS = 8


class FederationLoop(threading.Thread):
    def __init__(
        self,
        settings: KafkaSettings,
        station_id: str,
        tasks: list[str],
        participant: Participant,
        store: SessionStore,
        metrics: FogMetrics,
    ) -> None:
        super().__init__(name="evfl-fog-kafka", daemon=True)
        self.settings = settings
        self.station_id = station_id
        self.tasks = list(tasks)
        self.participant = participant
        self.store = store
        self.metrics = metrics
        self.stopping = threading.Event()
        self.failure: BaseException | None = None
        # blob sha256 -> its chunks, for announcements whose weights travel in chunks
        self._chunks: OrderedDict[str, dict[int, tensors_pb2.Chunk]] = OrderedDict()
        self._announce_offsets: dict[tuple[str, int], int] = {}  # last offset read per partition
        self._sent_at: dict[str, float] = {}  # update id -> when this process last sent it

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # the thread must report, not vanish
            self.failure = exc
            log.exception("federation loop stopped: %s", exc)

    def _run(self) -> None:
        try:
            ensure_topics(self.settings, [s for t in self.tasks for s in task_topic_specs(t)])
        except KafkaTransportError as exc:
            log.warning("could not ensure topics (the coordinator creates them): %s", exc)
        topics = [announce_topic(t) for t in self.tasks] + [chunks_topic(t) for t in self.tasks]
        publisher = Publisher(self.settings)
        subscriber = Subscriber(self.settings, f"evfl-fog-{self.station_id}", topics)
        last_resend = 0.0
        try:
            while not self.stopping.is_set():
                if time.monotonic() - last_resend > RESEND_S:
                    self._resend(publisher)
                    last_resend = time.monotonic()
                record = subscriber.poll(0.5)
                if record is None:
                    continue
                if record.topic.endswith(".chunks"):
                    self._stash(record.value)
                else:
                    self._on_announcement(publisher, record)
                try:
                    subscriber.commit(record)
                except KafkaTransportError as exc:
                    log.warning(
                        "offset of %s not committed (%s); may handle it again", record.topic, exc
                    )
        finally:
            subscriber.close()
            publisher.close()

    def _on_announcement(self, publisher: Publisher, record: Record) -> None:
        where = (record.topic, record.partition)
        log_restarted = record.offset <= self._announce_offsets.get(where, -1)
        self._announce_offsets[where] = record.offset
        outcome = self.participant.on_announcement(
            record.value, [c for b in self._chunks.values() for c in b.values()]
        )
        if outcome.update is None:
            return
        update_id = outcome.update[0]
        if outcome.kind == "resend" and not log_restarted:
            last = self._sent_at.get(update_id)
            if last is not None and time.monotonic() - last < SENT_RESEND_S:
                return
        if outcome.kind == "resend":
            log.info(
                "re-sending update %s (%s)",
                update_id,
                "the broker lost the announce log" if log_restarted else "round announced again",
            )
        self._publish(publisher, outcome.task_id, *outcome.update)

    def _stash(self, data: bytes) -> None:
        try:
            chunk = parse_chunk(data)
        except WireError as exc:
            self.metrics.announcements.labels("bad_chunk").inc()
            log.warning("chunk refused: %s", exc)
            return
        self._chunks.setdefault(chunk.blob_sha256, {})[chunk.index] = chunk
        self._chunks.move_to_end(chunk.blob_sha256)
        while len(self._chunks) > MAX_CHUNKED_BLOBS:
            self._chunks.popitem(last=False)

    def _publish(self, publisher: Publisher, task_id: str, update_id: str, payload: bytes) -> bool:
        try:
            publisher.publish(updates_topic(task_id), payload, key=self.station_id.encode())
        except KafkaTransportError as exc:
            log.warning("update %s not delivered yet (%s); will re-send", update_id, exc)
            return False
        self._sent_at[update_id] = time.monotonic()
        if self.store.confirm_update(update_id):
            state = self.store.task_state(task_id)
            self.store.update_task_state(task_id, updates_sent=state.updates_sent + 1)
            self.metrics.updates_sent.inc()
        log.info("update %s delivered (%d bytes)", update_id, len(payload))
        return True

    def _resend(self, publisher: Publisher) -> None:
        for update_id, task_id, payload in self.store.pending_updates():
            if not self._publish(publisher, task_id, update_id, payload):
                return
