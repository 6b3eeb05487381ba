"""The station's gRPC service on real servers (loopback), real Dundee sessions and a real model.

Upload: committed, duplicate and rejected sessions in one stream, and nothing good is lost
around the bad. Infer: the fog answers when its exit is confident, relays the cloud otherwise,
answers degraded when the cloud is down, and refuses bad tensors with a clear status.
"""

from __future__ import annotations

import math
from concurrent import futures
from dataclasses import replace

import grpc
import numpy as np
import pytest

from coordinator.cloud_service import CloudServicer
from fog_node.metrics import FogMetrics
from fog_node.service import ServiceLimits, StationServicer
from fog_node.session_store import SessionStore
from models.datasets.record import iter_sessions
from models.exit_policy import ExitPolicy
from models.served_partition import ServedPartition, ServedVersions
from models.tflite_runner import TfliteRunner
from proto import inference_pb2, sessions_pb2, station_pb2, station_pb2_grpc
from proto.grpc_channel import add_health_and_reflection, bind, open_channel
from proto.session_codec import session_to_proto
from proto.tensor_codec import encode_tensor

TASK = "dundee-energy"
VERSION = 3


@pytest.fixture(scope="module")
def partitions(energy_global):
    from models.export import serving_partitions

    return serving_partitions(energy_global.config, energy_global.weights, ("edge", "fog", "cloud"))


def _served(partitions, energy_global, index, thresholds=()):
    name = ("edge", "fog", "cloud")[index]
    return ServedPartition(
        TASK,
        VERSION,
        index,
        TfliteRunner(partitions[name], workers=2),
        energy_global.preprocessing.normalization,
        ExitPolicy(tuple(thresholds)),
    )


