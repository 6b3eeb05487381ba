"""The Kafka rows of the catalogue: bad client updates on a coordinator's updates topic, and
bad announcements and chunks on a station's topics, all on the embedded broker (Tansu).

Coordinator: one real round of the Dundee energy task, in-process. Every bad update is
published before the two honest ones, so it reaches the round while it is open; the round
must refuse each (counted under its reason, logged with its detail) and aggregate exactly the
honest two. Station: the real FederationLoop and Participant; after the bad messages a good
serve-only announcement on the same topic must be served.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import Counter

import numpy as np
import pytest

from coordinator.metrics import CoordinatorMetrics
from coordinator.registry import Registry, TaskNotFound
from coordinator.round_loop import RoundLoop
from coordinator.task_data import load_task_data
from coordinator.task_spec import TaskSpec
from models.aggregate import ClientResult, fedavg
from proto.blob_codec import weights_to_blob
from proto.federation_codec import ExitScore, build_update
from proto.kafka import Publisher, ensure_topics, task_topic_specs, updates_topic
from proto.limits import WireLimits
from proto.signing import KeyRing, generate_keypair, load_public_key, load_signer, sign
from tests.bad_input.catalogue import by_wire
from tests.bad_input.conftest import sample, xfail_marks

HONEST = ["dd:a", "dd:b"]
SCORES = [ExitScore(e, 10, 1.0, 1.0, 1.0) for e in ("edge", "fog", "cloud")]
WAIT = 120.0


class _Lines(logging.Handler):
    """Every warning a program logs, kept to check each refusal was logged with its detail."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _params(prefix: str) -> list:
    return [pytest.param(c, id=c.id, marks=xfail_marks(c)) for c in by_wire("kafka", prefix)]


# --- the coordinator's round ----------------------------------------------------------------


