"""Fault: the Kafka broker restarts empty (memory-only Tansu) in the middle of a run.

A real coordinator and two real stations run a 2-round task. Round 1's updates are published
and acknowledged by the broker while the coordinator is paused (SIGSTOP: a slow or partitioned
coordinator), so they are on the broker but unread when it restarts, on the same port, with
every topic, record and consumer-group offset gone. The coordinator is resumed.

Nothing lost: the coordinator re-creates the topics and re-announces round 1; each station
sees the announce log start over and re-sends the update it had sent; round 1 closes with both
updates, round 2 runs normally and the task ends at its last version, each version once.
"""

from __future__ import annotations

import os
import signal
import subprocess

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

from coordinator.registry import Registry
from proto.federation_codec import read_update
from proto.kafka import updates_topic
from tests.faults.conftest import report, wait_for
from tests.faults.federation_run import FederationRun

ROUNDS = 2


def _records_on(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "fault-count"})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return 0
        return sum(
            high - low
            for low, high in (
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                for p in metadata.partitions
            )
        )
    finally:
        consumer.close()


def test_kafka_restarting_empty_mid_round_loses_no_update(tmp_path, kafka, dundee):
    run = FederationRun(tmp_path, dundee, kafka.bootstrap_servers, ROUNDS)
    coordinator = run.coordinator
    stopped = False
    try:
        run.start_stations()
        for i in range(len(run.stations)):
            run.upload(i, 0)  # data first: the stations train the moment v0 is announced
        coordinator.start()
        run.wait_log("round 1 announced", r"round 1: announced version 0")
        os.kill(coordinator.proc.pid, signal.SIGSTOP)  # before any update can be read
        stopped = True
        assert run.log_count(r"round 1: accepted") == 0
        wait_for(
            "both stations to send their round-1 update",
            lambda: all(
                (s := run.task_state(i)) is not None and s.updates_sent == 1
                for i in range(len(run.stations))
            ),
            run.fogs,
        )
        before = {
            "updates_on_topic": _records_on(kafka.bootstrap_servers, updates_topic(run.task)),
            "updates_recorded": 0,
            "versions": run.log_count(r"committed version \d+ "),
            "round1_announcements": run.log_count(r"round 1: announced version 0"),
        }
        assert before["updates_on_topic"] == len(run.stations)
        for i in range(len(run.stations)):
            run.upload(i, 1)  # round 2's data (they trained v0 already)

        kafka.restart()  # same port, memory-only: everything is gone
        emptied = _records_on(kafka.bootstrap_servers, updates_topic(run.task))
        assert emptied == 0
        os.kill(coordinator.proc.pid, signal.SIGCONT)
        stopped = False

        try:
            code = coordinator.wait(timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail(
                "the run did not end within 300 s of the restart:\n"
                + "\n\n".join(p.log_tail(60) for p in run.programs)
            )
        assert code == 0, coordinator.log_tail()
        resent = sum(run.log_count(r"re-sending update", fog) for fog in run.fogs)
        with Registry(run.registry_dir) as registry:
            versions = registry.versions(run.task)
            assert [v.version for v in versions] == list(range(ROUNDS + 1))
            recorded = 0
            for r in range(1, ROUNDS + 1):
                stored = registry.round_updates(run.task, r)
                assert sorted(u.station_id for u in stored) == sorted(run.stations)
                recorded += len(stored)
                updates = [read_update(u.payload) for u in stored]
                counts = np.array([u.message.sample_count for u in updates], np.float64)
                for i, w in enumerate(registry.version(run.task, r).weights()):
                    direct = np.average(
                        np.stack([u.weights[i] for u in updates]).astype(np.float64),
                        axis=0,
                        weights=counts,
                    )
                    np.testing.assert_allclose(w, direct, rtol=1e-5, atol=1e-6)
            assert registry.tasks()[0].status == "ended"
        after = {
            "updates_on_topic": emptied,
            "updates_recorded": recorded,
            "versions": run.log_count(r"committed version \d+ "),
            "round1_announcements": run.log_count(r"round 1: announced version 0"),
        }
        assert after["versions"] == ROUNDS + 1  # each version committed once
        assert resent >= len(run.stations)
        assert run.log_count(r"lost its logs") >= 1
    finally:
        if stopped:
            os.kill(coordinator.proc.pid, signal.SIGCONT)
        run.kill_all()
    report(
        "Kafka broker restarted empty with 2 acked-but-unread updates",
        f"topics re-created, round re-announced, stations re-sent ({resent} re-sends), "
        f"run ended at v{ROUNDS}",
        before,
        after,
    )