def _server(add, servicer):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add(servicer, server)
    port = bind(server, "127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture
def cloud(partitions, energy_global):
    served = ServedVersions()
    served.install(_served(partitions, energy_global, 2))
    add = station_pb2_grpc.add_CloudServiceServicer_to_server
    server, port = _server(add, CloudServicer(served))
    yield port
    server.stop(0)


@pytest.fixture
def station(tmp_path, energy_global, partitions, cloud):
    """A station whose fog exit is never confident (so the cloud answers), and its stub."""
    store = SessionStore(tmp_path / "sessions.sqlite3")
    served = ServedVersions()
    served.install(_served(partitions, energy_global, 1, (-math.inf, -math.inf)))
    cloud_channel = open_channel(f"127.0.0.1:{cloud}")
    servicer = StationServicer(
        energy_global.station,
        [],
        store,
        served,
        FogMetrics(),
        station_pb2_grpc.CloudServiceStub(cloud_channel),
        ServiceLimits(max_sessions_per_stream=1000),
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    station_pb2_grpc.add_StationServiceServicer_to_server(servicer, server)
    add_health_and_reflection(server, ["evfl.v1.StationService"])
    port = bind(server, "127.0.0.1:0")
    server.start()
    channel = open_channel(f"127.0.0.1:{port}")
    yield servicer, station_pb2_grpc.StationServiceStub(channel), channel
    channel.close()
    server.stop(0)
    cloud_channel.close()
    store.close()


def _batches(sessions, size=100):
    protos = [session_to_proto(s) for s in sessions]
    for i in range(0, len(protos), size):
        yield sessions_pb2.SessionBatch(sessions=protos[i : i + size])


def _real(energy_global, n):
    return list(iter_sessions(energy_global.station_sessions.head(n)))


# --- upload ---------------------------------------------------------------------------------


def test_upload_commits_real_sessions_and_a_resend_creates_no_duplicates(station, energy_global):
    servicer, stub, _ = station
    sessions = _real(energy_global, 300)
    ack = stub.UploadSessions(_batches(sessions))
    assert sorted(ack.committed) == sorted(s.session_id for s in sessions)
    assert not ack.duplicate and not ack.rejected

    again = stub.UploadSessions(_batches(sessions, size=37))
    assert sorted(again.duplicate) == sorted(s.session_id for s in sessions)
    assert not again.committed
    assert servicer.store.count() == 300
    stored = servicer.store.frame()
    assert list(stored["session_id"]) == [s.session_id for s in sessions]


def test_bad_sessions_are_rejected_with_reasons_and_good_ones_around_them_kept(
    station, energy_global
):
    servicer, stub, _ = station
    good = _real(energy_global, 6)
    nan_energy = replace(good[1], session_id="bad-nan", energy_kwh=float("nan"))
    negative = replace(good[2], session_id="bad-negative", energy_kwh=-3.0)
    earlier = good[3].start - (good[3].end - good[3].start)
    backwards = replace(good[3], session_id="bad-backwards", end=earlier)
    elsewhere = replace(good[4], session_id="bad-elsewhere", station_id="dd:not-this-station")
    batch = [good[0], nan_energy, good[1], negative, backwards, good[5], elsewhere]
    ack = stub.UploadSessions(_batches(batch))
    assert sorted(ack.committed) == sorted(s.session_id for s in (good[0], good[1], good[5]))
    reasons = {r.session_id: r.reason for r in ack.rejected}
    assert reasons == {
        "bad-nan": "non_finite_energy",
        "bad-negative": "negative_energy",
        "bad-backwards": "end_before_start",
        "bad-elsewhere": "other_station",
    }
    assert servicer.store.rejections() == {
        "non_finite_energy": 1,
        "negative_energy": 1,
        "end_before_start": 1,
        "other_station": 1,
    }
    rejected = servicer.metrics.sessions_rejected.labels("other_station")._value.get()
    assert rejected == 1


def test_malformed_protobuf_gets_a_grpc_error_and_the_service_keeps_serving(station, energy_global):
    _, stub, channel = station
    raw = channel.stream_unary(
        "/evfl.v1.StationService/UploadSessions",
        request_serializer=lambda b: b,
        response_deserializer=sessions_pb2.UploadAck.FromString,
    )
    with pytest.raises(grpc.RpcError) as err:
        raw(iter([b"\xff\xff\xff\xff garbage"]))
    assert err.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    ack = stub.UploadSessions(_batches(_real(energy_global, 5)))
    assert len(ack.committed) == 5


def test_an_oversize_stream_is_refused_but_what_was_committed_stays(station, energy_global):
    servicer, stub, _ = station
    sessions = list(iter_sessions(energy_global.station_sessions.head(1100)))
    with pytest.raises(grpc.RpcError) as err:
        stub.UploadSessions(_batches(sessions, size=500))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1000 sessions" in err.value.details()
    assert servicer.store.count() == 1000  # the first two batches were committed before
    ack = stub.UploadSessions(_batches(sessions[1000:]))
    assert len(ack.committed) == 100


def test_an_oversize_message_is_refused_by_grpc(tmp_path, energy_global):
    store = SessionStore(tmp_path / "s.sqlite3")
    servicer = StationServicer(energy_global.station, [], store, ServedVersions(), FogMetrics())
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        options=[("grpc.max_receive_message_length", 64 * 1024)],
    )
    station_pb2_grpc.add_StationServiceServicer_to_server(servicer, server)
    port = bind(server, "127.0.0.1:0")
    server.start()
    try:
        stub = station_pb2_grpc.StationServiceStub(open_channel(f"127.0.0.1:{port}"))
        big = _real(energy_global, 1000)
        with pytest.raises(grpc.RpcError) as err:
            stub.UploadSessions(_batches(big, size=1000))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert store.count() == 0
    finally:
        server.stop(0)
        store.close()


# --- inference ------------------------------------------------------------------------------


def _edge_hidden(partitions, energy_global, row):
    edge = TfliteRunner(partitions["edge"], workers=1)
    return edge.run(energy_global.x_test[row : row + 1])["edge_hidden"]


def _keras_exits(energy_global, rows):
    from models.partitioned import build_model, set_weights

    model = build_model(energy_global.config)
    set_weights(model, energy_global.weights)
    outputs = model.predict(energy_global.x_test[rows], verbose=0)
    norm = energy_global.preprocessing.normalization
    return [norm.inverse(np.asarray(o)) for o in outputs]


def _request(hidden, version=VERSION, task=TASK):
    return inference_pb2.InferRequest(
        task_id=task,
        request_id="r-1",
        model_version=version,
        hidden=encode_tensor(np.asarray(hidden, np.float32), "edge_hidden"),
        hops=[inference_pb2.HopTiming(tier=inference_pb2.EDGE, compute_ms=0.01, total_ms=0.02)],
    )


def test_unconfident_fog_relays_the_cloud_answer_of_the_same_model(
    station, partitions, energy_global
):
    _, stub, _ = station
    rows = [0, 1, 2]
    keras_exits = _keras_exits(energy_global, rows)
    for i, row in enumerate(rows):
        reply = stub.Infer(_request(_edge_hidden(partitions, energy_global, row)), timeout=5)
        assert reply.tier == inference_pb2.CLOUD and reply.exit_index == 2
        assert not reply.degraded
        mean, std = keras_exits[2]
        assert reply.prediction == pytest.approx(mean[i], abs=1e-3)
        assert reply.uncertainty == pytest.approx(std[i], rel=1e-3)
        assert [h.tier for h in reply.hops] == [
            inference_pb2.EDGE,
            inference_pb2.FOG,
            inference_pb2.CLOUD,
        ]
        fog_hop = reply.hops[1]
        assert fog_hop.total_ms >= reply.hops[2].total_ms  # the fog's time includes the cloud's


def test_confident_fog_answers_itself(station, partitions, energy_global):
    servicer, stub, _ = station
    servicer.served.install(_served(partitions, energy_global, 1, (math.inf, math.inf)))
    reply = stub.Infer(_request(_edge_hidden(partitions, energy_global, 5)), timeout=5)
    mean, _ = _keras_exits(energy_global, [5])[1]
    assert reply.tier == inference_pb2.FOG and reply.exit_index == 1
    assert reply.prediction == pytest.approx(mean[0], abs=1e-3)
    assert [h.tier for h in reply.hops] == [inference_pb2.EDGE, inference_pb2.FOG]


def test_cloud_down_answers_from_the_fog_flagged_degraded(tmp_path, partitions, energy_global):
    store = SessionStore(tmp_path / "s.sqlite3")
    served = ServedVersions()
    served.install(_served(partitions, energy_global, 1, (-math.inf, -math.inf)))
    from evfl.brokers import free_port

    dead = station_pb2_grpc.CloudServiceStub(open_channel(f"127.0.0.1:{free_port()}"))
    metrics = FogMetrics()
    servicer = StationServicer(
        energy_global.station, [], store, served, metrics, dead, ServiceLimits(cloud_timeout_s=0.5)
    )
    server, port = _server(station_pb2_grpc.add_StationServiceServicer_to_server, servicer)
    try:
        stub = station_pb2_grpc.StationServiceStub(open_channel(f"127.0.0.1:{port}"))
        reply = stub.Infer(_request(_edge_hidden(partitions, energy_global, 0)), timeout=5)
        assert reply.degraded and reply.tier == inference_pb2.FOG
        assert metrics.cloud_unreachable._value.get() == 1
    finally:
        server.stop(0)
        store.close()


@pytest.mark.parametrize(
    ("mutate", "code", "words"),
    [
        (lambda r: r.hidden.shape.__setitem__(1, 65), grpc.StatusCode.INVALID_ARGUMENT, "bytes"),
        (
            lambda r: r.hidden.CopyFrom(encode_tensor(np.zeros((1, 7), np.float32))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input shape",
        ),
        (
            lambda r: r.hidden.CopyFrom(encode_tensor(np.full((1, 64), np.nan, np.float32))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NaN",
        ),
        (lambda r: r.ClearField("hidden"), grpc.StatusCode.INVALID_ARGUMENT, "hidden"),
        (lambda r: setattr(r, "task_id", "no-such-task"), grpc.StatusCode.NOT_FOUND, "not served"),
        (
            lambda r: setattr(r, "model_version", 99),
            grpc.StatusCode.FAILED_PRECONDITION,
            "version 99",
        ),
    ],
    ids=["data-length", "shape", "nan", "missing", "unknown-task", "unknown-version"],
)
def test_bad_infer_requests_get_a_clear_status(
    station, partitions, energy_global, mutate, code, words
):
    servicer, stub, _ = station
    request = _request(_edge_hidden(partitions, energy_global, 0))
    mutate(request)
    with pytest.raises(grpc.RpcError) as err:
        stub.Infer(request, timeout=5)
    assert err.value.code() == code
    assert words in err.value.details()
    assert servicer.metrics.infer_errors.labels(code.name)._value.get() == 1


def test_status_health_and_reflection(station, energy_global):
    _, stub, channel = station
    stub.UploadSessions(_batches(_real(energy_global, 10)))
    status = stub.Status(station_pb2.StatusRequest())
    assert status.station_id == energy_global.station
    assert status.sessions_stored == 10
    assert [t.task_id for t in status.tasks] == [TASK]
    assert status.tasks[0].serving_version == VERSION

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service="evfl.v1.StationService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = reflect.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert "evfl.v1.StationService" in names
