"""Two tasks at once on one registry and one broker, one of them in continuous mode.

The coordinator runs one round loop per task on threads of their own; they share the registry
and the Kafka cluster. A simulated station answers every announcement of both tasks with an
update derived from the announced weights. The fixed task must end after its rounds (and say
so with version −1); the continuous task must keep producing versions past its ``rounds``
until stopped. Each task's versions must be built only from that task's updates.
"""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest

from coordinator.metrics import CoordinatorMetrics
from coordinator.registry import Registry, TaskNotFound
from coordinator.round_loop import RoundLoop
from coordinator.task_data import load_task_data
from coordinator.task_spec import TaskSpec
from proto import federation_pb2
from proto.federation_codec import END_OF_TASK, SERVE_ONLY, ExitScore, build_update
from proto.kafka import (
    Publisher,
    Subscriber,
    announce_topic,
    ensure_topics,
    task_topic_specs,
    updates_topic,
)

SCORES = [ExitScore(e, 10, 1.0, 1.0, 1.0) for e in ("edge", "fog", "cloud")]


@pytest.fixture(scope="module")
def task_data():
    return load_task_data(TaskSpec(task_id="modes", dataset="dundee", target="energy"))


def _latest(registry: Registry, task: str) -> int:
    try:
        latest = registry.latest(task)
    except TaskNotFound:
        return -1
    return -1 if latest is None else latest.version


class _Station(threading.Thread):
    """Answers each (task, round) announcement once with ``base weights + offset``.

    The offset is different per task (+1e-3 for the first, −1e-3 for the second), so a version
    built from the wrong task's update would show.
    """

    def __init__(self, kafka, registry: Registry, offsets: dict[str, float]) -> None:
        super().__init__(daemon=True)
        self.kafka, self.registry, self.offsets = kafka, registry, offsets
        self.stop = threading.Event()
        self.answered: set[tuple[str, int]] = set()
        self.ended: set[str] = set()

    def run(self) -> None:
        topics = [announce_topic(t) for t in self.offsets]
        ensure_topics(self.kafka.settings(), [s for t in self.offsets for s in task_topic_specs(t)])
        with (
            Subscriber(self.kafka.settings(), f"station-{uuid.uuid4().hex[:6]}") as watch,
            Publisher(self.kafka.settings()) as publisher,
        ):
            watch.assign_from_beginning(topics)
            while not self.stop.is_set():
                record = watch.poll(0.3)
                if record is None:
                    continue
                msg = federation_pb2.ModelAnnouncement.FromString(record.value)
                if msg.version == END_OF_TASK:
                    self.ended.add(msg.task_id)
                    continue
                if msg.round == SERVE_ONLY or (msg.task_id, msg.round) in self.answered:
                    continue
                base = self.registry.version(msg.task_id, msg.version).weights()
                weights = [w + np.float32(self.offsets[msg.task_id]) for w in base]
                update, _ = build_update(
                    msg.task_id, "dd:modes", msg.version, msg.round,
                    f"dd:modes:{msg.task_id}:v{msg.version}", 100, SCORES, weights, 0.1, None,
                )  # fmt: skip
                publisher.publish(updates_topic(msg.task_id), update.SerializeToString())
                self.answered.add((msg.task_id, msg.round))


def test_a_fixed_and_a_continuous_task_run_side_by_side(tmp_path, kafka, task_data):
    suffix = uuid.uuid4().hex[:6]
    fixed, continuous = f"fixed-{suffix}", f"cont-{suffix}"
    common = dict(
        dataset="dundee", target="energy", min_updates=1, round_deadline_s=120, reannounce_s=2
    )
    specs = {
        fixed: TaskSpec(task_id=fixed, rounds=2, **common),
        continuous: TaskSpec(task_id=continuous, rounds=1, continuous=True, **common),
    }
    registry = Registry(tmp_path / "registry")
    metrics = CoordinatorMetrics()
    loops = {
        t: RoundLoop(s, task_data, registry, kafka.settings(), metrics) for t, s in specs.items()
    }
    threads = {t: threading.Thread(target=loop.run, daemon=True) for t, loop in loops.items()}
    station = _Station(kafka, registry, {fixed: 1e-3, continuous: -1e-3})
    station.start()
    for thread in threads.values():
        thread.start()
    try:
        threads[fixed].join(timeout=240)
        assert not threads[fixed].is_alive(), "the fixed task did not end"
        deadline = time.monotonic() + 240
        while _latest(registry, continuous) < 4 and time.monotonic() < deadline:
            time.sleep(0.5)
        # The continuous task went past its `rounds` (1) and is still running.
        assert _latest(registry, continuous) >= 4
        assert threads[continuous].is_alive()
    finally:
        for loop in loops.values():
            loop.stop.set()
        for thread in threads.values():
            thread.join(timeout=60)
        station.stop.set()
        station.join(timeout=30)

    assert _latest(registry, fixed) == 2
    deadline = time.monotonic() + 10
    while fixed not in station.ended and time.monotonic() < deadline:
        time.sleep(0.2)
    assert station.ended == {fixed}, "only the fixed task announces its end"
    # FedAvg of one update is that update: version v = version v−1 + the task's own offset.
    for task, offset in ((fixed, 1e-3), (continuous, -1e-3)):
        last = _latest(registry, task)
        for v in range(1, last + 1):
            record = registry.version(task, v)
            assert record.updates == (f"dd:modes:{task}:v{v - 1}",)
            previous = registry.version(task, v - 1).weights()
            for got, before in zip(record.weights(), previous, strict=True):
                np.testing.assert_allclose(got - before, offset, rtol=1e-3, atol=1e-6)
    registry.close()
