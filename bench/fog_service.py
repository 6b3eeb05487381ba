"""What the station's fog service costs on real Dundee data, against in-process baselines.

Three parts, each with its baseline measured in the same run (ratios, not absolute times: these
machines are shared and noisy):

1. ingest: sessions/s through ``StationService.UploadSessions`` over loopback gRPC (decode,
   validate, one SQLite transaction per batch) against ``SessionStore.add`` of the same
   sessions in the same batch sizes;
2. infer: per-request latency of the fog answering itself and of the fog relaying the cloud,
   over loopback gRPC, against the in-process LiteRT fog step (``ServedPartition.step``);
3. train: one incremental round (``train_round``) on the busiest station's sessions, against
   one ``model.predict`` pass over the same rows.

The global model is trained briefly (2 epochs) on the real Dundee split, as tests/conftest.py
does; the station is Dundee's busiest charge point.

    python -m bench.fog_service [--requests 2000] [--repeats 3] [--batch 500]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
logging.getLogger("tensorflow").setLevel(logging.ERROR)  # each round's predict retraces
RESULTS = Path(__file__).parent / "results"
TASK = "dundee-energy"
VERSION = 1
WARM_UP = 100
HIDDEN_ROWS = 256  # distinct real test rows cycled through by the infer requests


@dataclass(frozen=True)
class Station:
    """The global version and the busiest station's sessions, as a station would hold them."""

    config: Any  # models.model_config.ModelConfig
    preprocessing: Any  # models.preprocessing.Preprocessing
    weights: list
    x_test: np.ndarray
    station: str
    sessions: Any  # its real sessions in time order (pandas frame)


def _global_version() -> Station:
    from models.datasets.catalog import load_dataset
    from models.partitioned import weights_of
    from models.preprocessing import preprocessing_from_prepared
    from models.training import TrainSettings, fit, new_model
    from models.use_cases import UseCase, default_model_config, prepare

    dundee = load_dataset("dundee")
    prepared = prepare(dundee.sessions, UseCase.default("dundee", "energy"))
    config = default_model_config(prepared.use_case, prepared.input_shape)
    model = new_model(config, seed=0)
    fit(model, prepared.x_train, prepared.y_train, prepared.normalization, TrainSettings(epochs=2))
    sessions = dundee.sessions
    station = str(sessions["station_id"].value_counts().idxmax())
    mine = sessions[sessions["station_id"] == station].sort_values("start").reset_index(drop=True)
    return Station(
        config,
        preprocessing_from_prepared(prepared),
        weights_of(model),
        prepared.x_test,
        station,
        mine,
    )