def _bad_updates(task, base, weights, signers):
    """Case id -> (update id or "?" when unreadable, payload bytes)."""
    rng = np.random.default_rng(1)

    def w():
        return [x + rng.normal(0, 0.01, x.shape).astype(x.dtype) for x in weights]

    def update(uid, station="dd:a", weights_=None, base_=base, signer="dd:a", samples=100):
        message, chunks = build_update(
            task, station, base_, base + 1, uid, samples, SCORES,
            w() if weights_ is None else weights_, 0.5,
            None if signer is None else signers[signer],
        )  # fmt: skip
        assert not chunks
        return message

    out = {}
    out["update-garbage-bytes"] = ("?", random.Random(7).randbytes(300))
    whole = update("a-trunc").SerializeToString()
    out["update-truncated"] = ("?", whole[: len(whole) // 2])
    flipped = update("a-flip", signer=None)
    data = bytearray(flipped.weights.data)
    data[len(data) // 2] ^= 0x10
    flipped.weights.data = bytes(data)
    sign(flipped, signers["dd:a"])
    out["update-bad-hash"] = ("a-flip", flipped)
    out["update-nan-weights"] = (
        "a-nan",
        update("a-nan", weights_=[np.full_like(x, np.nan) for x in weights]),
    )
    inf = w()
    inf[0].flat[0] = np.inf
    out["update-inf-weights"] = ("a-inf", update("a-inf", weights_=inf))
    out["update-wrong-shape"] = ("a-short", update("a-short", weights_=w()[:-1]))
    as_int = [x.astype(np.int32) for x in w()]
    out["update-wrong-dtype"] = ("a-int", update("a-int", weights_=as_int))
    out["update-stale"] = ("a-stale", update("a-stale", base_=base + 7))
    out["update-unknown-station"] = ("zz-1", update("zz-1", station="dd:zz"))
    out["update-unsigned"] = ("a-unsigned", update("a-unsigned", signer=None))
    tampered = update("a-tamper")
    tampered.sample_count = 10_000
    out["update-tampered-signature"] = ("a-tamper", tampered)
    huge = update("a-huge", signer=None)
    huge.weights.raw_size = 2**30
    sign(huge, signers["dd:a"])
    out["update-oversize"] = ("a-huge", huge)
    chunked = update("a-chunked", signer=None)
    small = WireLimits(inline_bytes=4096, chunk_bytes=4096)
    blob, chunks = weights_to_blob(w(), small)
    assert chunks, "the weights must need chunks at these limits"
    chunked.weights.CopyFrom(blob)
    sign(chunked, signers["dd:a"])
    out["update-missing-chunks"] = ("a-chunked", chunked)
    out["update-zero-samples"] = ("a-zero", update("a-zero", samples=0))
    return {
        k: (uid, v if isinstance(v, bytes) else v.SerializeToString())
        for k, (uid, v) in out.items()
    }


@pytest.fixture(scope="module")
def task_data():
    return load_task_data(TaskSpec(task_id="bad-input", dataset="dundee", target="energy"))


def _latest(registry, task):
    try:
        return registry.latest(task)
    except TaskNotFound:  # the task row appears when the loop starts
        return None


@pytest.fixture(scope="module")
def round_run(tmp_path_factory, kafka, task_data):
    """One round with every bad update of the catalogue and two honest ones; what came out."""
    tmp = tmp_path_factory.mktemp("round")
    task = f"bad-{uuid.uuid4().hex[:6]}"
    ring, signers = KeyRing(), {}
    for station in HONEST:
        key_id = station.replace(":", "-")
        private, public = generate_keypair(tmp / "keys", key_id)
        signers[station] = load_signer(private, key_id)
        ring.add(key_id, load_public_key(public))
    spec = TaskSpec(
        task_id=task, dataset="dundee", target="energy", rounds=1, stations=HONEST,
        min_updates=2, client_fraction=1.0, round_deadline_s=300, reannounce_s=300,
    )  # fmt: skip
    registry = Registry(tmp / "registry")
    metrics = CoordinatorMetrics()
    loop = RoundLoop(
        spec, task_data, registry, kafka.settings(), metrics, keyring=ring, require_signed=True
    )
    lines = _Lines()
    logging.getLogger("evfl.coordinator").addHandler(lines)
    before = {c.id: sample(metrics.registry, c, task=task) for c in by_wire("kafka", "update-")}
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + WAIT
        while _latest(registry, task) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        base_record = _latest(registry, task)
        assert base_record is not None
        base, weights = base_record.version, base_record.weights()
        bad = _bad_updates(task, base, weights, {"dd:a": signers["dd:a"]})
        rng = np.random.default_rng(0)
        good = {}
        for station in HONEST:
            w = [x + rng.normal(0, 0.01, x.shape).astype(x.dtype) for x in weights]
            message, _ = build_update(
                task, station, base, base + 1, f"{station}:{task}:v{base}", 100, SCORES, w, 0.5,
                signers[station],
            )  # fmt: skip
            good[station] = (w, message.SerializeToString())
        with Publisher(kafka.settings()) as publisher:
            for _, payload in bad.values():
                publisher.publish(updates_topic(task), payload)
            publisher.publish(updates_topic(task), good["dd:a"][1])
            publisher.publish(updates_topic(task), good["dd:a"][1])  # update-duplicate
            publisher.publish(updates_topic(task), good["dd:b"][1])
        thread.join(timeout=WAIT)
        assert not thread.is_alive(), "the round did not close"
        yield {
            "task": task, "base": base, "registry": registry, "metrics": metrics,
            "before": before, "lines": list(lines.lines), "bad": bad, "good": good,
        }  # fmt: skip
    finally:
        loop.stop.set()
        thread.join(timeout=30)
        logging.getLogger("evfl.coordinator").removeHandler(lines)
        registry.close()


@pytest.mark.parametrize("c", _params("update-"))
def test_bad_update_is_refused_counted_and_the_honest_ones_still_aggregated(c, round_run):
    task, registry = round_run["task"], round_run["registry"]
    reason = c.labels["reason"]
    # (1) the refusal is logged once, with the reason and words naming the problem
    refused = [line for line in round_run["lines"] if f": {reason} (" in line and c.words in line]
    assert refused, (c.id, round_run["lines"])
    # (2) counted: the metric rose by the number of catalogue cases with this reason
    same = [k for k in by_wire("kafka", "update-") if k.labels["reason"] == reason]
    got = sample(round_run["metrics"].registry, c, task=task) - round_run["before"][c.id]
    assert got == len(same)
    assert registry.refusals(task)[reason] == len(same)
    # (3) nothing lost: exactly the honest updates made the new version, averaged exactly
    version = registry.version(task, round_run["base"] + 1)
    assert sorted(version.updates) == sorted(f"{s}:{task}:v{round_run['base']}" for s in HONEST)
    direct = fedavg([ClientResult(s, w, 100) for s, (w, _) in round_run["good"].items()])
    for got_w, want in zip(version.weights(), direct, strict=True):
        np.testing.assert_allclose(got_w, want, rtol=1e-6, atol=1e-6)


def test_refusals_of_readable_updates_name_the_update_and_station(round_run):
    for case_id, (update_id, _) in round_run["bad"].items():
        if update_id == "?":
            continue  # does not parse, or has no usable id: nothing to name
        assert any(f"refused update {update_id} from dd:" in line for line in round_run["lines"]), (
            case_id
        )


def test_every_refusal_of_the_round_is_a_catalogue_case(round_run):
    """No refusal happened that the catalogue does not list, and none was double counted."""
    want = Counter(c.labels["reason"] for c in by_wire("kafka", "update-"))
    assert round_run["registry"].refusals(round_run["task"]) == dict(want)


# --- a station's announcements ----------------------------------------------------------------


@pytest.fixture(scope="module")
def station_run(tmp_path_factory, kafka, energy_global):
    """The station's Kafka loop fed the catalogue's bad announcements, then a good one."""
    from fog_node.federation_loop import FederationLoop
    from fog_node.metrics import FogMetrics
    from fog_node.participant import Participant
    from fog_node.session_store import SessionStore
    from models.constraints import constraints_for
    from models.incremental import IncrementalSettings
    from models.served_partition import ServedVersions
    from proto.constraints_codec import constraints_to_proto
    from proto.federation_codec import SERVE_ONLY, build_announcement
    from proto.kafka import announce_topic, chunks_topic

    tmp = tmp_path_factory.mktemp("station")
    task = f"ann-{uuid.uuid4().hex[:6]}"
    private, public = generate_keypair(tmp / "keys", "coordinator-1")
    signer = load_signer(private, "coordinator-1")
    ring = KeyRing({"coordinator-1": load_public_key(public)})
    store = SessionStore(tmp / "sessions.sqlite3")
    served, metrics = ServedVersions(), FogMetrics()
    participant = Participant(
        energy_global.station, [task], store, served, metrics,
        IncrementalSettings(epochs=1), keyring=ring, require_signed=True,
    )  # fmt: skip
    g = energy_global

    def announcement(weights, key, version=1):
        now = int(time.time() * 1000)
        message, chunks = build_announcement(
            task, version, SERVE_ONLY, g.config.to_dict(), g.preprocessing.to_dict(), weights,
            constraints_to_proto(constraints_for(g.preprocessing, 50)), (np.inf, np.inf),
            0, now, key,
        )  # fmt: skip
        assert not chunks
        return message.SerializeToString()

    bad = {
        "announce-garbage-bytes": (announce_topic(task), random.Random(3).randbytes(200)),
        "announce-garbage-chunk": (chunks_topic(task), random.Random(4).randbytes(200)),
        "announce-nan-weights": (
            announce_topic(task),
            announcement([np.full_like(w, np.nan) for w in g.weights], signer),
        ),
        "announce-unsigned": (announce_topic(task), announcement(g.weights, None)),
    }
    ensure_topics(kafka.settings(), task_topic_specs(task))  # before the loop subscribes
    lines = _Lines()
    for name in ("evfl.fog.participant", "evfl.fog.kafka"):
        logging.getLogger(name).addHandler(lines)
    loop = FederationLoop(
        kafka.settings(), energy_global.station, [task], participant, store, metrics
    )
    loop.start()
    try:
        with Publisher(kafka.settings()) as publisher:
            for topic, payload in bad.values():
                publisher.publish(topic, payload)
            publisher.publish(announce_topic(task), announcement(g.weights, signer))
        # The version is served before the announcement is counted: wait for both.
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and (
            served.tasks().get(task) != 1
            or metrics.announcements.labels("serve_only")._value.get() < 1
        ):
            time.sleep(0.1)
        yield {"task": task, "served": served, "metrics": metrics, "lines": list(lines.lines),
               "loop": loop}  # fmt: skip
    finally:
        loop.stop()
        loop.join(timeout=30)
        for name in ("evfl.fog.participant", "evfl.fog.kafka"):
            logging.getLogger(name).removeHandler(lines)
        store.close()


@pytest.mark.parametrize(
    "c", [p for p in _params("announce-") if p.values[0].id != "announce-absurd-window"]
)
def test_bad_announcement_is_refused_counted_and_the_good_one_after_it_served(c, station_run):
    assert station_run["loop"].failure is None
    assert any(c.words in line and (c.error in line or "chunk refused" in line)
               for line in station_run["lines"]), station_run["lines"]  # fmt: skip
    assert sample(station_run["metrics"].registry, c) == 1
    assert station_run["served"].tasks() == {station_run["task"]: 1}
    assert station_run["metrics"].announcements.labels("serve_only")._value.get() == 1


@pytest.mark.parametrize(
    "c", [p for p in _params("announce-") if p.values[0].id == "announce-absurd-window"]
)
def test_an_announcement_with_an_impossible_window_is_refused_and_the_station_goes_on(
    c, tmp_path, kafka, energy_global
):
    from fog_node.federation_loop import FederationLoop
    from fog_node.metrics import FogMetrics
    from fog_node.participant import Participant
    from fog_node.session_store import SessionStore
    from models.constraints import constraints_for
    from models.datasets.record import iter_sessions
    from models.incremental import IncrementalSettings
    from models.served_partition import ServedVersions
    from proto.constraints_codec import constraints_to_proto
    from proto.federation_codec import SERVE_ONLY, build_announcement
    from proto.kafka import announce_topic

    task = f"win-{uuid.uuid4().hex[:6]}"
    g = energy_global
    store = SessionStore(tmp_path / "sessions.sqlite3")
    store.add(list(iter_sessions(g.station_sessions.head(100))))
    served, metrics = ServedVersions(), FogMetrics()
    participant = Participant(
        g.station, [task], store, served, metrics, IncrementalSettings(epochs=1)
    )

    def announcement(version, round_, window_start_ms=None):
        constraints = constraints_to_proto(constraints_for(g.preprocessing, 10))
        if window_start_ms is not None:
            constraints.window_start_unix_ms = window_start_ms
        now = int(time.time() * 1000)
        message, _ = build_announcement(
            task, version, round_, g.config.to_dict(), g.preprocessing.to_dict(), g.weights,
            constraints, (np.inf, np.inf), now + 600_000, now,
        )  # fmt: skip
        return message.SerializeToString()

    ensure_topics(kafka.settings(), task_topic_specs(task))  # before the loop subscribes
    lines = _Lines()
    logging.getLogger("evfl.fog.participant").addHandler(lines)
    loop = FederationLoop(kafka.settings(), g.station, [task], participant, store, metrics)
    loop.start()
    try:
        with Publisher(kafka.settings()) as publisher:
            publisher.publish(announce_topic(task), announcement(1, 1, 2**62))
            publisher.publish(announce_topic(task), announcement(2, SERVE_ONLY))
        deadline = time.monotonic() + WAIT
        while (
            served.tasks().get(task) != 2 and loop.failure is None and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert loop.failure is None, f"the station's Kafka loop died: {loop.failure!r}"
        assert sample(metrics.registry, c) == 1
        assert any(c.words in line for line in lines.lines), lines.lines
        assert served.tasks() == {task: 2}
        assert store.count() == 100
    finally:
        loop.stop()
        loop.join(timeout=30)
        logging.getLogger("evfl.fog.participant").removeHandler(lines)
        store.close()
