"""Every refusal reason of the round loop, with crafted updates on the real updates topic.

The coordinator's round loop runs in-process against the embedded broker; updates are
published to the task's real topic as a station would, some of them bad in exactly one way.
The honest ones are aggregated; each bad one is refused, counted under its reason, and does
not reach the model.
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
from models.aggregate import ClientResult, fedavg
from proto import federation_pb2
from proto.federation_codec import ExitScore, build_update
from proto.kafka import Publisher, Subscriber, announce_topic, updates_topic
from proto.signing import KeyRing, generate_keypair, load_public_key, load_signer, sign

HONEST = ["dd:a", "dd:b", "dd:c", "dd:d"]
SCORES = [ExitScore(e, 10, 1.0, 1.0, 1.0) for e in ("edge", "fog", "cloud")]


@pytest.fixture(scope="module")
def task_data():
    return load_task_data(TaskSpec(task_id="refusals", dataset="dundee", target="energy"))


def _update(task, station, base, weights, signer, update_id=None, samples=100):
    message, chunks = build_update(
        task,
        station,
        base,
        base + 1,
        update_id or f"{station}:{task}:v{base}",
        samples,
        SCORES,
        weights,
        0.5,
        signer,
    )
    assert not chunks
    return message


def test_each_bad_update_is_refused_for_its_reason_and_only_honest_ones_are_averaged(
    tmp_path, kafka, task_data
):
    task = f"refusals-{uuid.uuid4().hex[:6]}"
    keys = tmp_path / "keys"
    ring = KeyRing()
    signers = {}
    for station in [*HONEST, "dd:rogue", "dd:e"]:
        private, public = generate_keypair(keys, station.replace(":", "-"))
        signers[station] = load_signer(private, station.replace(":", "-"))
        if station != "dd:rogue":
            ring.add(station.replace(":", "-"), load_public_key(public))
    spec = TaskSpec(
        task_id=task,
        dataset="dundee",
        target="energy",
        rounds=1,
        stations=[*HONEST, "dd:e"],
        min_updates=5,
        client_fraction=1.0,
        round_deadline_s=300,
        reannounce_s=300,
        norm_outlier_k=5.0,
        norm_outlier_min_clients=5,
    )
    registry = Registry(tmp_path / "registry")
    loop = RoundLoop(
        spec,
        task_data,
        registry,
        kafka.settings(),
        CoordinatorMetrics(),
        keyring=ring,
        require_signed=True,
    )
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("v", loop.run()), daemon=True)
    thread.start()
    try:
        # Wait for version 0's announcement: then round 1 is open.
        with Subscriber(kafka.settings(), f"watch-{task}") as watch:
            deadline = time.monotonic() + 120
            while registry_latest(registry, task) is None and time.monotonic() < deadline:
                time.sleep(0.2)
            watch.assign_from_beginning([announce_topic(task)])
            announced = None
            while announced is None and time.monotonic() < deadline:
                announced = watch.poll(0.5)
        assert announced is not None
        base = federation_pb2.ModelAnnouncement.FromString(announced.value).version
        weights = registry.version(task, base).weights()
        rng = np.random.default_rng(0)

        def honest(station):
            w = [x + rng.normal(0, 0.01, x.shape).astype(x.dtype) for x in weights]
            return w, _update(task, station, base, w, signers[station])

        crafted = []
        good = {}
        for station in HONEST:
            w, msg = honest(station)
            good[station] = (w, msg.sample_count)
            crafted.append(msg.SerializeToString())
        crafted.append(crafted[0])  # the same update again: duplicate
        w, _ = honest("dd:e")
        outlier = [x + 50.0 * np.sign(rng.normal(size=x.shape)).astype(x.dtype) for x in w]
        crafted.append(_update(task, "dd:e", base, outlier, signers["dd:e"]).SerializeToString())
        bad = {
            "malformed": b"\x0a\xff\xff not a ClientUpdate",
            "bad_signature": _update(task, "dd:rogue", base, w, signers["dd:rogue"]),
            "unknown_station": _update(task, "dd:zz", base, w, signers["dd:a"], "zz-1"),
            "stale": _update(task, "dd:a", base + 7, w, signers["dd:a"], "a-stale"),
            "wrong_task": _update("other-task", "dd:a", base, w, signers["dd:a"], "a-other"),
            "shape_mismatch": _update(task, "dd:b", base, w[:-1], signers["dd:b"], "b-short"),
            "non_finite": _update(
                task, "dd:c", base, [np.full_like(x, np.inf) for x in w], signers["dd:c"], "c-inf"
            ),
        }
        flipped = _update(task, "dd:d", base, w, None, "d-flip")
        data = bytearray(flipped.weights.data)
        data[len(data) // 2] ^= 0x10
        flipped.weights.data = bytes(data)
        sign(flipped, signers["dd:d"])  # a station that signs corrupted bytes: the hash catches it
        bad["bad_hash"] = flipped
        with Publisher(kafka.settings()) as publisher:
            for payload in bad.values():
                raw = payload if isinstance(payload, bytes) else payload.SerializeToString()
                publisher.publish(updates_topic(task), raw)
            for raw in crafted:
                publisher.publish(updates_topic(task), raw)
        thread.join(timeout=300)
        assert not thread.is_alive()
        refusals = registry.refusals(task)
        expected = {reason: 1 for reason in bad}
        expected["duplicate"] = 1
        expected["norm_outlier"] = 1
        assert refusals == expected
        version = registry.version(task, base + 1)
        assert sorted(version.updates) == sorted(f"{s}:{task}:v{base}" for s in HONEST)
        direct = fedavg([ClientResult(s, w, n) for s, (w, n) in good.items()])
        for got, want in zip(version.weights(), direct, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    finally:
        loop.stop.set()
        thread.join(timeout=30)
        registry.close()


def registry_latest(registry, task):
    try:
        return registry.latest(task)
    except TaskNotFound:  # the task row appears when the loop starts
        return None
