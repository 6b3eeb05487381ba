"""The gRPC rows of the catalogue: a station's UploadSessions and Infer, a vehicle's local API.

Every program runs in-process behind a real gRPC server on loopback; the sessions, model and
hidden tensors are the real Dundee ones from the shared fixtures. Each case checks the error
the client sees, the Prometheus counter that counts it, and that good data around it survives.
"""

from __future__ import annotations

import dataclasses
import math
import time
from concurrent import futures
from datetime import timedelta

import grpc
import numpy as np
import pytest

from fog_node.metrics import FogMetrics
from fog_node.service import ServiceLimits, StationServicer
from fog_node.session_store import SessionStore
from models.served_partition import ServedVersions
from proto import sessions_pb2, station_pb2_grpc
from proto.grpc_channel import bind, open_channel
from proto.session_codec import session_to_proto
from proto.tensor_codec import encode_tensor
from tests.bad_input.catalogue import by_wire, case
from tests.bad_input.conftest import sample, xfail_marks
from tests.test_fog_service import TASK, VERSION, _batches, _edge_hidden, _real, _request, _served


def _params(prefix: str) -> list:
    return [pytest.param(c, id=c.id, marks=xfail_marks(c)) for c in by_wire("grpc", prefix)]


@pytest.fixture
def station(tmp_path, energy_global, partition_files):
    """A station whose fog exit always answers (no cloud), serving the real Dundee model."""
    store = SessionStore(tmp_path / "sessions.sqlite3")
    served = ServedVersions()
    served.install(_served(partition_files, energy_global, 1, (math.inf, math.inf)))
    servicer = StationServicer(
        energy_global.station, [], store, served, FogMetrics(), None,
        ServiceLimits(max_sessions_per_stream=100),
    )  # fmt: skip
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    station_pb2_grpc.add_StationServiceServicer_to_server(servicer, server)
    port = bind(server, "127.0.0.1:0")
    server.start()
    channel = open_channel(f"127.0.0.1:{port}")
    yield servicer, station_pb2_grpc.StationServiceStub(channel), channel
    channel.close()
    server.stop(0)
    store.close()


# --- sessions -------------------------------------------------------------------------------


