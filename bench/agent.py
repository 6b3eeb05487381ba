"""What the vehicle agent costs on real Dundee data, each part against a baseline in the same run.

1. install: site-packages of a clean venv after ``pip install <repo>[agent]`` (non-editable),
   against the same for ``[fog]`` (TensorFlow included); and whether TensorFlow or pandas
   came along (they must not);
2. latency: one request through ``EdgeRuntime.predict_local`` (raw features in, normalised,
   edge partition run with LiteRT) for the float32, float16 and int8 edge files, against the
   in-process edge→fog→cloud chain with every tier run; and what quantisation costs in MAE on
   the held-out rows;
3. exit rate: the share of real rows the edge answers at the threshold calibrated on validation
   (``models.training.evaluate``, tolerance 0.05), and its MAE against the cloud exit's MAE on
   the same rows;
4. process: a real agent (``evfl agent run``, model pre-installed in its state dir, MQTT and
   station unreachable) — spawn to first answered Predict over its Unix socket, and its RSS
   after 1,000 Predicts — against bare ``import numpy, grpc`` and ``import tensorflow``
   processes.

Ratios, not absolute numbers: these machines are shared and noisy. The model is trained like
``evfl model train`` (early stopping on validation, so the threshold is a realistic one). The
two venvs are built while it trains; nothing is timed until they are done.

    python -m bench.agent [--epochs 60] [--requests 5000] [--agent-requests 1000] [--starts 3]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
TASK = "dundee-energy"
VERSION = 1
WARM_UP = 100
TOLERANCE = 0.05
EXTRAS = ("fog", "agent")  # baseline first
# Copied to a temporary source tree so that pip's build leaves the repository untouched.
SOURCE_FILES = ("pyproject.toml", "README.md")
SOURCE_PACKAGES = ("evfl", "models", "proto", "agent", "fog_node", "coordinator")
HEAVY = ("tensorflow", "tensorflow-cpu", "keras", "pandas", "confluent-kafka", "scikit-learn")
VARIANTS = ("float32", "float16", "int8")

# Run by each venv's own interpreter: the size of site-packages and of every distribution in it.
DIST_SIZES = r"""
import importlib.metadata as md, json, os, sysconfig
site = sysconfig.get_paths()["purelib"]
total = 0
for folder, _, names in os.walk(site):
    for name in names:
        total += os.lstat(os.path.join(folder, name)).st_size
dists = []
for d in md.distributions():
    size = 0
    for f in d.files or ():
        p = str(f.locate())
        if os.path.isfile(p) and not os.path.islink(p):
            size += os.path.getsize(p)
    dists.append([d.metadata["Name"], d.version, size])
