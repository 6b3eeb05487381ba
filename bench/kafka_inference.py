"""The same partitions served Kafka-ML style over Kafka topics: bench.latency's baseline.

Bench-only: no program uses this. Kafka-ML deploys each partition of an early-exit model as a
consumer of its input topic; a confident exit writes the answer to an output topic, an
unconfident one writes its hidden tensor to the next partition's topic. Here:

- the client (the vehicle) runs the edge partition in-process, then produces an
  ``InferRequest`` with a correlation id (its ``request_id``, also the record key) to
  ``bench.infer.fog`` and waits for the ``InferResponse`` with that id on ``bench.infer.replies``;
- one server process per tier (``python -m bench.kafka_inference serve --tier fog|cloud``)
  consumes its request topic, runs its partition with the same LiteRT runner and exit policy
  as the programs (``ServedPartition.step``), and produces the answer to the reply topic or,
  at the fog when not confident, the request with its own hidden tensor to ``bench.infer.cloud``;
- the messages are the programs' own protobufs (``proto.infer_messages``), hop timings included.

Tuned for latency, not a strawman (librdkafka 2.x names; everything else is
``proto.kafka.KafkaSettings``, which the programs use):

- producers: ``linger.ms=0`` (send at once), ``acks=1`` (leader only), no compression (records
  are ~0.5 KB), no idempotence, ``socket.nagle.disable=true``;
- consumers: ``fetch.min.bytes=1`` and ``fetch.wait.max.ms=5``. Tansu 0.6 answers a fetch that
  finds nothing after its full wait instead of waking it when a record arrives, so each hop
  waits ~half of this on average. 5 ms is the smallest that holds up there: at 1 ms a consumer
  stops receiving after ~1,900 records (reproducible, with or without auto-commit), at 2 ms
  p99 jumped to ~160 ms (the broker saturated by fetches); 5 ms had p50 5.3 / p99 16 ms per
  round trip over 4,000 records, 10 ms 7.0 / 15 ms (one client, shared 2-CPU machine);
  auto-commit (as Kafka-ML's inference pods), ``socket.nagle.disable=true``; a server takes
  each record as soon as ``poll`` returns it, plus up to 99 more already fetched;
- one topic partition each (a single server per tier, as here, reads one partition anyway);
- the client side is one shared producer plus one reply consumer (assigned to the reply
  partition at its end offset: no group join) that hands each reply to the waiting caller by
  correlation id; callers in many threads share them, as callers of one gRPC channel do.

    python -m bench.kafka_inference serve --tier fog --bootstrap 127.0.0.1:PORT --models DIR \
        --ready FILE [--pause FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from evfl.brokers import die_with_parent
from models.exit_policy import ExitPolicy
from models.model_config import PARTITIONS
from models.normalization import Normalization
from models.served_partition import ServedPartition
from models.tflite_runner import TfliteRunner
from proto import inference_pb2
from proto.infer_messages import answer, forward_request, hidden_of, tier_of
from proto.kafka import KafkaSettings, TopicSpec, ensure_topics

ROOT = Path(__file__).resolve().parents[1]
TIERS = ("fog", "cloud")  # served by a process each; the edge runs in the client
REQUEST_TOPICS = {"fog": "bench.infer.fog", "cloud": "bench.infer.cloud"}
REPLY_TOPIC = "bench.infer.replies"
FETCH_WAIT_MAX_MS = 5  # see the module docstring: 1 ms stalls Tansu 0.6
DRAIN = 100  # records per consume() call in a server
READY_TIMEOUT_S = 60.0

log = logging.getLogger("bench.kafka_inference")


# --- settings -------------------------------------------------------------------------------


def producer_config(settings: KafkaSettings) -> dict[str, Any]:
    """The programs' producer settings, re-tuned for one small record at a time."""
    config = settings.producer_config()
    config.update(
        {
            "acks": 1,
            "linger.ms": 0,
            "compression.type": "none",
            "enable.idempotence": False,
            "socket.nagle.disable": True,
        }
    )
    return config


def consumer_config(settings: KafkaSettings, group_id: str) -> dict[str, Any]:
    """The programs' consumer settings, re-tuned to fetch each record as soon as it is there."""
    config = settings.consumer_config(group_id)
    config.update(
        {
            "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
            "fetch.min.bytes": 1,
            "enable.auto.commit": True,
            "socket.nagle.disable": True,
        }
    )
    return config


def topic_specs() -> list[TopicSpec]:
    return [TopicSpec(name) for name in (*REQUEST_TOPICS.values(), REPLY_TOPIC)]


def settings_summary() -> dict[str, Any]:
    """What the baseline was tuned with, for the results file."""
    return {
        "producer": {
            "linger.ms": 0,
            "acks": 1,
            "compression.type": "none",
            "enable.idempotence": False,
            "socket.nagle.disable": True,
        },
        "consumer": {
            "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
            "fetch.min.bytes": 1,
            "enable.auto.commit": True,
            "socket.nagle.disable": True,
        },
        "server_drain_per_consume": DRAIN,
        "partitions_per_topic": 1,
        "client": "one shared producer + one assigned reply consumer, replies matched by id",
    }


