"""Federated rounds of one task over Kafka, resumable from the registry after any crash.

Round r turns version r-1 into version r: announce r-1 (weights, preprocessing, constraints,
exit policy, deadline); collect ClientUpdates based on r-1 until enough arrived (client
fraction of the known stations, at least ``min_updates``) or the deadline passed with at least
``min_updates``; refuse and count the rest with one log line each; aggregate with the task's
strategy; evaluate every exit on held-out data; commit version r atomically; hand it to the
partition sink (cloud serving, MQTT). Accepted updates are recorded durably before their Kafka
offset is committed, so a coordinator killed mid-round resumes the same round with the same
updates, and a version number is never reused or skipped (the registry enforces it).

The broker may restart empty (topics, offsets and unread updates gone): every re-announcement
first re-creates missing topics and rewinds the updates reader to the new log's start, Kafka
errors while announcing or committing are logged and retried, and stations re-send the update
of a round announced again (duplicates are refused by update id).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import DecodeError

from coordinator.metrics import CoordinatorMetrics
from coordinator.registry import Registry, VersionRecord
from coordinator.task_data import TaskData, evaluate_weights
from coordinator.task_spec import TaskSpec
from models.aggregate import ClientResult, Strategy, StrategyState, make_strategy
from models.aggregate.screening import UpdateRefused, check_update, norm_outliers
from models.constraints import constraints_for
from models.partitioned import weights_of
from proto import federation_pb2
from proto.constraints_codec import constraints_to_proto
from proto.federation_codec import (
    SERVE_ONLY,
    BaseMismatch,
    NonFiniteWeights,
    ReadUpdate,
    build_announcement,
    end_of_task,
    read_update,
)
from proto.kafka import (
    KafkaSettings,
    KafkaTransportError,
    Publisher,
    Subscriber,
    announce_topic,
    chunks_topic,
    ensure_topics,
    task_topic_specs,
    updates_topic,
)
from proto.limits import WireLimits
from proto.signing import KeyRing, Signer
from proto.update_encoding import UpdateEncoding, weights_sha256
from proto.wire_errors import BadSignature, HashMismatch, MalformedMessage, WireError

log = logging.getLogger("evfl.coordinator")

# A wire error's class -> the refusal reason operators see in logs and metrics.
WIRE_REASONS: tuple[tuple[type[WireError], str], ...] = (
    (NonFiniteWeights, "non_finite"),
    (BaseMismatch, "stale_base"),  # a delta against weights other than the round's base
    (BadSignature, "bad_signature"),
    (HashMismatch, "bad_hash"),
    (MalformedMessage, "malformed"),
    (WireError, "bad_payload"),
)

VersionSink = Callable[[VersionRecord, list[np.ndarray]], None]
RETRY_S = 5.0  # after a Kafka error: the next try, and how long set-up calls may wait


def _now_ms() -> int:
    return int(time.time() * 1000)


def _claimed_ids(payload: bytes) -> tuple[str, str]:
    """The update and station ids a refused update claims (unverified), or "?" if unreadable.

    Operators need to know which station keeps sending bad updates even when the update is
    refused for its signature, hash or weights.
    """
    try:
        message = federation_pb2.ClientUpdate.FromString(payload)
    except DecodeError:
        return "?", "?"
    return message.update_id[:128] or "?", message.station_id[:128] or "?"


@dataclass
class _Round:
    number: int
    base: VersionRecord
    base_weights: list[np.ndarray]
    deadline_ms: int
    base_sha256: str = ""  # of base_weights: what delta updates must be based on
    results: list[ClientResult] = field(default_factory=list)
    update_ids: list[str] = field(default_factory=list)
    bytes_in: int = 0
    bytes_out: int = 0

    def stations(self) -> set[str]:
        return {r.client_id for r in self.results}


class RoundLoop:
    def __init__(
        self,
        spec: TaskSpec,
        data: TaskData,
        registry: Registry,
        kafka: KafkaSettings,
        metrics: CoordinatorMetrics,
        sink: VersionSink | None = None,
        signer: Signer | None = None,
        keyring: KeyRing | None = None,
        require_signed: bool = False,
        limits: WireLimits | None = None,
    ) -> None:
        self.spec = spec
        self.data = data
        self.registry = registry
        self.kafka = kafka
        self.metrics = metrics
        self.sink = sink
        self.signer = signer
        self.keyring = keyring
        self.require_signed = require_signed
        self.limits = limits or WireLimits()
        self.strategy: Strategy = make_strategy(spec.strategy, **spec.strategy_params)
        self.update_encoding = UpdateEncoding.parse(spec.update_encoding)
        self.task = spec.task_id
        self.stop = threading.Event()

    # --- lifecycle ----------------------------------------------------------------------------

    def run(self) -> VersionRecord:
        """Run rounds until the task's last round (or ``stop``); returns the latest version."""
        ensure_topics(self.kafka, task_topic_specs(self.task))
        latest = self._bootstrap()
        log.info("task %s: %s; resuming after version %d", self.task, self.strategy, latest.version)
        with (
            Publisher(self.kafka) as publisher,
            Subscriber(
                self.kafka, f"evfl-coordinator-{self.task}", [updates_topic(self.task)]
            ) as updates,
        ):
            while not self.stop.is_set() and (
                self.spec.continuous or latest.version < self.spec.rounds
            ):
                finished = self._round(latest, publisher, updates)
                if finished is None:
                    break
                latest = finished
            if not self.stop.is_set() and not self.spec.continuous:
                # Stations serve the final version too, then learn the task is over.
                final = _Round(SERVE_ONLY, latest, latest.weights(), 0)
                while not self._announce_end(publisher, final):
                    if self.stop.wait(RETRY_S):
                        return latest
                self.registry.end_task(self.task)
                log.info(
                    "task %s ended after version %d (version -1 published)",
                    self.task,
                    latest.version,
                )
        return latest

    def _bootstrap(self) -> VersionRecord:
        self.registry.create_task(self.task, self.spec.model_dump(mode="json"))
        latest = self.registry.latest(self.task)
        if latest is None:
            from models.training import new_model

            weights = weights_of(new_model(self.data.config, self.spec.seed))
            latest = self._commit(0, weights, [], self.strategy.initial_state())
        else:
            self._publish_version(latest, latest.weights())
        return latest

    # --- one round ----------------------------------------------------------------------------

    def _round(
        self, base: VersionRecord, publisher: Publisher, updates: Subscriber
    ) -> VersionRecord | None:
        number = base.version + 1
        started = time.monotonic()
        deadline = _now_ms() + int(self.spec.round_deadline_s * 1000)
        self.registry.open_round(self.task, number, base.version, deadline)
        rnd = _Round(number, base, base.weights(), deadline)
        rnd.base_sha256 = weights_sha256(rnd.base_weights)
        for stored in self.registry.round_updates(self.task, number):  # after a restart
            read = read_update(
                stored.payload,
                limits=self.limits,
                base_weights=rnd.base_weights,
                base_sha256=rnd.base_sha256,
            )
            rnd.results.append(ClientResult(stored.station_id, read.weights, stored.sample_count))
            rnd.update_ids.append(stored.update_id)
        if rnd.results:
            log.info(
                "task %s round %d: resumed with %d recorded updates",
                self.task,
                number,
                len(rnd.results),
            )
        last_announce = -1e9
        waiting_logged = False
        while not self.stop.is_set():
            if len(rnd.results) >= self.spec.updates_to_close():
                break
            if _now_ms() >= rnd.deadline_ms:
                if len(rnd.results) >= self.spec.min_updates:
                    break
                if not waiting_logged:
                    log.warning(
                        "task %s round %d: %d updates by the deadline, need %d; extending",
                        self.task,
                        number,
                        len(rnd.results),
                        self.spec.min_updates,
                    )
                    waiting_logged = True
                rnd.deadline_ms = _now_ms() + int(self.spec.round_deadline_s * 1000)
                last_announce = -1e9
            if time.monotonic() - last_announce >= self.spec.reannounce_s:
                if last_announce > 0:
                    self._repair_kafka(updates)
                try:
                    rnd.bytes_out += self._announce(publisher, rnd)
                    last_announce = time.monotonic()
                except KafkaTransportError as exc:
                    log.warning(
                        "task %s round %d: announcement not sent (%s); retrying",
                        self.task,
                        number,
                        exc,
                    )
                    last_announce = time.monotonic() - self.spec.reannounce_s + RETRY_S
            record = updates.poll(0.5)
            if record is None:
                continue
            rnd.bytes_in += len(record.value)
            self.metrics.bytes_in.labels(self.task).inc(len(record.value))
            self._receive(record.value, rnd)
            try:
                updates.commit(record)
            except KafkaTransportError as exc:  # recorded already; a re-read is a duplicate
                log.warning("task %s round %d: offset not committed (%s)", self.task, number, exc)
        if self.stop.is_set():
            return None
        return self._close(rnd, time.monotonic() - started)

    def _repair_kafka(self, updates: Subscriber) -> None:
        """Undo what a broker that restarted empty forgot: the task's topics, and the updates
        reader's position (the new log starts at 0 again)."""
        try:
            created = ensure_topics(self.kafka, task_topic_specs(self.task), timeout=RETRY_S)
            rewound = updates.rewind_truncated(timeout=RETRY_S)
        except KafkaTransportError as exc:
            log.warning("task %s: Kafka unavailable (%s)", self.task, exc)
            return
        if created or rewound:
            log.warning(
                "task %s: the Kafka broker lost its logs (restarted empty?): re-created %s, "
                "reading %s from the start",
                self.task,
                created or "no topic",
                rewound or "no log",
            )

    def _announce_end(self, publisher: Publisher, final: _Round) -> bool:
        try:
            self._announce(publisher, final)
            publisher.publish(
                announce_topic(self.task), end_of_task(self.task, _now_ms(), self.signer)
            )
        except KafkaTransportError as exc:
            log.warning("task %s: end of task not announced (%s); retrying", self.task, exc)
            return False
        return True

    def _announce(self, publisher: Publisher, rnd: _Round) -> int:
        constraints = constraints_for(self.data.preprocessing, self.spec.min_samples)
        message, chunks = build_announcement(
            self.task,
            rnd.base.version,
            rnd.number,
            self.data.config.to_dict(),
            self.data.preprocessing.to_dict(),
            rnd.base_weights,
            constraints_to_proto(constraints),
            tuple(rnd.base.exit_policy.get("thresholds", ())),
            rnd.deadline_ms,
            _now_ms(),
            self.signer,
            self.limits,
            update_encoding=None if rnd.number == SERVE_ONLY else self.update_encoding,
        )
        sent = 0
        for chunk in chunks:
            data = chunk.SerializeToString()
            publisher.publish(chunks_topic(self.task), data)
            sent += len(data)
        data = message.SerializeToString()
        publisher.publish(announce_topic(self.task), data, key=self.task.encode())
        sent += len(data)
        self.metrics.bytes_out.labels(self.task).inc(sent)
        if rnd.number == SERVE_ONLY:
            log.info("task %s: announced final version %d for serving", self.task, rnd.base.version)
            return sent
        log.info(
            "task %s round %d: announced version %d (%d bytes), deadline in %.0f s",
            self.task,
            rnd.number,
            rnd.base.version,
            sent,
            (rnd.deadline_ms - _now_ms()) / 1000,
        )
        return sent

    def _receive(self, payload: bytes, rnd: _Round) -> None:
        try:
            read = read_update(
                payload,
                self.keyring,
                self.require_signed,
                limits=self.limits,
                base_weights=rnd.base_weights,
                base_sha256=rnd.base_sha256 or None,
            )
        except WireError as exc:
            reason = next(r for cls, r in WIRE_REASONS if isinstance(exc, cls))
            self._refuse(rnd, reason, *_claimed_ids(payload), str(exc))
            return
        msg = read.message
        reason, detail = self._screen(read, rnd)
        if reason is not None:
            self._refuse(rnd, reason, msg.update_id, msg.station_id, detail)
            return
        fresh = self.registry.record_update(
            self.task, rnd.number, msg.update_id, msg.station_id, msg.sample_count, payload
        )
        if not fresh:
            self._refuse(rnd, "duplicate", msg.update_id, msg.station_id, "already recorded")
            return
        rnd.results.append(ClientResult(msg.station_id, read.weights, msg.sample_count))
        rnd.update_ids.append(msg.update_id)
        self.metrics.updates_accepted.labels(self.task).inc()
        log.info(
            "task %s round %d: accepted %s (%d samples, %d/%d)",
            self.task,
            rnd.number,
            msg.update_id,
            msg.sample_count,
            len(rnd.results),
            self.spec.updates_to_close(),
        )

    def _screen(self, read: ReadUpdate, rnd: _Round) -> tuple[str | None, str]:
        msg = read.message
        if msg.task_id != self.task:
            return "wrong_task", f"update for task {msg.task_id!r}"
        if self.spec.stations and msg.station_id not in self.spec.stations:
            return "unknown_station", f"station {msg.station_id!r} is not part of this task"
        if msg.base_version != rnd.base.version:
            return "stale", f"based on version {msg.base_version}, round needs {rnd.base.version}"
        if self.registry.seen_update(self.task, msg.update_id):
            return "duplicate", "update id already recorded"
        if msg.station_id in rnd.stations():
            return "duplicate", f"station {msg.station_id!r} already sent an update this round"
        try:
            check_update(rnd.base_weights, read.weights)
        except UpdateRefused as exc:
            return exc.reason, str(exc)
        return None, ""

    def _refuse(self, rnd: _Round, reason: str, update_id: str, station: str, detail: str) -> None:
        self.registry.record_refusal(self.task, rnd.number, reason, update_id, station, detail)
        self.metrics.updates_refused.labels(self.task, reason).inc()
        log.warning(
            "task %s round %d: refused update %s from %s: %s (%s)",
            self.task,
            rnd.number,
            update_id,
            station,
            reason,
            detail,
        )

    def _close(self, rnd: _Round, elapsed: float) -> VersionRecord:
        outliers = set(
            norm_outliers(
                rnd.base_weights,
                rnd.results,
                k=self.spec.norm_outlier_k,
                min_clients=self.spec.norm_outlier_min_clients,
            )
        )
        kept = [r for r in rnd.results if r.client_id not in outliers]
        ids = [
            u
            for u, r in zip(rnd.update_ids, rnd.results, strict=True)
            if r.client_id not in outliers
        ]
        for r, u in zip(rnd.results, rnd.update_ids, strict=True):
            if r.client_id in outliers:
                self._refuse(
                    rnd, "norm_outlier", u, r.client_id, "update norm far above the round's median"
                )
        state = rnd.base.strategy_state()
        weights, new_state = self.strategy.aggregate(
            rnd.base_weights, kept, StrategyState.from_named_arrays(state)
        )
        record = self._commit(
            rnd.number,
            weights,
            ids,
            new_state,
            {"announce_out": rnd.bytes_out, "updates_in": rnd.bytes_in, "round_seconds": elapsed},
        )
        self.metrics.round_seconds.labels(self.task).observe(elapsed)
        return record

    def _commit(
        self,
        version: int,
        weights: list[np.ndarray],
        update_ids: list[str],
        state: StrategyState,
        wire: dict | None = None,
    ) -> VersionRecord:
        quality = evaluate_weights(self.data, weights, self.spec.exit_tolerance)
        metrics = dict(quality.metrics)
        if wire:
            metrics["wire"] = wire
        record = self.registry.commit_version(
            self.task,
            version,
            version,
            weights,
            self.data.config.to_dict(),
            self.data.preprocessing.to_dict(),
            metrics,
            {"thresholds": list(quality.thresholds)},
            update_ids,
            state.to_named_arrays(),
        )
        self.metrics.version.labels(self.task).set(version)
        for exit_name in ("edge", "fog", "cloud", "chain"):
            for key in ("mse", "mae", "rmse"):
                self.metrics.exit_metric.labels(self.task, exit_name, key).set(
                    metrics[exit_name][key]
                )
        cloud = metrics["cloud"]
        log.info(
            "task %s: committed version %d from %d updates; cloud MAE %.3f RMSE %.3f; "
            "exit rates %s",
            self.task,
            version,
            len(update_ids),
            cloud["mae"],
            cloud["rmse"],
            metrics["exit_rates"],
        )
        self._publish_version(record, weights)
        return record

    def _publish_version(self, record: VersionRecord, weights: list[np.ndarray]) -> None:
        if self.sink is not None:
            self.sink(record, weights)