print(json.dumps({"site_packages": site, "bytes": total, "dists": dists}))
"""


def _table(title: str, columns: tuple[str, ...]) -> Table:
    table = Table(title=escape(title))  # "[agent]" is text, not rich markup
    for i, col in enumerate(columns):
        table.add_column(escape(col), justify="left" if i == 0 else "right")
    return table


def _percentiles(us: np.ndarray) -> dict[str, float]:
    p50, p99 = np.percentile(us, [50, 99])
    return {"p50_us": float(p50), "p99_us": float(p99)}


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f}"


# --- 1. install -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Install:
    extra: str
    site_bytes: int
    dists: list[tuple[str, str, int]]  # name, version, bytes; largest first
    seconds: float  # venv + pip, concurrent with training: not a benchmark figure

    def has(self, name: str) -> bool:
        return any(_canonical(d[0]) == name for d in self.dists)


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _source_tree(where: Path) -> Path:
    where.mkdir(parents=True)
    for name in SOURCE_FILES:
        shutil.copy2(ROOT / name, where / name)
    for package in SOURCE_PACKAGES:
        shutil.copytree(
            ROOT / package, where / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return where


def _install(source: Path, where: Path, extra: str) -> Install:
    started = time.perf_counter()
    venv.EnvBuilder(with_pip=True).create(where)
    python = where / "bin" / "python"
    done = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", f"{source}[{extra}]"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pip install .[{extra}] failed:\n{done.stderr[-3000:]}")
    seconds = time.perf_counter() - started
    sizes = subprocess.run(
        [python, "-c", DIST_SIZES], check=True, capture_output=True, text=True, timeout=120
    )
    report = json.loads(sizes.stdout)
    dists = sorted(((n, v, int(b)) for n, v, b in report["dists"]), key=lambda d: -d[2])
    return Install(extra, int(report["bytes"]), dists, seconds)


def report_install(installs: dict[str, Install], console: Console) -> dict[str, Any]:
    fog = installs["fog"]
    table = _table(
        "1. installed size: clean venv, `pip install <repo>[extra]` (non-editable), "
        "site-packages in MB (10⁶ bytes)",
        ("extra", "site-packages MB", "× [fog]", "distributions", "TF / pandas", "largest 5 (MB)"),
    )
    for extra, label in (("fog", "[fog] (baseline)"), ("agent", "[agent]")):
        inst = installs[extra]
        top = ", ".join(f"{n} {_mb(b)}" for n, _, b in inst.dists[:5])
        heavy = "/".join("yes" if inst.has(h) else "no" for h in ("tensorflow", "pandas"))
        table.add_row(
            escape(label),
            _mb(inst.site_bytes),
            f"{inst.site_bytes / fog.site_bytes:.3f}×",
            str(len(inst.dists)),
            heavy,
            top,
        )
    console.print(table)
    agent = installs["agent"]
    present = [h for h in HEAVY if agent.has(h)]
    console.print(
        escape(
            "agent venv: "
            + ", ".join(f"{h} {'PRESENT' if agent.has(h) else 'absent'}" for h in HEAVY)
            + (f"  ← {present} should not be there" if present else "")
        )
    )
    return {
        extra: {
            "site_packages_bytes": inst.site_bytes,
            "over_fog": inst.site_bytes / fog.site_bytes,
            "distributions": len(inst.dists),
            "largest": [{"name": n, "version": v, "bytes": b} for n, v, b in inst.dists[:5]],
            "heavy_present": {h: inst.has(h) for h in HEAVY},
            "install_seconds_concurrent_with_training": inst.seconds,
        }
        for extra, inst in installs.items()
    }


# --- the trained global version -------------------------------------------------------------


@dataclass(frozen=True)
class Trained:
    config: Any  # models.model_config.ModelConfig
    normalization: Any  # models.normalization.Normalization
    weights: list
    edge_variants: dict[str, bytes]  # float32 / float16 / int8 edge .tflite
    files: dict[str, bytes]  # float32 edge, fog, cloud .tflite
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    epochs_run: int
    evaluation: Any  # models.training.Evaluation
    val_means: np.ndarray  # Keras, (n, exits), target units
    val_stds: np.ndarray
    test_means: np.ndarray
    test_stds: np.ndarray

    def raw(self, x: np.ndarray) -> np.ndarray:
        """Normalised rows back in raw feature units, as the car's sensors would give them."""
        return (x * self.normalization.x_std + self.normalization.x_mean).astype(np.float32)


