"""The agent's local API against a real in-process station: which tier answers, hop timings,
graceful degradation, bad requests, and session upload on plug-in."""

from __future__ import annotations

import json
import math
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from agent.config import load_config
from agent.main import Agent
from fog_node.metrics import FogMetrics
from fog_node.service import StationServicer
from fog_node.session_store import SessionStore
from models.datasets.record import iter_sessions
from models.exit_policy import ExitPolicy
from models.model_config import PARTITIONS
from models.served_partition import ServedPartition, ServedVersions
from models.tflite_runner import TfliteRunner
from proto import agent_pb2, agent_pb2_grpc, inference_pb2, station_pb2_grpc
from proto.grpc_channel import bind, open_channel
from proto.partition_messages import build_manifest
from proto.session_codec import session_to_proto
from proto.tensor_codec import encode_tensor

TASK = "dundee-energy"
VERSION = 1


@pytest.fixture(scope="module")
def files(energy_global):
    from models.export import serving_partitions

    return serving_partitions(energy_global.config, energy_global.weights, PARTITIONS)


@pytest.fixture
def station(tmp_path, energy_global, files):
    store = SessionStore(tmp_path / "station.sqlite3")
    served = ServedVersions()
    served.install(
        ServedPartition(TASK, VERSION, 1, TfliteRunner(files["fog"]),
                        energy_global.preprocessing.normalization, ExitPolicy(()))
    )  # fmt: skip
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = StationServicer(energy_global.station, [], store, served, FogMetrics())
    station_pb2_grpc.add_StationServiceServicer_to_server(servicer, server)
    port = bind(server, "127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", store
    server.stop(0)
    store.close()


def _agent(tmp_path, target, energy_global, files, edge_threshold):
    config = load_config(
        None,
        vehicle_id="car-1",
        state_dir=tmp_path / "agent",
        listen=f"unix:{tmp_path / 'agent.sock'}",
        station={"target": target, "timeout_s": 0.5},
        answer_timeout_s=1.0,
    )
    agent = Agent(config)
    normalization = json.dumps(energy_global.preprocessing.normalization.to_dict())
    manifest = build_manifest(
        TASK,
        VERSION,
        "edge",
        "tflite",
        "float32",
        files["edge"],
        (edge_threshold, math.inf),
        normalization,
        [],
        None,
    )
    agent.store.install(manifest, files["edge"])
    agent.start()
    stub = agent_pb2_grpc.VehicleAgentStub(open_channel(f"unix:{tmp_path / 'agent.sock'}"))
    return agent, stub


def _predict(stub, energy_global, row=0, task=TASK):
    norm = energy_global.preprocessing.normalization
    raw = energy_global.x_test[row : row + 1] * norm.x_std + norm.x_mean
    request = agent_pb2.PredictRequest(
        task_id=task, request_id=f"r{row}", features=encode_tensor(raw.astype(np.float32))
    )
    return stub.Predict(request, timeout=5)


def test_unconfident_edge_forwards_and_the_fog_answers_with_hop_timings(
    tmp_path, station, energy_global, files
):
    agent, stub = _agent(tmp_path, station[0], energy_global, files, -math.inf)
    try:
        reply = _predict(stub, energy_global)
        assert reply.tier == inference_pb2.FOG and not reply.degraded
        assert [h.tier for h in reply.hops] == [inference_pb2.EDGE, inference_pb2.FOG]
        edge, fog = reply.hops
        assert edge.total_ms >= fog.total_ms > 0 and edge.compute_ms > 0
        assert reply.model_version == VERSION
    finally:
        agent.stop()


def test_confident_edge_answers_locally(tmp_path, station, energy_global, files):
    agent, stub = _agent(tmp_path, station[0], energy_global, files, math.inf)
    try:
        reply = _predict(stub, energy_global, row=3)
        assert reply.tier == inference_pb2.EDGE and not reply.degraded
        assert [h.tier for h in reply.hops] == [inference_pb2.EDGE]
    finally:
        agent.stop()


def test_station_unreachable_gives_a_local_answer_flagged_degraded(tmp_path, energy_global, files):
    from evfl.brokers import free_port

    agent, stub = _agent(tmp_path, f"127.0.0.1:{free_port()}", energy_global, files, -math.inf)
    try:
        reply = _predict(stub, energy_global)  # the call itself has a 5 s deadline
        assert reply.tier == inference_pb2.EDGE and reply.degraded
        assert agent.forwarder.failures
    finally:
        agent.stop()


def test_bad_requests_get_clear_statuses(tmp_path, station, energy_global, files):
    agent, stub = _agent(tmp_path, station[0], energy_global, files, math.inf)
    try:
        with pytest.raises(grpc.RpcError) as err:
            _predict(stub, energy_global, task="no-such-task")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        wrong = agent_pb2.PredictRequest(
            task_id=TASK, features=encode_tensor(np.zeros((1, 5), np.float32))
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(wrong, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        agent.stop()


def test_recorded_sessions_upload_when_plugged_in(tmp_path, station, energy_global, files):
    target, store = station
    agent, stub = _agent(tmp_path, target, energy_global, files, math.inf)
    try:
        sessions = list(iter_sessions(energy_global.station_sessions.head(120)))
        reply = stub.RecordSessions(
            agent_pb2.RecordSessionsRequest(sessions=[session_to_proto(s) for s in sessions]),
            timeout=5,
        )
        assert reply.queued == 120 and reply.queue_length == 120
        status = stub.SetPlugState(
            agent_pb2.PlugState(plugged=True, station_target=target), timeout=5
        )
        assert status.plugged
        deadline = time.monotonic() + 30
        while stub.Status(agent_pb2.AgentStatusRequest(), timeout=5).queue_length:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert store.count() == 120
        status = stub.SetPlugState(agent_pb2.PlugState(plugged=False), timeout=5)
        assert not status.plugged and status.uploaded == 120
        assert [(m.task_id, m.version) for m in status.models] == [(TASK, VERSION)]
    finally:
        agent.stop()