def drain(consumer: Consumer, timeout: float) -> list[Message]:
    """The next record (waiting up to ``timeout``) and whatever else is already fetched.

    Not ``consume(n, timeout)`` alone: that waits for n records or the whole timeout.
    """
    first = consumer.poll(timeout)
    return [] if first is None else [first, *consumer.consume(DRAIN - 1, 0)]


# --- the partitions a server runs -----------------------------------------------------------


@dataclass(frozen=True)
class TaskModels:
    """One task's partition files, normalisation and exit thresholds (±inf allowed)."""

    files: Mapping[str, bytes]  # partition name -> .tflite
    normalization: Normalization
    thresholds: tuple[float, ...]


def write_models(where: Path, tasks: Mapping[str, TaskModels]) -> Path:
    """``where/<task>/{fog,cloud}.tflite`` and ``where/<task>/policy.json``."""
    for task, models in tasks.items():
        folder = where / task
        folder.mkdir(parents=True, exist_ok=True)
        for tier in TIERS:
            (folder / f"{tier}.tflite").write_bytes(models.files[tier])
        policy = {
            "normalization": models.normalization.to_dict(),
            "thresholds": [_finite_or_text(t) for t in models.thresholds],
        }
        (folder / "policy.json").write_text(json.dumps(policy))
    return where


def _finite_or_text(value: float) -> float | str:
    return value if math.isfinite(value) else repr(value)  # "inf" / "-inf": strict JSON


def load_tier(where: Path, tier: str, version: int) -> dict[str, ServedPartition]:
    """task -> the tier's partition as ``ServedPartition`` (the programs' own step)."""
    index = PARTITIONS.index(tier)
    served = {}
    for folder in sorted(p for p in where.iterdir() if p.is_dir()):
        policy = json.loads((folder / "policy.json").read_text())
        served[folder.name] = ServedPartition(
            folder.name,
            version,
            index,
            TfliteRunner((folder / f"{tier}.tflite").read_bytes(), workers=1),
            Normalization.from_dict(policy["normalization"]),
            ExitPolicy(tuple(float(t) for t in policy["thresholds"])),
        )
    return served


# --- a server: one tier ---------------------------------------------------------------------


class TierHandler:
    """One record in, one record out: the answer (reply topic) or the forward (next tier)."""

    def __init__(self, tier: str, served: Mapping[str, ServedPartition]) -> None:
        self.tier = tier
        self.index = PARTITIONS.index(tier)
        self.served = served

    def handle(self, value: bytes) -> tuple[str, bytes]:
        started = time.perf_counter()
        request = inference_pb2.InferRequest.FromString(value)
        result = self.served[request.task_id].step(hidden_of(request))

        def hop() -> inference_pb2.HopTiming:
            total = (time.perf_counter() - started) * 1e3
            return inference_pb2.HopTiming(
                tier=tier_of(self.index), compute_ms=result.compute_ms, total_ms=total
            )

        if result.confident or result.hidden is None:
            reply = answer(request, self.index, result.mean, result.std, [*request.hops, hop()])
            return REPLY_TOPIC, reply.SerializeToString()
        nxt = PARTITIONS[self.index + 1]
        return REQUEST_TOPICS[nxt], forward_request(
            request, result.hidden, hop()
        ).SerializeToString()


def serve(
    tier: str, bootstrap: str, models: Path, ready: Path, version: int, pause: Path | None = None
) -> None:
    """Consume the tier's request topic until SIGTERM; write ``ready`` once partitions are ours.

    While the file ``pause`` exists the partitions are paused: no fetch requests (with a 5 ms
    fetch wait an idle consumer asks the broker ~200 times a second), only group heartbeats,
    so the idle baseline does not tax what is measured meanwhile.
    """
    handler = TierHandler(tier, load_tier(models, tier, version))
    settings = KafkaSettings(bootstrap_servers=bootstrap, client_id=f"bench-kafka-{tier}")
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    producer = Producer(producer_config(settings))
    consumer = Consumer(consumer_config(settings, f"bench-kafka-{tier}"))
    consumer.subscribe([REQUEST_TOPICS[tier]])
    announced = False
    paused = False
    handled = 0
    try:
        while not stop.is_set():
            want_paused = pause is not None and pause.exists()
            assigned = consumer.assignment()
            if assigned and want_paused != paused:
                (consumer.pause if want_paused else consumer.resume)(assigned)
                paused = want_paused
            for msg in drain(consumer, 0.05):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("%s: %s", tier, err)
                    continue
                topic, out = handler.handle(msg.value() or b"")
                producer.produce(topic, out, key=msg.key())
                handled += 1
            producer.poll(0)
            if not announced and assigned:
                ready.write_text(str(os.getpid()))
                announced = True
    finally:
        consumer.close()
        left = producer.flush(5)
        log.info("%s server: %d records handled, %d undelivered at exit", tier, handled, left)