def _train(epochs: int) -> Trained:
    from models.datasets.catalog import load_dataset
    from models.export import serving_partitions, to_tflite
    from models.model_config import PARTITIONS
    from models.partitioned import split, weights_of
    from models.training import TrainSettings, evaluate, fit, new_model, predict
    from models.use_cases import UseCase, default_model_config, prepare

    prepared = prepare(load_dataset("dundee").sessions, UseCase.default("dundee", "energy"))
    config = default_model_config(prepared.use_case, prepared.input_shape)
    norm = prepared.normalization
    model = new_model(config, seed=0)
    validation = (prepared.x_val, prepared.y_val)
    history = fit(
        model, prepared.x_train, prepared.y_train, norm, TrainSettings(epochs=epochs), validation
    )
    test = (prepared.x_test, prepared.y_test)
    evaluation = evaluate(model, norm, validation, test, TOLERANCE)
    val_means, val_stds = predict(model, prepared.x_val, norm)
    test_means, test_stds = predict(model, prepared.x_test, norm)
    weights = weights_of(model)
    files = serving_partitions(config, weights, PARTITIONS)
    edge = split(model, config, batch_size=1)[0]
    variants = {"float32": files["edge"]}
    variants.update({v: to_tflite(edge, v) for v in VARIANTS[1:]})
    return Trained(
        config,
        norm,
        weights,
        variants,
        files,
        prepared.x_val,
        prepared.y_val,
        prepared.x_test,
        prepared.y_test,
        len(history.history["loss"]),
        evaluation,
        val_means,
        val_stds,
        test_means,
        test_stds,
    )


def _manifest(t: Trained, variant: str, parity: list | None = None, signer: Any = None) -> Any:
    from proto.partition_messages import build_manifest

    return build_manifest(
        TASK,
        VERSION,
        "edge",
        "tflite",
        variant,
        t.edge_variants[variant],
        t.evaluation.policy.thresholds,
        json.dumps(t.normalization.to_dict()),
        parity or [],
        signer,
    )


# --- 2. latency -----------------------------------------------------------------------------


def _timed(call: Callable[[int], object], requests: int) -> np.ndarray:
    for i in range(WARM_UP):
        call(i)
    out = np.empty(requests)
    for i in range(requests):
        t0 = time.perf_counter()
        call(i)
        out[i] = time.perf_counter() - t0
    return out * 1e6  # µs


@dataclass(frozen=True)
class TestPass:
    """Every held-out row through the agent's runtime: edge (mean, std) per variant, and the
    float32 fog and cloud exits chained behind the float32 edge."""

    edge_means: dict[str, np.ndarray]
    edge_stds: dict[str, np.ndarray]
    chain_means: np.ndarray  # (n, exits)
    chain_stds: np.ndarray