def _eventually(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _replace(**fields):
    return lambda s, m: session_to_proto(dataclasses.replace(s, **fields))


def _edit(**fields):
    def edit(s, m):
        for name, value in fields.items():
            setattr(m, name, value)
        return m

    return edit


BAD_SESSIONS = {
    "session-nan-energy": _replace(energy_kwh=float("nan")),
    "session-inf-energy": _replace(energy_kwh=float("inf")),
    "session-negative-kwh": _replace(energy_kwh=-3.0),
    "session-absurd-energy": _replace(energy_kwh=1e6),
    "session-end-before-start": lambda s, m: session_to_proto(
        dataclasses.replace(s, end=s.start - timedelta(hours=2))
    ),
    "session-absurd-duration": lambda s, m: session_to_proto(
        dataclasses.replace(s, end=s.start + timedelta(days=60))
    ),
    "session-placeholder-date": _edit(start_unix_ms=0, end_unix_ms=3_600_000),
    "session-nan-coordinates": _replace(latitude=float("nan"), longitude=-3.0),
    "session-negative-charging-time": _replace(charging_time_h=-1.0),
    "session-unknown-timezone": _edit(timezone="Mars/Olympus_Mons"),
    "session-time-out-of-range": _edit(end_unix_ms=2**62),
    "session-zone-is-a-directory": _edit(timezone="Europe"),
    "session-missing-id": _edit(session_id=""),
    "session-unknown-station": _edit(station_id="dd:not-this-site"),
}


@pytest.mark.parametrize("c", _params("session-"))
def test_bad_session_is_rejected_counted_and_the_good_ones_around_it_kept(
    c, station, energy_global
):
    servicer, stub, _ = station
    real = _real(energy_global, 5)
    good, victim = [real[0], real[1], real[3], real[4]], real[2]
    bad = BAD_SESSIONS[c.id](victim, session_to_proto(victim))
    bad_id = bad.session_id
    stream = [
        sessions_pb2.SessionBatch(
            sessions=[session_to_proto(good[0]), bad, session_to_proto(good[1])]
        ),
        sessions_pb2.SessionBatch(sessions=[session_to_proto(s) for s in good[2:]]),
    ]
    before = sample(servicer.metrics.registry, c)

    ack = stub.UploadSessions(iter(stream), timeout=10)

    assert [(r.session_id, r.reason) for r in ack.rejected] == [(bad_id, c.labels["reason"])]
    assert c.words in ack.rejected[0].reason
    assert sample(servicer.metrics.registry, c) == before + 1
    assert sorted(ack.committed) == sorted(s.session_id for s in good)
    # A resend (the vehicle did not get the ack) stores nothing twice and rejects again.
    again = stub.UploadSessions(iter(stream), timeout=10)
    assert sorted(again.duplicate) == sorted(s.session_id for s in good) and not again.committed
    assert sample(servicer.metrics.registry, c) == before + 2
    assert servicer.store.count() == len(good)
    assert sorted(servicer.store.frame()["session_id"]) == sorted(s.session_id for s in good)


@pytest.mark.parametrize("c", [case("upload-garbage-bytes")], ids=lambda c: c.id)
def test_garbage_in_an_upload_stream_is_refused_counted_and_what_came_before_kept(
    c, station, energy_global
):
    servicer, stub, channel = station
    sessions = _real(energy_global, 8)
    first = sessions_pb2.SessionBatch(sessions=[session_to_proto(s) for s in sessions[:4]])
    raw = channel.stream_unary(
        "/evfl.v1.StationService/UploadSessions",
        request_serializer=lambda b: b,
        response_deserializer=sessions_pb2.UploadAck.FromString,
    )
    before = sample(servicer.metrics.registry, c)
    ok_before = servicer.metrics.upload_streams.labels("ok")._value.get()

    with pytest.raises(grpc.RpcError) as err:
        raw(iter([first.SerializeToString(), b"\xff\xff\xff\xff garbage"]), timeout=10)

    assert err.value.code() == grpc.StatusCode[c.error]
    assert c.words in err.value.details()
    # gRPC answers the client before the servicer's loop sees the end of the stream.
    assert _eventually(lambda: sample(servicer.metrics.registry, c) == before + 1)
    assert servicer.metrics.upload_streams.labels("ok")._value.get() == ok_before
    assert sorted(servicer.store.frame()["session_id"]) == sorted(
        s.session_id for s in sessions[:4]
    )
    ack = stub.UploadSessions(_batches(sessions), timeout=10)  # the vehicle resends everything
    assert sorted(ack.duplicate) == sorted(s.session_id for s in sessions[:4])
    assert sorted(ack.committed) == sorted(s.session_id for s in sessions[4:])
    assert servicer.store.count() == 8


@pytest.mark.parametrize("c", [case("upload-oversize-stream")], ids=lambda c: c.id)
def test_an_oversize_stream_is_refused_counted_and_the_committed_part_kept(
    c, station, energy_global
):
    servicer, stub, _ = station
    sessions = _real(energy_global, 120)
    before = sample(servicer.metrics.registry, c)
    with pytest.raises(grpc.RpcError) as err:
        stub.UploadSessions(_batches(sessions, size=100), timeout=10)
    assert err.value.code() == grpc.StatusCode[c.error]
    assert c.words in err.value.details()
    assert sample(servicer.metrics.registry, c) == before + 1
    assert servicer.store.count() == 100
    ack = stub.UploadSessions(_batches(sessions[100:]), timeout=10)
    assert len(ack.committed) == 20 and servicer.store.count() == 120


# --- inference ------------------------------------------------------------------------------


def _with_hidden(array):
    return lambda r: r.hidden.CopyFrom(encode_tensor(array, "edge_hidden"))


def _inf_hidden(r):
    hidden = np.frombuffer(r.hidden.data, np.float32).copy()
    hidden[3] = np.inf
    r.hidden.data = hidden.tobytes()


BAD_REQUESTS = {
    "infer-nan-hidden": _with_hidden(np.full((1, 64), np.nan, np.float32)),
    "infer-inf-hidden": _inf_hidden,
    "infer-wrong-shape": _with_hidden(np.zeros((1, 7), np.float32)),
    "infer-wrong-dtype": _with_hidden(np.ones((1, 64), np.int32)),
    "infer-short-data": lambda r: setattr(r.hidden, "data", r.hidden.data[:-1]),
    "infer-unknown-dtype": lambda r: setattr(r.hidden, "dtype", 99),
    "infer-negative-dim": lambda r: r.hidden.shape.__setitem__(1, -64),
    "infer-oversize-tensor": lambda r: r.hidden.shape.__setitem__(1, 10**9),
    "infer-missing-hidden": lambda r: r.ClearField("hidden"),
    "infer-unknown-task": lambda r: setattr(r, "task_id", "no-such-task"),
    "infer-stale-version": lambda r: setattr(r, "model_version", 99),
}


@pytest.mark.parametrize("c", _params("infer-"))
def test_bad_infer_request_gets_a_clear_status_is_counted_and_serving_goes_on(
    c, station, partition_files, energy_global
):
    servicer, stub, _ = station
    hidden = _edge_hidden(partition_files, energy_global, 4)
    assert hidden.shape == (1, 64)  # what the cases above assume
    good = stub.Infer(_request(hidden), timeout=10)
    bad = _request(hidden)
    BAD_REQUESTS[c.id](bad)
    before = sample(servicer.metrics.registry, c)

    with pytest.raises(grpc.RpcError) as err:
        stub.Infer(bad, timeout=10)

    assert err.value.code() == grpc.StatusCode[c.error]
    assert c.words in err.value.details()
    assert sample(servicer.metrics.registry, c) == before + 1
    after = stub.Infer(_request(hidden), timeout=10)
    assert (after.tier, after.model_version) == (good.tier, VERSION)
    assert after.prediction == good.prediction and after.uncertainty == good.uncertainty
    assert servicer.served.tasks() == {TASK: VERSION}


# --- the vehicle agent's local API ----------------------------------------------------------


@pytest.fixture
def vehicle(tmp_path, energy_global, partition_files):
    """The agent's real parts (store, runtime, queue) behind its servicer, an edge model
    installed whose exit is always confident, so no station is needed."""
    import json

    from agent.config import load_config
    from agent.local_api import AgentServicer
    from agent.main import Agent
    from agent.metrics import agent_registry
    from evfl.brokers import free_port
    from proto import agent_pb2_grpc
    from proto.partition_messages import build_manifest

    config = load_config(
        None, vehicle_id="car-1", state_dir=tmp_path / "agent",
        listen=f"unix:{tmp_path / 'agent.sock'}",
        station={"target": f"127.0.0.1:{free_port()}", "timeout_s": 0.5}, answer_timeout_s=1.0,
    )  # fmt: skip
    agent = Agent(config)
    norm = json.dumps(energy_global.preprocessing.normalization.to_dict())
    manifest = build_manifest(
        TASK, 1, "edge", "tflite", "float32", partition_files["edge"], (math.inf, math.inf),
        norm, [], None,
    )  # fmt: skip
    agent.store.install(manifest, partition_files["edge"])
    agent.runtime.restore(agent.store)
    servicer = AgentServicer(
        "car-1", agent.runtime, agent.forwarder, agent.queue, agent.uploader, agent.store, 1.0
    )
    registry = agent_registry(
        lambda: servicer.answered, dict, lambda: agent.forwarder.failures,
        lambda: len(agent.queue), agent.queue.uploaded_count,
        requests_refused=lambda: servicer.requests_refused,
    )  # fmt: skip
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    agent_pb2_grpc.add_VehicleAgentServicer_to_server(servicer, server)
    port = bind(server, "127.0.0.1:0")
    server.start()
    channel = open_channel(f"127.0.0.1:{port}")
    yield agent, servicer, registry, agent_pb2_grpc.VehicleAgentStub(channel)
    channel.close()
    server.stop(0)
    agent.forwarder.close()
    agent.queue.close()


def _features(energy_global, row=0):
    norm = energy_global.preprocessing.normalization
    return (energy_global.x_test[row : row + 1] * norm.x_std + norm.x_mean).astype(np.float32)


def _bad_features(energy_global):
    x = _features(energy_global)
    x[0, 0] = np.nan
    return x


BAD_AGENT_CALLS = {
    "predict-nan-features": ("Predict", lambda g: {"features": encode_tensor(_bad_features(g))}),
    "predict-wrong-shape": (
        "Predict",
        lambda g: {"features": encode_tensor(np.ones((1, 3), np.float32))},
    ),
    "predict-unknown-task": (
        "Predict",
        lambda g: {"task_id": "no-such-task", "features": encode_tensor(_features(g))},
    ),
    "record-session-bad-zone": ("RecordSessions", None),
}


@pytest.mark.parametrize("c", _params("predict-") + _params("record-"))
def test_bad_local_api_call_gets_a_clear_status_is_counted_and_the_agent_goes_on(
    c, vehicle, energy_global
):
    from proto import agent_pb2

    agent, _, registry, stub = vehicle
    good = stub.Predict(
        agent_pb2.PredictRequest(task_id=TASK, request_id="g", features=encode_tensor(
            _features(energy_global))), timeout=10,
    )  # fmt: skip
    method, fields = BAD_AGENT_CALLS[c.id]
    sessions = _real(energy_global, 3)
    if method == "Predict":
        call = lambda: stub.Predict(  # noqa: E731
            agent_pb2.PredictRequest(
                **{"task_id": TASK, "request_id": "b", **fields(energy_global)}
            ),
            timeout=10,
        )
    else:
        broken = session_to_proto(sessions[1])
        broken.timezone = ""
        request = agent_pb2.RecordSessionsRequest(sessions=[session_to_proto(sessions[0]), broken])
        call = lambda: stub.RecordSessions(request, timeout=10)  # noqa: E731
    before = sample(registry, c)

    with pytest.raises(grpc.RpcError) as err:
        call()

    assert err.value.code() == grpc.StatusCode[c.error]
    assert c.words in err.value.details()
    assert sample(registry, c) == before + 1
    again = stub.Predict(
        agent_pb2.PredictRequest(task_id=TASK, request_id="g2", features=encode_tensor(
            _features(energy_global))), timeout=10,
    )  # fmt: skip
    assert (again.prediction, again.model_version) == (good.prediction, 1)
    # Nothing of a refused RecordSessions request is queued; the good sessions, sent again
    # on their own, are queued exactly once.
    assert len(agent.queue) == 0
    reply = stub.RecordSessions(
        agent_pb2.RecordSessionsRequest(sessions=[session_to_proto(s) for s in sessions]),
        timeout=10,
    )
    assert (reply.queued, reply.queue_length) == (3, 3)