@contextmanager
def _grpc_server(add: Callable[[Any, Any], None], servicer: Any) -> Iterator[int]:
    import grpc

    from proto.grpc_channel import bind

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add(servicer, server)
    port = bind(server, "127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(0)


def _percentiles(us: np.ndarray) -> dict[str, float]:
    p50, p95, p99 = np.percentile(us, [50, 95, 99])
    return {"p50_us": float(p50), "p95_us": float(p95), "p99_us": float(p99)}


def _table(title: str, columns: tuple[str, ...]) -> Table:
    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    return table


# --- 1. ingest ------------------------------------------------------------------------------


def bench_ingest(g: Station, batch: int, repeats: int, console: Console) -> dict[str, Any]:
    from fog_node.metrics import FogMetrics
    from fog_node.service import StationServicer
    from fog_node.session_store import SessionStore
    from models.datasets.record import iter_sessions
    from models.served_partition import ServedVersions
    from proto import sessions_pb2, station_pb2, station_pb2_grpc
    from proto.grpc_channel import open_channel
    from proto.session_codec import session_to_proto

    sessions = list(iter_sessions(g.sessions))
    n = len(sessions)
    chunks = [sessions[i : i + batch] for i in range(0, n, batch)]
    messages = [
        sessions_pb2.SessionBatch(sessions=[session_to_proto(s) for s in c]) for c in chunks
    ]
    add = station_pb2_grpc.add_StationServiceServicer_to_server
    grpc_s, direct_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            # Direct: the store alone, same batches, a fresh file.
            with SessionStore(Path(tmp) / f"direct-{r}.sqlite3") as store:
                t0 = time.perf_counter()
                for c in chunks:
                    store.add(c)
                direct_s.append(time.perf_counter() - t0)
                assert store.count() == n
            # gRPC: a fresh store behind a fresh server; the channel is connected beforehand.
            with SessionStore(Path(tmp) / f"grpc-{r}.sqlite3") as store:
                servicer = StationServicer(g.station, [], store, ServedVersions(), FogMetrics())
                with _grpc_server(add, servicer) as port:
                    channel = open_channel(f"127.0.0.1:{port}")
                    stub = station_pb2_grpc.StationServiceStub(channel)
                    stub.Status(station_pb2.StatusRequest(), timeout=10)
                    t0 = time.perf_counter()
                    ack = stub.UploadSessions(iter(messages), timeout=120)
                    grpc_s.append(time.perf_counter() - t0)
                    channel.close()
                assert len(ack.committed) == n, (len(ack.committed), len(ack.rejected))
                assert store.count() == n
    grpc_rate, direct_rate = n / statistics.median(grpc_s), n / statistics.median(direct_s)
    table = _table(
        f"1. ingest: {n} real sessions of station {g.station}, batches of {batch}, "
        f"median of {repeats} fresh stores",
        ("path", "sessions/s", "median s", "vs direct"),
    )
    table.add_row(
        "SessionStore.add, in-process (baseline)",
        f"{direct_rate:,.0f}",
        f"{statistics.median(direct_s):.3f}",
        "1.00×",
    )
    table.add_row(
        "UploadSessions, loopback gRPC",
        f"{grpc_rate:,.0f}",
        f"{statistics.median(grpc_s):.3f}",
        f"{grpc_rate / direct_rate:.2f}×",
    )
    console.print(table)
    return {
        "sessions": n,
        "batch_size": batch,
        "repeats": repeats,
        "grpc_seconds": grpc_s,
        "direct_seconds": direct_s,
        "grpc_sessions_per_s": grpc_rate,
        "direct_sessions_per_s": direct_rate,
        "grpc_over_direct_rate": grpc_rate / direct_rate,
    }


# --- 2. infer -------------------------------------------------------------------------------


def _timed(call: Callable[[int], object], requests: int) -> np.ndarray:
    for i in range(WARM_UP):
        call(i)
    out = np.empty(requests)
    for i in range(requests):
        t0 = time.perf_counter()
        call(i)
        out[i] = time.perf_counter() - t0
    return out * 1e6  # µs


def bench_infer(g: Station, requests: int, console: Console) -> dict[str, Any]:
    from coordinator.cloud_service import CloudServicer
    from fog_node.metrics import FogMetrics
    from fog_node.service import StationServicer
    from fog_node.session_store import SessionStore
    from models.exit_policy import ExitPolicy
    from models.export import serving_partitions
    from models.served_partition import ServedPartition, ServedVersions
    from models.tflite_runner import TfliteRunner
    from proto import inference_pb2, station_pb2, station_pb2_grpc
    from proto.grpc_channel import open_channel
    from proto.tensor_codec import encode_tensor

    parts = serving_partitions(g.config, g.weights, ("edge", "fog", "cloud"))
    norm = g.preprocessing.normalization

    def served(index: int, thresholds: tuple[float, ...] = ()) -> ServedPartition:
        name = ("edge", "fog", "cloud")[index]
        runner = TfliteRunner(parts[name], workers=2)
        return ServedPartition(TASK, VERSION, index, runner, norm, ExitPolicy(thresholds))

    edge = TfliteRunner(parts["edge"], workers=1)
    rows = min(HIDDEN_ROWS, len(g.x_test))
    hiddens = [
        np.asarray(edge.run(g.x_test[i : i + 1])["edge_hidden"], np.float32) for i in range(rows)
    ]
    edge_hop = inference_pb2.HopTiming(tier=inference_pb2.EDGE, compute_ms=0.01, total_ms=0.02)
    infer_requests = [
        inference_pb2.InferRequest(
            task_id=TASK,
            request_id=f"bench-{i}",
            model_version=VERSION,
            hidden=encode_tensor(h, "edge_hidden"),
            hops=[edge_hop],
        )
        for i, h in enumerate(hiddens)
    ]
    fog_confident = served(1, (math.inf, math.inf))
    fog_relays = served(1, (-math.inf, -math.inf))
    cloud_part = served(2)

    def in_process_chain(i: int) -> object:
        step = fog_relays.step(hiddens[i % rows])
        return cloud_part.step(step.hidden)

    timings: dict[str, np.ndarray] = {
        "fog step, in-process LiteRT (baseline)": _timed(
            lambda i: fog_confident.step(hiddens[i % rows]), requests
        ),
        "fog → cloud steps, in-process LiteRT": _timed(in_process_chain, requests),
    }
    cloud_served = ServedVersions()
    cloud_served.install(cloud_part)
    station_served = ServedVersions()
    with (
        tempfile.TemporaryDirectory() as tmp,
        SessionStore(Path(tmp) / "sessions.sqlite3") as store,
        _grpc_server(
            station_pb2_grpc.add_CloudServiceServicer_to_server, CloudServicer(cloud_served)
        ) as cloud_port,
    ):
        cloud_channel = open_channel(f"127.0.0.1:{cloud_port}")
        servicer = StationServicer(
            g.station,
            [],
            store,
            station_served,
            FogMetrics(),
            station_pb2_grpc.CloudServiceStub(cloud_channel),
        )
        add = station_pb2_grpc.add_StationServiceServicer_to_server
        with _grpc_server(add, servicer) as port:
            channel = open_channel(f"127.0.0.1:{port}")
            stub = station_pb2_grpc.StationServiceStub(channel)
            stub.Status(station_pb2.StatusRequest(), timeout=10)
            for label, part, tier in (
                ("fog answers, loopback gRPC", fog_confident, inference_pb2.FOG),
                ("fog → cloud relay, loopback gRPC", fog_relays, inference_pb2.CLOUD),
            ):
                station_served.install(part)  # same version: replaces the exit policy
                first = stub.Infer(infer_requests[0], timeout=5)
                assert first.tier == tier and not first.degraded, first
                timings[label] = _timed(
                    lambda i: stub.Infer(infer_requests[i % rows], timeout=5), requests
                )
            channel.close()
        cloud_channel.close()

    p = {name: _percentiles(t) for name, t in timings.items()}
    base = p["fog step, in-process LiteRT (baseline)"]["p50_us"]
    fog_grpc = p["fog answers, loopback gRPC"]["p50_us"]
    versus = {
        "fog step, in-process LiteRT (baseline)": "1.0× in-process fog",
        "fog → cloud steps, in-process LiteRT": "",
        "fog answers, loopback gRPC": f"{fog_grpc / base:.1f}× in-process fog",
        "fog → cloud relay, loopback gRPC": (
            f"{p['fog → cloud relay, loopback gRPC']['p50_us'] / fog_grpc:.2f}× gRPC fog"
        ),
    }
    chain = p["fog → cloud steps, in-process LiteRT"]["p50_us"]
    versus["fog → cloud steps, in-process LiteRT"] = f"{chain / base:.1f}× in-process fog"
    table = _table(
        f"2. infer: {requests} sequential requests each (after {WARM_UP} warm-up), "
        f"edge hidden tensors of {rows} real test rows",
        ("path", "p50 µs", "p95 µs", "p99 µs", "p50 ratio"),
    )
    order = (
        "fog step, in-process LiteRT (baseline)",
        "fog answers, loopback gRPC",
        "fog → cloud steps, in-process LiteRT",
        "fog → cloud relay, loopback gRPC",
    )
    for name in order:
        q = p[name]
        table.add_row(
            name, f"{q['p50_us']:.1f}", f"{q['p95_us']:.1f}", f"{q['p99_us']:.1f}", versus[name]
        )
    console.print(table)
    relay = p["fog → cloud relay, loopback gRPC"]["p50_us"]
    return {
        "requests": requests,
        "warm_up": WARM_UP,
        "distinct_rows": rows,
        "paths": [{"path": name, **p[name]} for name in order],
        "grpc_fog_over_in_process_p50": fog_grpc / base,
        "relay_over_grpc_fog_p50": relay / fog_grpc,
        "in_process_chain_over_fog_p50": chain / base,
    }


# --- 3. train -------------------------------------------------------------------------------


def bench_train(g: Station, repeats: int, console: Console) -> dict[str, Any]:
    from fog_node.session_store import SessionStore
    from models.datasets.record import iter_sessions
    from models.incremental import IncrementalSettings, hold_out, select_rows, train_round
    from models.partitioned import set_weights
    from models.training import new_model

    settings = IncrementalSettings(epochs=5)
    with tempfile.TemporaryDirectory() as tmp, SessionStore(Path(tmp) / "s.sqlite3") as store:
        store.add(list(iter_sessions(g.sessions)))
        frame = store.frame()
    watermark = int(frame["seq"].iloc[len(frame) // 2 - 1])  # the first half is already trained

    # The rows the round trains on, chosen as train_round chooses them, for the baseline.
    encoded = g.preprocessing.encode(frame)
    seqs = frame["seq"].to_numpy(np.int64)[encoded.rows]
    new_idx, replay_idx = select_rows(seqs, watermark, settings)
    train_new, _ = hold_out(new_idx, settings)
    x = encoded.x[np.concatenate([train_new, replay_idx])]

    wall, fit_s, results = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = train_round(g.config, g.preprocessing, g.weights, frame, watermark, settings)
        wall.append(time.perf_counter() - t0)
        fit_s.append(result.train_seconds)
        results.append(result)
    result = results[-1]
    assert result.sample_count == len(x), (result.sample_count, len(x))
    assert result.epochs_run == settings.epochs, "the time budget cut the round short"

    model = new_model(g.config, settings.seed)
    set_weights(model, g.weights)
    model.predict(x[: settings.batch_size], batch_size=settings.batch_size, verbose=0)  # trace
    predict_s = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.predict(x, batch_size=settings.batch_size, verbose=0)
        predict_s.append(time.perf_counter() - t0)

    rows = result.sample_count
    round_s, fit_med, pred_med = (statistics.median(v) for v in (wall, fit_s, predict_s))
    table = _table(
        f"3. train: one round on station {g.station} ({len(frame)} sessions, watermark "
        f"{watermark}): {result.new_rows:,} new + {result.replay_rows:,} replay rows, "
        f"{result.validation_rows} held out; {settings.epochs} epochs, batch "
        f"{settings.batch_size} (predict too), median of {repeats}",
        ("step", "rows", "median s", "s / 1,000 rows", "× predict pass"),
    )
    table.add_row(
        "model.predict, one pass (baseline)",
        f"{rows:,}",
        f"{pred_med:.3f}",
        f"{pred_med / rows * 1e3:.3f}",
        "1.0×",
    )
    table.add_row(
        "train_round, model.fit only",
        f"{rows:,}",
        f"{fit_med:.2f}",
        f"{fit_med / rows * 1e3:.3f}",
        f"{fit_med / pred_med:.1f}×",
    )
    table.add_row(
        "train_round, whole round",
        f"{rows:,}",
        f"{round_s:.2f}",
        f"{round_s / rows * 1e3:.3f}",
        f"{round_s / pred_med:.1f}×",
    )
    console.print(table)
    return {
        "station_sessions": len(frame),
        "encoded_rows": len(encoded),
        "watermark": watermark,
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "repeats": repeats,
        "rows_trained": rows,
        "new_rows": result.new_rows,
        "replay_rows": result.replay_rows,
        "validation_rows": result.validation_rows,
        "round_seconds": wall,
        "fit_seconds": fit_s,
        "predict_seconds": predict_s,
        "round_seconds_median": round_s,
        "fit_seconds_median": fit_med,
        "predict_seconds_median": pred_med,
        "round_seconds_per_1000_rows": round_s / rows * 1e3,
        "fit_seconds_per_1000_rows": fit_med / rows * 1e3,
        "round_over_predict": round_s / pred_med,
        "fit_over_predict": fit_med / pred_med,
        "summary": result.summary(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=500, help="sessions per upload batch")
    args = parser.parse_args()

    console = Console()
    started = time.perf_counter()
    with console.status("training the global version (2 epochs on Dundee)…"):
        g = _global_version()
    results = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "station": g.station,
        "ingest": bench_ingest(g, args.batch, args.repeats, console),
        "infer": bench_infer(g, args.requests, console),
        "train": bench_train(g, args.repeats, console),
    }
    results["total_seconds"] = time.perf_counter() - started
    console.print(f"total {results['total_seconds']:.0f} s on {os.cpu_count()} CPUs")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fog_service.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