def bench_latency(
    t: Trained, requests: int
) -> tuple[dict[str, Any], Table, TestPass, dict[str, Any]]:
    from agent.edge_runtime import EdgeRuntime
    from models.exit_policy import ExitPolicy
    from models.served_partition import ServedPartition
    from models.tflite_runner import TfliteRunner

    policy: ExitPolicy = t.evaluation.policy
    runtimes: dict[str, EdgeRuntime] = {}
    for variant in VARIANTS:
        runtimes[variant] = EdgeRuntime()
        runtimes[variant].swap(TASK, _manifest(t, variant), t.edge_variants[variant])
    fog, cloud = (
        ServedPartition(
            TASK, VERSION, index, TfliteRunner(t.files[name], workers=1), t.normalization, policy
        )
        for index, name in ((1, "fog"), (2, "cloud"))
    )
    raw = t.raw(t.x_test)
    rows = raw[: min(requests, len(raw))]
    n = len(rows)
    edge32 = runtimes["float32"]

    def chain(i: int) -> object:
        local = edge32.predict_local(TASK, rows[i % n])
        step = fog.step(local.result.hidden)
        return cloud.step(step.hidden)

    def local(variant: str) -> Callable[[int], object]:
        runtime = runtimes[variant]
        return lambda i: runtime.predict_local(TASK, rows[i % n])

    chain_label = "edge→fog→cloud, every tier run (baseline)"
    labels = {v: f"edge exit, {v}" for v in VARIANTS}
    timings = {chain_label: _timed(chain, requests)}
    for variant in VARIANTS:
        timings[labels[variant]] = _timed(local(variant), requests)
    p = {name: _percentiles(us) for name, us in timings.items()}

    # Accuracy on every held-out row, through the same runtime calls.
    edge_means: dict[str, np.ndarray] = {}
    edge_stds: dict[str, np.ndarray] = {}
    chain_means = np.empty((len(raw), 3))
    chain_stds = np.empty((len(raw), 3))
    for i, row in enumerate(raw):
        e = edge32.predict_local(TASK, row).result
        f = fog.step(e.hidden)
        c = cloud.step(f.hidden)
        chain_means[i] = (e.mean, f.mean, c.mean)
        chain_stds[i] = (e.std, f.std, c.std)
    edge_means["float32"], edge_stds["float32"] = chain_means[:, 0], chain_stds[:, 0]
    for variant in VARIANTS[1:]:
        answers = [runtimes[variant].predict_local(TASK, row).result for row in raw]
        edge_means[variant] = np.array([a.mean for a in answers])
        edge_stds[variant] = np.array([a.std for a in answers])
    test = TestPass(edge_means, edge_stds, chain_means, chain_stds)

    y = t.y_test.ravel()
    threshold = policy.thresholds[0]
    base = p[chain_label]["p50_us"]
    mae32 = float(np.mean(np.abs(edge_means["float32"] - y)))
    table = _table(
        f"2. latency in-process: EdgeRuntime.predict_local (raw features in) and LiteRT "
        f"ServedPartition steps, {requests:,} sequential requests each (after {WARM_UP} "
        f"warm-up) on {n:,} distinct held-out rows; MAE (kWh) over all {len(y):,} held-out "
        f"rows; edge answers at the calibrated threshold",
        (
            "path",
            "file KB",
            "p50 µs",
            "p99 µs",
            "p50 ÷ chain p50",
            "MAE",
            "Δ MAE vs float32",
            "mean |Δ pred| vs float32",
            "edge answers",
        ),
    )
    cloud_mae = float(np.mean(np.abs(chain_means[:, 2] - y)))
    chain_size = sum(len(t.files[k]) for k in ("edge", "fog", "cloud"))
    table.add_row(
        chain_label,
        f"{chain_size / 1e3:.1f}",
        f"{base:.1f}",
        f"{p[chain_label]['p99_us']:.1f}",
        "1.00×",
        f"{cloud_mae:.3f} (cloud exit)",
        "",
        "",
        "",
    )
    paths: list[dict[str, Any]] = [
        {"path": chain_label, "file_bytes": chain_size, **p[chain_label], "mae": cloud_mae}
    ]
    for variant in VARIANTS:
        q = p[labels[variant]]
        mae = float(np.mean(np.abs(edge_means[variant] - y)))
        drift = float(np.mean(np.abs(edge_means[variant] - edge_means["float32"])))
        answers = float(np.mean(edge_stds[variant] <= threshold))
        size = len(t.edge_variants[variant])
        table.add_row(
            labels[variant],
            f"{size / 1e3:.1f}",
            f"{q['p50_us']:.1f}",
            f"{q['p99_us']:.1f}",
            f"{q['p50_us'] / base:.2f}×",
            f"{mae:.3f}",
            "" if variant == "float32" else f"{mae - mae32:+.4f} ({(mae / mae32 - 1):+.2%})",
            "" if variant == "float32" else f"{drift:.4f}",
            f"{answers:.1%}",
        )
        paths.append(
            {
                "path": labels[variant],
                "variant": variant,
                "file_bytes": size,
                **q,
                "p50_over_chain_p50": q["p50_us"] / base,
                "mae": mae,
                "mae_minus_float32": mae - mae32,
                "mean_abs_prediction_drift_vs_float32": drift,
                "edge_answer_share_at_threshold": answers,
            }
        )
    result = {
        "requests": requests,
        "warm_up": WARM_UP,
        "distinct_rows": n,
        "held_out_rows": len(y),
        "paths": paths,
    }
    return result, table, test, {"runtime": edge32}


# --- 3. exit rate ---------------------------------------------------------------------------


