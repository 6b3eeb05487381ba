"""Smoke test of bench.latency's pure pieces and the Kafka baseline's tier logic.

No processes, no broker, no timing assertions: the closed-loop load generator answers every
request and tells which tier answered, the tables have a row for every tier and client count,
and a Kafka tier server routes a record to the reply topic or the next tier as its exit policy
says (the real end-to-end run is ``python -m bench.latency --quick``).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
from rich.console import Console

from bench.kafka_inference import REPLY_TOPIC, REQUEST_TOPICS, TierHandler
from bench.latency import (
    BASELINES,
    OURS,
    TIER_NAMES,
    breakdown_table,
    closed_loop,
    cpu_table,
    hop_breakdown,
    targets,
    tier_table,
)
from models.exit_policy import ExitPolicy
from models.normalization import Normalization
from models.served_partition import ServedPartition
from proto import inference_pb2
from proto.tensor_codec import encode_tensor

TIERS = {"edge": inference_pb2.EDGE, "fog": inference_pb2.FOG, "cloud": inference_pb2.CLOUD}
CLIENTS = (1, 4)


def _fake_chain(tier: str, nested: bool):
    """A call answered at ``tier`` with hop timings like the real chain's (ms)."""
    depth = TIER_NAMES.index(tier) + 1

    def call(i: int) -> inference_pb2.InferResponse:
        hops = []
        for k in range(depth):
            own = 0.1
            total = own + (0.5 * (depth - 1 - k) if nested else 0.0)
            hops.append(inference_pb2.HopTiming(tier=TIERS[TIER_NAMES[k]], compute_ms=0.05,
                                                total_ms=total))  # fmt: skip
        return inference_pb2.InferResponse(request_id=str(i), tier=TIERS[tier], hops=hops)

    return call


def _sweep() -> tuple[dict, dict]:
    ours = {t: [] for t in TIER_NAMES}
    base = {t: [] for t in TIER_NAMES}
    for n in CLIENTS:
        for tier in TIER_NAMES:
            ours[tier].append(closed_loop(_fake_chain(tier, True), OURS, tier, n, 30, 5))
            base[tier].append(
                closed_loop(_fake_chain(tier, False), BASELINES[tier], tier, n, 30, 5)
            )
    return ours, base


def test_every_request_is_answered_at_the_forced_tier_and_every_tier_has_its_table():
    ours, base = _sweep()
    for cells in (ours, base):
        for tier, cs in cells.items():
            assert [c.clients for c in cs] == list(CLIENTS)
            for c in cs:
                assert c.requests == 30 and c.all_answered_at(tier), c.answered
                assert c.rate > 0 and len(c.hops) == 30
    console = Console(record=True, width=250)
    for tier in TIER_NAMES:
        table = tier_table(tier, ours[tier], base[tier])
        assert table.row_count == len(CLIENTS)
        console.print(table)
        assert f"all {tier} / all {tier}" in console.export_text()
    parts, medians = breakdown_table(ours, base)
    assert parts.row_count > 0 and set(medians) == {
        f"{s}, {n} cl." for s in ("gRPC", "Kafka") for n in CLIENTS
    }
    assert cpu_table(ours, base).row_count == len(TIER_NAMES) * len(CLIENTS)
    _table, verdicts = targets(ours, base)
    assert [v["clients"] for v in verdicts["edge_vs_cloud_p50"]] == list(CLIENTS)
    assert {v["tier"] for v in verdicts["kafka_vs_grpc_p99"]} == {"fog", "cloud"}


def test_a_failing_call_is_counted_not_hidden():
    def call(i: int) -> inference_pb2.InferResponse:
        if i % 2:
            raise TimeoutError("no reply")
        return inference_pb2.InferResponse(tier=inference_pb2.FOG)

    cell = closed_loop(call, OURS, "fog", 2, 10, 0)
    assert cell.answered == Counter({"fog": 5, "error:TimeoutError": 5})
    assert not cell.all_answered_at("fog")


def test_hop_breakdown_attributes_the_time_between_the_tiers():
    hops = {"edge": (0.1, 3.0), "fog": (0.1, 2.0), "cloud": (0.1, 0.5)}
    nested = hop_breakdown(4.0, hops, nested=True)
    assert math.isclose(sum(nested.values()), 4.0)
    assert math.isclose(nested["client ↔ agent: gRPC over the Unix socket"], 1.0)
    assert math.isclose(nested["edge → fog: gRPC call, edge side encode/decode"], 0.9)
    flat = hop_breakdown(4.0, {"edge": (0.1, 0.2), "fog": (0.1, 0.3)}, nested=False)
    assert math.isclose(sum(flat.values()), 4.0)


class _FakeRunner:
    """A partition answering mean 0, log-variance 0 (std 1): LiteRT is not what is tested."""

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, hidden: np.ndarray) -> dict[str, np.ndarray]:
        out = {f"{self.name}_exit_out": np.zeros((1, 2), np.float32)}
        if self.name != "cloud":
            out[f"{self.name}_hidden"] = np.ones((1, 4), np.float32)
        return out


def _served(tier: str, fog_threshold: float) -> dict[str, ServedPartition]:
    index = TIER_NAMES.index(tier)
    norm = Normalization(np.zeros(3, np.float32), np.ones(3, np.float32), 0.0, 1.0)
    policy = ExitPolicy((-math.inf, fog_threshold))
    return {"t": ServedPartition("t", 1, index, _FakeRunner(tier), norm, policy)}  # type: ignore[arg-type]


def test_a_kafka_tier_answers_or_forwards_as_its_exit_policy_says():
    edge_hop = inference_pb2.HopTiming(tier=inference_pb2.EDGE, compute_ms=0.1, total_ms=0.2)
    request = inference_pb2.InferRequest(
        task_id="t",
        request_id="r-1",
        model_version=1,
        hidden=encode_tensor(np.ones((1, 4), np.float32), "edge_hidden"),
        hops=[edge_hop],
    )
    topic, value = TierHandler("fog", _served("fog", math.inf)).handle(request.SerializeToString())
    reply = inference_pb2.InferResponse.FromString(value)
    assert topic == REPLY_TOPIC and reply.tier == inference_pb2.FOG and reply.request_id == "r-1"
    assert [h.tier for h in reply.hops] == [inference_pb2.EDGE, inference_pb2.FOG]

    topic, value = TierHandler("fog", _served("fog", -math.inf)).handle(request.SerializeToString())
    assert topic == REQUEST_TOPICS["cloud"]
    topic, value = TierHandler("cloud", _served("cloud", -math.inf)).handle(value)
    reply = inference_pb2.InferResponse.FromString(value)
    assert topic == REPLY_TOPIC and reply.tier == inference_pb2.CLOUD
    assert [h.tier for h in reply.hops] == [
        inference_pb2.EDGE,
        inference_pb2.FOG,
        inference_pb2.CLOUD,
    ]