# --- the server processes, from the bench ---------------------------------------------------


class TierProcess:
    """A ``serve`` process: own process group, output in a log file, dies with its parent."""

    def __init__(self, tier: str, bootstrap: str, models: Path, workdir: Path, version: int):
        self.tier = tier
        self.workdir = workdir
        self.ready = workdir / f"kafka-{tier}.ready"
        self.pause_file = workdir / "kafka-paused"  # shared by the servers of one workdir
        self.log_path = workdir / f"kafka-{tier}.log"
        self.argv = [
            sys.executable,
            "-m",
            "bench.kafka_inference",
            "serve",
            "--tier",
            tier,
            "--bootstrap",
            bootstrap,
            "--models",
            str(models),
            "--ready",
            str(self.ready),
            "--version",
            str(version),
            "--pause",
            str(self.pause_file),
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> TierProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ready.unlink(missing_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"Kafka {self.tier} server did not start:\n{tail}")
            time.sleep(0.05)

    def set_paused(self, paused: bool) -> None:
        """Pause (or resume) fetching; takes effect within ~0.1 s."""
        if paused:
            self.pause_file.touch()
        else:
            self.pause_file.unlink(missing_ok=True)

    def terminate(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.poll()

    def kill(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


# --- the client ----------------------------------------------------------------------------


class ReplyTimeout(TimeoutError):
    """No reply with this correlation id arrived in time."""


@dataclass
class _Slot:
    done: threading.Event = field(default_factory=threading.Event)
    reply: inference_pb2.InferResponse | None = None
    error: str | None = None


class KafkaInferenceClient:
    """Request-reply over Kafka for many caller threads: one producer, one reply reader."""

    def __init__(self, settings: KafkaSettings) -> None:
        ensure_topics(settings, topic_specs())
        self._producer = Producer(producer_config(settings))
        config = consumer_config(settings, "bench-kafka-client")
        config["enable.auto.commit"] = False  # assigned, not in a group: nothing to commit
        self._consumer = Consumer(config)
        self._reply = TopicPartition(REPLY_TOPIC, 0)
        _low, high = self._consumer.get_watermark_offsets(self._reply, timeout=10)
        self._consumer.assign([TopicPartition(REPLY_TOPIC, 0, high)])  # only replies from now
        self._pending: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.stray = 0  # replies nobody waited for (timed out before)
        self._want_paused = False
        self._reader = threading.Thread(target=self._read, name="kafka-replies", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        paused = False
        while not self._stop.is_set():
            if self._want_paused != paused:  # here: librdkafka's pause from another thread
                paused = self._want_paused  # than the poller's blocked for minutes
                (self._consumer.pause if paused else self._consumer.resume)([self._reply])
            self._producer.poll(0)  # delivery reports
            for msg in drain(self._consumer, 0.05):
                if msg.error() is not None:
                    continue
                reply = inference_pb2.InferResponse.FromString(msg.value() or b"")
                with self._lock:
                    slot = self._pending.pop(reply.request_id, None)
                if slot is None:
                    self.stray += 1
                    continue
                slot.reply = reply
                slot.done.set()

    def infer(
        self, request: inference_pb2.InferRequest, timeout: float = 10.0
    ) -> inference_pb2.InferResponse:
        """Produce to the fog's topic and wait for the reply with the same request_id."""
        slot = _Slot()
        key = request.request_id
        with self._lock:
            self._pending[key] = slot

        def delivered(err: KafkaError | None, _msg: object) -> None:
            if err is not None:
                slot.error = err.str()
                slot.done.set()

        self._producer.produce(
            REQUEST_TOPICS["fog"], request.SerializeToString(), key=key, on_delivery=delivered
        )
        if not slot.done.wait(timeout) or slot.reply is None:
            with self._lock:
                self._pending.pop(key, None)
            raise ReplyTimeout(f"{key}: {slot.error or f'no reply within {timeout:g} s'}")
        return slot.reply

    def set_paused(self, paused: bool) -> None:
        """Stop (or restart) fetching replies, like :meth:`TierProcess.set_paused` (~0.05 s)."""
        self._want_paused = paused

    def close(self) -> None:
        self._stop.set()
        self._reader.join(timeout=5)
        self._consumer.close()
        self._producer.flush(5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="serve one tier until SIGTERM")
    run.add_argument("--tier", choices=TIERS, required=True)
    run.add_argument("--bootstrap", required=True)
    run.add_argument("--models", type=Path, required=True)
    run.add_argument("--ready", type=Path, required=True)
    run.add_argument("--version", type=int, default=0)
    run.add_argument("--pause", type=Path, default=None, help="paused while this file exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve(args.tier, args.bootstrap, args.models, args.ready, args.version, args.pause)


if __name__ == "__main__":
    main()