def _exit_stats(y: np.ndarray, means: np.ndarray, stds: np.ndarray, policy: Any) -> dict:
    y = np.asarray(y, np.float64).ravel()
    chosen = policy.choose(stds)
    at_edge = chosen == 0
    rows = np.arange(len(y))
    stats = {
        "rows": len(y),
        "shares": [float(np.mean(chosen == k)) for k in range(means.shape[1])],
        "edge_rows": int(at_edge.sum()),
        "chain_mae": float(np.mean(np.abs(means[rows, chosen] - y))),
        "cloud_mae_all_rows": float(np.mean(np.abs(means[:, -1] - y))),
        "edge_mae_on_edge_rows": None,
        "cloud_mae_on_edge_rows": None,
    }
    if at_edge.any():
        stats["edge_mae_on_edge_rows"] = float(np.mean(np.abs(means[at_edge, 0] - y[at_edge])))
        stats["cloud_mae_on_edge_rows"] = float(np.mean(np.abs(means[at_edge, -1] - y[at_edge])))
    return stats


def bench_exit_rate(t: Trained, test: TestPass) -> tuple[dict[str, Any], Table, str]:
    policy = t.evaluation.policy
    cases = {
        "validation (calibration set), Keras": _exit_stats(
            t.y_val, t.val_means, t.val_stds, policy
        ),
        "test (held out), Keras": _exit_stats(t.y_test, t.test_means, t.test_stds, policy),
        "test (held out), agent runtime LiteRT float32": _exit_stats(
            t.y_test, test.chain_means, test.chain_stds, policy
        ),
    }
    thresholds = ", ".join(f"{x:.2f}" for x in policy.thresholds)
    table = _table(
        f"3. exit rate at the threshold calibrated on validation (tolerance {TOLERANCE}): "
        f"std ≤ {thresholds} kWh (edge, fog); model trained {t.epochs_run} epochs",
        (
            "rows",
            "n",
            "edge",
            "fog",
            "cloud",
            "edge MAE, its rows",
            "cloud MAE, same rows",
            "edge ÷ cloud",
            "chain MAE, all",
            "cloud MAE, all",
        ),
    )
    for name, s in cases.items():
        edge_mae, cloud_mae = s["edge_mae_on_edge_rows"], s["cloud_mae_on_edge_rows"]
        table.add_row(
            name,
            f"{s['rows']:,}",
            *(f"{share:.2%}" for share in s["shares"]),
            "—" if edge_mae is None else f"{edge_mae:.3f}",
            "—" if cloud_mae is None else f"{cloud_mae:.3f}",
            "—" if edge_mae is None else f"{edge_mae / cloud_mae:.3f}×",
            f"{s['chain_mae']:.3f}",
            f"{s['cloud_mae_all_rows']:.3f}",
        )
    ceiling = float(t.val_stds[:, 0].max())
    result = {
        "tolerance": TOLERANCE,
        "thresholds": list(policy.thresholds),
        "largest_edge_std_on_validation": ceiling,
        "epochs_run": t.epochs_run,
        "evaluate_exit_rates_test": list(t.evaluation.exit_rates),
        "cases": cases,
    }
    edge = policy.thresholds[0]
    where = "equals" if edge >= ceiling else "is below"
    note = (
        f"the edge threshold {edge:.6f} {where} the largest edge std on validation "
        f"({ceiling:.6f} kWh)"
    )
    return result, table, note


# --- 4. the agent process -------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """The process and its descendants."""
    pids, i = [pid], 0
    while i < len(pids):
        for children in Path(f"/proc/{pids[i]}/task").glob("*/children"):
            with contextlib.suppress(OSError):  # the child exited meanwhile
                pids += [int(c) for c in children.read_text().split()]
        i += 1
    return pids


def _memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak), summed over the process tree, in KiB."""
    total = {"VmRSS": 0, "VmHWM": 0}
    for p in _tree(pid):
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, value = line.partition(":")
            if key in total:
                total[key] += int(value.split()[0])
    return {"rss_kib": total["VmRSS"], "hwm_kib": total["VmHWM"], "processes": len(_tree(pid))}


def _maps_mention(pid: int, needles: tuple[str, ...]) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [n for n in needles if n in maps]


def _import_baseline(modules: str) -> dict[str, Any]:
    """A process that imports ``modules`` and waits: time to imported, and its memory."""
    code = f"import sys, {modules}; print('ready', flush=True); sys.stdin.read()"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        seconds = time.perf_counter() - started
        if line.strip() != b"ready":
            raise RuntimeError(f"`python -c {code!r}` did not start")
        time.sleep(0.2)  # let import-time threads settle
        memory = _memory_kib(proc.pid)
        proc.stdin.close()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"seconds": seconds, **memory}


def _one_agent_start(
    t: Trained, workdir: Path, keys: Path, signer: Any, parity: list, requests: list
) -> dict[str, Any]:
    import grpc

    from agent.model_store import ModelStore
    from evfl.brokers import free_port
    from evfl.launch import ProgramFailed, agent_program
    from proto import agent_pb2_grpc, inference_pb2
    from proto.grpc_channel import open_channel

    ModelStore(workdir / "state").install(_manifest(t, "float32", parity, signer), t.files["edge"])
    station, mqtt = free_port(), free_port()  # nobody listens: the agent serves offline
    program = agent_program(
        workdir, "bench-car", [TASK], f"127.0.0.1:{station}", ("127.0.0.1", mqtt), keys
    )
    sock = workdir / "agent.sock"
    ready_file = workdir / f"{program.name}.ready"
    try:
        started = time.perf_counter()
        program.start(wait_ready=False)
        ready_s = None
        deadline = started + 120
        while True:
            now = time.perf_counter()
            if ready_s is None and ready_file.exists():
                ready_s = now - started
            if not program.alive() or now > deadline:
                raise ProgramFailed(f"agent did not answer:\n{program.log_tail()}")
            if sock.exists():
                channel = open_channel(f"unix:{sock}")
                try:
                    first = agent_pb2_grpc.VehicleAgentStub(channel).Predict(requests[0], timeout=5)
                    first_s = time.perf_counter() - started
                    break
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                finally:
                    channel.close()
            time.sleep(0.005)
        after_first = _memory_kib(program.proc.pid)
        while ready_s is None and time.perf_counter() < deadline:  # announced after serving
            if ready_file.exists():
                ready_s = time.perf_counter() - started
            time.sleep(0.001)
        channel = open_channel(f"unix:{sock}")
        stub = agent_pb2_grpc.VehicleAgentStub(channel)
        replies = []
        us = np.empty(len(requests))
        for i, request in enumerate(requests):
            t0 = time.perf_counter()
            replies.append(stub.Predict(request, timeout=5))
            us[i] = (time.perf_counter() - t0) * 1e6
        channel.close()
        after = _memory_kib(program.proc.pid)
        heavy_mapped = _maps_mention(program.proc.pid, ("/tensorflow/", "/pandas/", "/keras/"))
        t0 = time.perf_counter()
        code = program.terminate(timeout=30)
        stop_s = time.perf_counter() - t0
    finally:
        program.kill()
    answered = Counter(
        "degraded" if r.degraded else inference_pb2.Tier.Name(r.tier).lower()
        for r in [first, *replies]
    )
    return {
        "spawn_to_ready_file_s": ready_s,
        "spawn_to_first_answer_s": first_s,
        "first_answer": {"prediction": first.prediction, "tier": first.tier},
        "after_first_answer": after_first,
        "after_requests": after,
        "predictions": [r.prediction for r in replies],
        "predict_us": us,
        "answered": dict(answered),
        "heavy_libraries_mapped": heavy_mapped,
        "sigterm_exit_code": code,
        "sigterm_seconds": stop_s,
    }


def bench_agent_process(
    t: Trained, test: TestPass, runtime: Any, requests: int, starts: int, tmp: Path
) -> tuple[dict[str, Any], Table, Table]:
    from coordinator.version_serving import parity_samples
    from proto import agent_pb2
    from proto.signing import generate_keypair, load_signer
    from proto.tensor_codec import encode_tensor

    keys = tmp / "keys"
    private, _ = generate_keypair(keys, "bench-coordinator")
    signer = load_signer(private, "bench-coordinator")
    parity = parity_samples(t.files, t.x_test[:8])["edge"]
    # Rows the edge answers itself: the station is unreachable, and a forwarded request would
    # time the agent's retries, not the agent.
    confident = np.flatnonzero(test.edge_stds["float32"] <= t.evaluation.policy.thresholds[0])
    picked = confident[:requests]
    raw = t.raw(t.x_test[picked])
    messages = [
        agent_pb2.PredictRequest(
            task_id=TASK,
            request_id=f"bench-{i}",
            features=encode_tensor(row, "features"),
            timeout_ms=1000,
        )
        for i, row in enumerate(raw)
    ]
    messages = [messages[i % len(messages)] for i in range(requests)]

    # Interleaved, so that the three kinds of process share the machine's noise alike.
    baselines: dict[str, list[dict[str, Any]]] = {"numpy+grpc": [], "tensorflow": []}
    runs = []
    for k in range(starts):
        baselines["numpy+grpc"].append(_import_baseline("numpy, grpc"))
        baselines["tensorflow"].append(_import_baseline("tensorflow"))
        runs.append(_one_agent_start(t, tmp / f"agent-{k}", keys, signer, parity, messages))
    last = runs[-1]
    in_process = np.array([runtime.predict_local(TASK, row).result.mean for row in raw])
    got = np.array(last["predictions"][: len(raw)])
    parity_err = float(np.max(np.abs(got - in_process)))

    def med(values: list[float]) -> float:
        return statistics.median(values)

    base_rss = med([b["rss_kib"] for b in baselines["numpy+grpc"]])
    rows: list[tuple[str, float, float, float, str]] = [
        (
            '`python -c "import numpy, grpc"` (baseline), imported',
            med([b["seconds"] for b in baselines["numpy+grpc"]]),
            base_rss,
            med([b["hwm_kib"] for b in baselines["numpy+grpc"]]),
            "import done",
        ),
        (
            '`python -c "import tensorflow"` (what the agent avoids), imported',
            med([b["seconds"] for b in baselines["tensorflow"]]),
            med([b["rss_kib"] for b in baselines["tensorflow"]]),
            med([b["hwm_kib"] for b in baselines["tensorflow"]]),
            "import done",
        ),
        (
            "`evfl agent run`, after its first answer",
            med([r["spawn_to_first_answer_s"] for r in runs]),
            med([r["after_first_answer"]["rss_kib"] for r in runs]),
            med([r["after_first_answer"]["hwm_kib"] for r in runs]),
            "first Predict answered",
        ),
        (
            f"`evfl agent run`, after {requests:,} Predicts",
            med([r["spawn_to_first_answer_s"] for r in runs]),
            med([r["after_requests"]["rss_kib"] for r in runs]),
            med([r["after_requests"]["hwm_kib"] for r in runs]),
            "first Predict answered",
        ),
    ]
    table = _table(
        f"4. process memory and cold start, median of {starts} fresh processes each, interleaved "
        "(RSS = VmRSS of the process tree, MiB)",
        ("process", "spawn → s", "until", "RSS MiB", "peak MiB", "RSS ÷ numpy+grpc"),
    )
    for name, seconds, rss, hwm, until in rows:
        table.add_row(
            name,
            f"{seconds:.2f}",
            until,
            f"{rss / 1024:.1f}",
            f"{hwm / 1024:.1f}",
            f"{rss / base_rss:.2f}×",
        )
    q = _percentiles(np.concatenate([r["predict_us"] for r in runs]))
    ready = [r["spawn_to_ready_file_s"] for r in runs if r["spawn_to_ready_file_s"] is not None]
    answered: Counter[str] = Counter()
    for r in runs:
        answered.update(r["answered"])
    detail = _table(
        "4b. the agent process, details",
        ("measure", "value"),
    )
    detail.add_row(
        f"Predict over its Unix socket, {requests:,} × {starts} sequential",
        f"p50 {q['p50_us']:.0f} µs, p99 {q['p99_us']:.0f} µs",
    )
    detail.add_row("spawn → ready file (port announced), median", f"{med(ready):.2f} s")
    detail.add_row(
        "spawn → first answer, each start",
        ", ".join(f"{r['spawn_to_first_answer_s']:.2f} s" for r in runs),
    )
    detail.add_row("answered by", ", ".join(f"{k} {v:,}" for k, v in sorted(answered.items())))
    detail.add_row("max |agent answer − in-process predict_local|", f"{parity_err:.2g} kWh")
    detail.add_row(
        "TensorFlow / pandas / Keras mapped in the agent",
        ", ".join(sorted({m for r in runs for m in r["heavy_libraries_mapped"]})) or "none",
    )
    detail.add_row(
        "SIGTERM → exit",
        ", ".join(f"{r['sigterm_seconds']:.2f} s (code {r['sigterm_exit_code']})" for r in runs),
    )
    detail.add_row(
        "request rows",
        f"{len(picked):,} distinct held-out rows the edge answers ({len(confident):,} of "
        f"{len(test.edge_stds['float32']):,} qualify)",
    )
    result = {
        "starts": starts,
        "requests_per_start": requests,
        "distinct_rows": len(picked),
        "baselines": baselines,
        "agent_runs": [
            {k: v for k, v in r.items() if k not in ("predictions", "predict_us")} for r in runs
        ],
        "predict_over_unix_socket": q,
        "answered": dict(answered),
        "max_abs_diff_vs_in_process": parity_err,
        "median": {
            name: {
                "spawn_s": s,
                "rss_kib": rss,
                "hwm_kib": hwm,
                "rss_over_numpy_grpc": rss / base_rss,
            }
            for name, s, rss, hwm, _ in rows
        },
    }
    return result, table, detail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60, help="upper bound; early stopping")
    parser.add_argument("--requests", type=int, default=5000, help="in-process, per path")
    parser.add_argument("--agent-requests", type=int, default=1000, help="per agent start")
    parser.add_argument("--starts", type=int, default=3, help="agent / baseline processes")
    args = parser.parse_args()

    console = Console() if sys.stdout.isatty() else Console(width=160)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="evfl-bench-agent-") as tmp_name:
        tmp = Path(tmp_name)
        source = _source_tree(tmp / "src")
        with ThreadPoolExecutor(max_workers=len(EXTRAS)) as pool:
            pending: dict[str, Future[Install]] = {
                extra: pool.submit(_install, source, tmp / f"venv-{extra}", extra)
                for extra in EXTRAS
            }
            with console.status(
                escape("training on Dundee while [agent] and [fog] venvs install…")
            ):
                trained = _train(args.epochs)
            with console.status("waiting for the venvs…"):
                installs = {extra: future.result() for extra, future in pending.items()}
        for extra in EXTRAS:  # free the disk before timing anything
            shutil.rmtree(tmp / f"venv-{extra}", ignore_errors=True)
        results: dict[str, Any] = {
            "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "install": report_install(installs, console),
        }
        with console.status("timing the edge runtime…"):
            latency, latency_table, test, extra = bench_latency(trained, args.requests)
        console.print(latency_table)
        results["latency"] = latency
        results["exit_rate"], exit_table, note = bench_exit_rate(trained, test)
        console.print(exit_table)
        console.print(note)
        with console.status("starting agent processes…"):
            process, table, detail = bench_agent_process(
                trained, test, extra["runtime"], args.agent_requests, args.starts, tmp
            )
        console.print(table)
        console.print(detail)
        results["process"] = process
    results["total_seconds"] = time.perf_counter() - started
    console.print(f"total {results['total_seconds']:.0f} s on {os.cpu_count()} CPUs")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "agent.json").write_text(json.dumps(results, indent=2, default=_jsonable))


def _jsonable(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


if __name__ == "__main__":
    main()
