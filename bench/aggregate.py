"""FedAvg over N updates × P parameters: ours against Flower's `aggregate` and a one-pass bound.

For each cell (N updates of a model with ≈P float32 parameters in six layer-shaped arrays: the
kernels and biases of a 64 → h → h → 1 MLP, h chosen for P), the inputs are written once as
``.npy`` files (one stacked ``(N, *shape)`` array per layer, plus the sample counts; no pickle)
and each contender runs in its own fresh process on the same files, loaded into memory first:

- **evfl**: ``FedAvg().aggregate(current, results, state)``, what the coordinator calls once per
  round (shape check, float64 weighted average, cast back to float32);
- **previous**: the same call with the FedAvg this one replaced (``numeric.weighted_average``:
  per client and whole layer, multiply into a float64 temporary, then add);
- **Flower** 1.42: ``flwr.server.strategy.aggregate.aggregate`` on ``[(ndarrays, n), ...]``, in
  its own venv ``.venv-bench-flwr`` (built on first use: flwr pins typer/cryptography ranges the
  project's venv does not take). Flower's ``FedAvg`` strategy defaults to ``aggregate_inplace``,
  which takes serialized ``FitRes`` messages and so would also time deserialization; the pure
  ``aggregate`` is the like-for-like function;
- **bound**: one pass over the same bytes, already stacked: ``counts @ stacked / total`` per layer
  (BLAS sgemv, float32: each byte read once, multiply-add fused) and ``np.add.reduce(stacked,
  axis=0)`` (the unweighted float32 sum); the faster of the two is the bound.

Every process runs single-threaded BLAS (``OPENBLAS_NUM_THREADS=1``): numpy's own loops are
single-threaded, and the machine's 2 cores are shared. Time: median of the repeats after one
warm-up call. Memory: the process's RSS high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs`` once the inputs are loaded) minus its RSS before the first call, i.e.
what the aggregation itself allocates, numpy or not, including the returned arrays. A cell whose
inputs plus a contender's expected extra memory do not fit in 80 % of ``MemAvailable`` is skipped
for that contender, with the reason printed.

Agreement: max |Δ| between the float32 results, and of each against evfl's float64 result
(``fedavg``) as the reference. Targets (printed, never asserted): evfl ≤ 1.5× the bound and never
slower than Flower. A missed target gets a cProfile of evfl's aggregate at the largest such cell
(of at most 1 GB of inputs).

    python -m bench.aggregate [--quick] [--updates 10,58,200] [--params 10000,1000000,10000000]
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import math
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
FLOWER_VENV = ROOT / ".venv-bench-flwr"
FLOWER_SPEC = "flwr==1.42.*"
UPDATES = (10, 58, 200)
PARAMS = (10_000, 1_000_000, 10_000_000)
QUICK_UPDATES = (10, 58)
QUICK_PARAMS = (10_000, 1_000_000)
INPUTS = 64  # the MLP's input width
TARGET_BOUND = 1.5  # evfl ÷ bound, from the issue
MEMORY_SHARE = 0.8  # of MemAvailable a cell may plan to use
SEED = 20261124
PROFILE_TOP = 12
PROFILE_CALLS = 3
PROFILE_BYTES = 1e9  # the profiled cell's inputs are written again: keep that short
SINGLE_THREAD = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
CONTENDERS = ("evfl", "previous", "flower", "bound")


# --- inputs ---------------------------------------------------------------------------------


def layer_shapes(params: int) -> list[tuple[int, ...]]:
    """An MLP 64 → h → h → 1 with biases whose parameter count is the nearest to `params`."""
    # 64h + h + h² + h + h + 1 = h² + 67h + 1
    h = max(1, round((-67 + math.sqrt(67**2 - 4 * (1 - params))) / 2))
    return [(INPUTS, h), (h,), (h, h), (h,), (h, 1), (1,)]


def write_inputs(folder: Path, updates: int, params: int, seed: int = SEED) -> int:
    """`layer<k>.npy` (updates, *shape) float32 and `counts.npy`; returns the parameter count.

    Written one update at a time, so the writer never holds N updates. Each update is a shared
    "global model" plus small per-client noise, like a round's updates.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, updates, params])
    shapes = layer_shapes(params)
    for k, shape in enumerate(shapes):
        base = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1)
        header = {"descr": "<f4", "fortran_order": False, "shape": (updates, *shape)}
        with open(folder / f"layer{k}.npy", "wb") as f:
            np.lib.format.write_array_header_2_0(f, header)
            for _ in range(updates):
                noise = rng.standard_normal(shape, dtype=np.float32)
                noise *= np.float32(0.01)
                noise += base
                noise.tofile(f)
    counts = rng.integers(100, 1001, size=updates, dtype=np.int64)
    np.save(folder / "counts.npy", counts, allow_pickle=False)
    return sum(math.prod(s) for s in shapes)


def load_inputs(folder: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """The stacked layers and the counts, read fully into memory (no pickle, no mmap)."""
    paths = sorted(folder.glob("layer*.npy"), key=lambda p: int(p.stem[5:]))
    layers = [np.load(p, allow_pickle=False) for p in paths]
    return layers, np.load(folder / "counts.npy", allow_pickle=False)


# --- the contenders -------------------------------------------------------------------------
# Each is `prepare(layers, counts) -> call`: imports and wrapping the inputs the way the caller
# already holds them (ClientResult objects for evfl, (ndarrays, n) tuples for Flower) happen in
# `prepare`, outside the timer and before the memory peak is reset. Updates are views of the
# stacked layers' rows: no copy.

Call = Callable[[], list[np.ndarray]]


def _client_results(layers: list[np.ndarray], counts: np.ndarray) -> list[Any]:
    from models.aggregate import ClientResult

    return [
        ClientResult(f"c{i}", [layer[i] for layer in layers], int(n)) for i, n in enumerate(counts)
    ]


def prepare_evfl(layers: list[np.ndarray], counts: np.ndarray) -> Call:
    """What the coordinator calls once per round: check, float64 FedAvg, cast to float32."""
    from models.aggregate import FedAvg

    results = _client_results(layers, counts)
    current = results[0].weights  # shapes and dtypes only
    strategy = FedAvg()
    state = strategy.initial_state()
    return lambda: strategy.aggregate(current, results, state)[0]


def prepare_evfl_previous(layers: list[np.ndarray], counts: np.ndarray) -> Call:
    """The same call with the previous FedAvg: `numeric.weighted_average`, per client and layer."""
    from models.aggregate import weighted_average
    from models.aggregate.base import cast_like, check_results

    results = _client_results(layers, counts)
    current = results[0].weights
    clients = [r.weights for r in results]
    weights = [r.num_examples for r in results]

    def call() -> list[np.ndarray]:
        check_results(current, results)
        return cast_like(weighted_average(clients, weights), current)

    return call


def prepare_evfl_float64(layers: list[np.ndarray], counts: np.ndarray) -> Call:
    """`fedavg` itself: the float64 result, the reference every contender is compared with."""
    from models.aggregate import fedavg

    results = _client_results(layers, counts)
    return lambda: fedavg(results)


def prepare_flower(layers: list[np.ndarray], counts: np.ndarray) -> Call:
    from flwr.server.strategy.aggregate import aggregate

    results = [([layer[i] for layer in layers], int(n)) for i, n in enumerate(counts)]
    return lambda: aggregate(results)


def prepare_bound(layers: list[np.ndarray], counts: np.ndarray) -> Call:
    """The weighted average as one BLAS pass (sgemv) per layer over the stacked float32 bytes."""
    w = counts.astype(np.float32)
    total = np.float32(counts.sum())
    flat = [layer.reshape(len(counts), -1) for layer in layers]
    shapes = [layer.shape[1:] for layer in layers]
    return lambda: [(w @ f / total).reshape(s) for f, s in zip(flat, shapes, strict=True)]


def prepare_add_reduce(layers: list[np.ndarray], counts: np.ndarray) -> Call:
    """The plain float32 sum over the updates: one pass, no weights (not an average)."""
    return lambda: [np.add.reduce(layer, axis=0) for layer in layers]


CONTENDER_PREPARE: dict[str, Callable[[list[np.ndarray], np.ndarray], Call]] = {
    "evfl": prepare_evfl,
    "evfl_float64": prepare_evfl_float64,
    "previous": prepare_evfl_previous,
    "flower": prepare_flower,
    "bound": prepare_bound,
    "add_reduce": prepare_add_reduce,
}


# --- the worker: one contender in a fresh process -------------------------------------------


def _status_kib() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measure(call: Call, repeats: int) -> tuple[list[float], list[np.ndarray], dict[str, Any]]:
    """A warm-up call, then `repeats` timed calls; the last result, and the peak of any call."""
    import gc

    gc.collect()
    before = _status_kib()["VmRSS"]
    peak_reset = _reset_peak()
    result = call()  # warm-up
    seconds = []
    for _ in range(repeats):
        del result  # so that the peak is one call's, not two results'
        started = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - started)
    status = _status_kib()
    memory = {
        "rss_before_kib": before,
        "hwm_kib": status["VmHWM"],
        "extra_peak_kib": status["VmHWM"] - before if peak_reset else None,
        "peak_reset": peak_reset,
    }
    return seconds, result, memory


def worker(method: str, inputs: Path, out: Path, repeats: int, profile: bool) -> dict[str, Any]:
    layers, counts = load_inputs(inputs)
    report: dict[str, Any] = {"method": method, "numpy": np.__version__}
    names = {"bound": ["bound", "add_reduce"]}.get(method, [method])
    for name in names:
        seconds, result, memory = measure(CONTENDER_PREPARE[name](layers, counts), repeats)
        report[name] = {"seconds": seconds, "memory": memory}
        if name != "add_reduce":
            out.mkdir(parents=True, exist_ok=True)
            for k, arr in enumerate(result):
                np.save(out / f"{name}{k}.npy", np.asarray(arr), allow_pickle=False)
        del result
    if method == "evfl":
        for k, arr in enumerate(prepare_evfl_float64(layers, counts)()):
            np.save(out / f"reference{k}.npy", arr, allow_pickle=False)
    if method == "flower":
        import flwr

        report["flwr"] = flwr.__version__
    if profile:
        call = CONTENDER_PREPARE[method](layers, counts)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(PROFILE_CALLS):
            call()
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(PROFILE_TOP)
        report["profile"] = text.getvalue()
        report["breakdown"] = _evfl_breakdown(layers, counts)
    return report


def _evfl_breakdown(layers: list[np.ndarray], counts: np.ndarray) -> dict[str, float]:
    """Where evfl's time goes: its widening tile copies alone vs the whole weighted sum."""
    import importlib

    tiling = importlib.import_module("models.aggregate.fedavg")

    def copies_only() -> None:  # fedavg.weighted_layer without the products and sums
        for layer in layers:
            rows = [row.ravel() for row in layer]
            size = rows[0].size
            width = min(size, tiling.SLICE)
            group = max(1, min(len(rows), tiling.BLOCK_BYTES // (8 * width)))
            block = np.empty(group * width)
            for start in range(0, size, width):
                stop = min(start + width, size)
                for first in range(0, len(rows), group):
                    members = [a[start:stop] for a in rows[first : first + group]]
                    flat = block[: len(members) * (stop - start)]
                    np.concatenate(members, out=flat, casting="same_kind")

    def timed(call: Callable[[], object]) -> float:
        started = time.perf_counter()
        call()
        return time.perf_counter() - started

    return {
        "fedavg_float64_s": min(timed(prepare_evfl_float64(layers, counts)) for _ in range(2)),
        "widening_copies_only_s": min(timed(copies_only) for _ in range(2)),
    }


# --- the parent: venv, cells, tables --------------------------------------------------------


def _flower_python() -> Path:
    return FLOWER_VENV / "bin" / "python"


def ensure_flower_venv(console: Any) -> str:
    """Flower's venv, built on first use; returns the installed flwr version."""
    python = _flower_python()
    probe = [str(python), "-c", "import flwr; print(flwr.__version__)"]
    if python.exists():
        done = subprocess.run(probe, capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout.strip()
    with console.status(f"building {FLOWER_VENV.name} with {FLOWER_SPEC}…"):
        venv.EnvBuilder(with_pip=True, clear=True).create(FLOWER_VENV)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        done = subprocess.run([*pip, FLOWER_SPEC], capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            # flwr 1.42 pins certifi>=2026.10.19, newer than some mirrors carry; `aggregate` does
            # not use it. Install flwr without deps, then its requirements with certifi unpinned.
            console.print(
                f"[yellow]{FLOWER_SPEC} did not resolve; installing with certifi unpinned"
            )
            subprocess.run([*pip, "--no-deps", FLOWER_SPEC], check=True, timeout=900)
            requires = subprocess.run(
                [
                    str(python),
                    "-c",
                    "import importlib.metadata as m; print('\\n'.join(r for r in "
                    "m.requires('flwr') if 'extra ==' not in r))",
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split("\n")
            reqs = ["certifi" if r.startswith("certifi") else r for r in requires if r.strip()]
            subprocess.run([*pip, *reqs], check=True, timeout=900)
    done = subprocess.run(probe, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def expected_extra(method: str, updates: int, params: int) -> int:
    """Bytes the contender allocates besides its inputs (for the fit check, generous)."""
    if method == "flower":  # a weighted copy of every update, then the running sums
        return updates * params * 4 + 3 * params * 4
    if method in ("evfl", "previous"):  # float64 result and temporaries, the float32 cast
        return params * (8 + 8 + 8 + 4) + (64 << 20)
    return params * 4 * 3 + (64 << 20)


def repeats_for(nbytes: int) -> int:
    return 7 if nbytes < 50e6 else 5 if nbytes < 1e9 else 3


def _run_worker(
    method: str, inputs: Path, out: Path, repeats: int, profile: bool = False
) -> dict[str, Any]:
    python = _flower_python() if method == "flower" else Path(sys.executable)
    cmd = [str(python), "-m", "bench.aggregate", "--worker", method, "--inputs", str(inputs)]
    cmd += ["--out", str(out), "--repeats", str(repeats)] + (["--profile"] if profile else [])
    env = {**os.environ, **SINGLE_THREAD}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{method} worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _max_abs_diff(a: Path, b: Path, count: int) -> float:
    diff = 0.0
    for k in range(count):
        x = np.load(a.parent / f"{a.name}{k}.npy", allow_pickle=False).astype(np.float64)
        y = np.load(b.parent / f"{b.name}{k}.npy", allow_pickle=False).astype(np.float64)
        diff = max(diff, float(np.max(np.abs(x - y))) if x.size else 0.0)
    return diff


def run_cell(updates: int, params: int, tmp: Path, console: Any) -> dict[str, Any]:
    folder = tmp / f"n{updates}-p{params}"
    started = time.perf_counter()
    with console.status(f"writing inputs N={updates:,} P≈{params:,}…"):
        actual = write_inputs(folder / "inputs", updates, params)
    cell: dict[str, Any] = {
        "updates": updates,
        "params_target": params,
        "params": actual,
        "shapes": [list(s) for s in layer_shapes(params)],
        "input_bytes": updates * actual * 4,
        "write_inputs_s": time.perf_counter() - started,
        "skipped": {},
        "results": {},
    }
    repeats = repeats_for(cell["input_bytes"])
    cell["repeats"] = repeats
    for method in CONTENDERS:
        need = cell["input_bytes"] + expected_extra(method, updates, actual)
        available = _mem_available()
        if need > MEMORY_SHARE * available:
            reason = (
                f"needs ~{need / 2**30:.1f} GiB (inputs {cell['input_bytes'] / 2**30:.1f} GiB + "
                f"its own), over {MEMORY_SHARE:.0%} of MemAvailable {available / 2**30:.1f} GiB"
            )
            cell["skipped"][method] = reason
            console.print(f"[yellow]skip {method} at N={updates} P={actual:,}: {reason}")
            continue
        with console.status(f"{method}: N={updates:,} P={actual:,} × {repeats} repeats…"):
            cell["results"][method] = _run_worker(
                method, folder / "inputs", folder / "out", repeats
            )
    out = folder / "out"
    layers = len(cell["shapes"])
    have = set(cell["results"])
    diffs: dict[str, float] = {}
    for a, b in (("evfl", "flower"), ("evfl", "bound"), ("evfl", "previous"), ("flower", "bound")):
        if a in have and b in have:
            diffs[f"{a}_vs_{b}"] = _max_abs_diff(out / a, out / b, layers)
    if "evfl" in have:  # evfl wrote the float64 reference
        for a in sorted(have):
            diffs[f"{a}_vs_float64"] = _max_abs_diff(out / a, out / "reference", layers)
    cell["max_abs_diff"] = diffs
    for path in sorted(folder.rglob("*.npy")):
        path.unlink()
    return cell


def _median_s(cell: dict[str, Any], method: str, name: str | None = None) -> float | None:
    result = cell["results"].get(method)
    if result is None:
        return None
    return statistics.median(result[name or method]["seconds"])


def summarise(cell: dict[str, Any]) -> dict[str, Any]:
    evfl = _median_s(cell, "evfl")
    previous = _median_s(cell, "previous")
    flower = _median_s(cell, "flower")
    sgemv = _median_s(cell, "bound")
    add_reduce = _median_s(cell, "bound", "add_reduce")
    bound, bound_name = None, None
    if sgemv is not None and add_reduce is not None:
        bound, bound_name = min((sgemv, "sgemv"), (add_reduce, "add.reduce"))

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    s: dict[str, Any] = {
        "evfl_s": evfl,
        "previous_s": previous,
        "flower_s": flower,
        "bound_sgemv_s": sgemv,
        "bound_add_reduce_s": add_reduce,
        "bound_s": bound,
        "bound_is": bound_name,
        "evfl_over_bound": ratio(evfl, bound),
        "evfl_over_flower": ratio(evfl, flower),
        "previous_over_evfl": ratio(previous, evfl),
        "flower_over_bound": ratio(flower, bound),
        "best_s": {m: min(r[m]["seconds"]) for m, r in cell["results"].items() if r[m]["seconds"]},
    }
    s["bound_target_met"] = (
        s["evfl_over_bound"] <= TARGET_BOUND if s["evfl_over_bound"] is not None else None
    )
    s["flower_target_met"] = (
        s["evfl_over_flower"] <= 1.0 if s["evfl_over_flower"] is not None else None
    )
    s["gb_per_s"] = {
        m: cell["input_bytes"] / t / 1e9
        for m, t in (("evfl", evfl), ("previous", previous), ("flower", flower), ("bound", bound))
        if t
    }
    return s


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "skipped"
    return f"{seconds * 1e3:,.2f}" if seconds < 1 else f"{seconds * 1e3:,.0f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _mib(cell: dict[str, Any], method: str, name: str | None = None) -> str:
    result = cell["results"].get(method)
    if result is None:
        return "skipped"
    kib = result[name or method]["memory"]["extra_peak_kib"]
    return "n/a" if kib is None else f"{kib / 1024:,.1f}"


def _table(title: str, columns: Sequence[str]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    return table


def tables(cells: list[dict[str, Any]]) -> tuple[Any, Any]:
    timing = _table(
        "1. time per aggregate, median after a warm-up (ms); each contender in a fresh process, "
        "single-threaded BLAS",
        (
            "N × P",
            "MB in",
            "bound ms (which)",
            "evfl ms",
            "previous ms",
            "Flower ms",
            "evfl ÷ bound",
            "Flower ÷ bound",
            "evfl ÷ Flower",
            "previous ÷ evfl",
            "≤ 1.5× bound",
            "≤ Flower",
        ),
    )
    memory = _table(
        "2. extra peak memory (RSS high-water − RSS with the inputs loaded, MiB) and agreement "
        "(max |Δ|)",
        (
            "N × P",
            "MB in",
            "evfl MiB",
            "previous MiB",
            "Flower MiB",
            "bound MiB",
            "evfl–Flower",
            "evfl–bound",
            "evfl–previous",
            "evfl–float64",
            "Flower–float64",
            "bound–float64",
        ),
    )

    def met(value: bool | None) -> str:
        return "—" if value is None else "met" if value else "MISSED"

    def diff(cell: dict[str, Any], key: str) -> str:
        value = cell["max_abs_diff"].get(key)
        return "—" if value is None else f"{value:.1e}"

    for cell in cells:
        s = cell["summary"]
        label = f"{cell['updates']} × {cell['params']:,}"
        mb = f"{cell['input_bytes'] / 1e6:,.1f}"
        bound = "skipped" if s["bound_s"] is None else f"{_ms(s['bound_s'])} ({s['bound_is']})"
        timing.add_row(
            label,
            mb,
            bound,
            _ms(s["evfl_s"]),
            _ms(s["previous_s"]),
            _ms(s["flower_s"]),
            _ratio(s["evfl_over_bound"]),
            _ratio(s["flower_over_bound"]),
            _ratio(s["evfl_over_flower"]),
            _ratio(s["previous_over_evfl"]),
            met(s["bound_target_met"]),
            met(s["flower_target_met"]),
        )
        memory.add_row(
            label,
            mb,
            _mib(cell, "evfl"),
            _mib(cell, "previous"),
            _mib(cell, "flower"),
            _mib(cell, "bound"),
            diff(cell, "evfl_vs_flower"),
            diff(cell, "evfl_vs_bound"),
            diff(cell, "evfl_vs_previous"),
            diff(cell, "evfl_vs_float64"),
            diff(cell, "flower_vs_float64"),
            diff(cell, "bound_vs_float64"),
        )
    return timing, memory


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x.replace("_", "")) for x in text.split(",") if x.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=10,58 and P=10k,1M")
    parser.add_argument("--updates", type=_ints, default=None, help="N, comma-separated")
    parser.add_argument("--params", type=_ints, default=None, help="P, comma-separated")
    parser.add_argument("--worker", choices=[*CONTENDERS, "evfl_float64"], help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.inputs, args.out, args.repeats, args.profile)))
        return

    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=200)
    updates = args.updates or (QUICK_UPDATES if args.quick else UPDATES)
    params = args.params or (QUICK_PARAMS if args.quick else PARAMS)
    started = time.perf_counter()
    flwr_version = ensure_flower_venv(console)
    load = os.getloadavg()
    results: dict[str, Any] = {
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "flwr": flwr_version,
        "mem_available_bytes_at_start": _mem_available(),
        "loadavg_at_start": load,
        "target": {"evfl_over_bound_max": TARGET_BOUND, "evfl_over_flower_max": 1.0},
        "cells": [],
    }
    cells: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="evfl-bench-aggregate-") as tmp_name:
        tmp = Path(tmp_name)
        for n in updates:
            for p in params:
                cell = run_cell(n, p, tmp, console)
                cell["summary"] = summarise(cell)
                cells.append(cell)
        timing, memory = tables(cells)
        console.print(timing)
        console.print(memory)
        missed = [
            c
            for c in cells
            if c["summary"]["bound_target_met"] is False
            or c["summary"]["flower_target_met"] is False
        ]
        if missed:
            # The largest missed cell up to PROFILE_BYTES: its inputs are written again.
            small = [c for c in missed if c["input_bytes"] <= PROFILE_BYTES] or missed
            worst = max(small, key=lambda c: (c["input_bytes"] <= PROFILE_BYTES, c["input_bytes"]))
            with console.status("profiling evfl at the largest missed cell…"):
                folder = tmp / "profile"
                write_inputs(folder / "inputs", worst["updates"], worst["params_target"])
                prof = _run_worker("evfl", folder / "inputs", folder / "out", 1, profile=True)
            where = f"N={worst['updates']} P={worst['params']:,}"
            b = prof["breakdown"]
            console.print(
                f"profile of {PROFILE_CALLS} calls of evfl's aggregate at {where} (cProfile, by "
                "own time; numpy ufuncs and np.dot count in their caller's own time):"
            )
            console.print(prof["profile"].strip(), markup=False, highlight=False)
            console.print(
                f"breakdown at {where}: fedavg (float64 result) {b['fedavg_float64_s'] * 1e3:,.1f}"
                f" ms, of which the widening tile copies alone take "
                f"{b['widening_copies_only_s'] * 1e3:,.1f} ms (the rest: BLAS dgemv over the "
                "float64 tiles, adding the partial sums, the cast to float32, Python per tile); "
                f"bound at that cell {_ms(worst['summary']['bound_s'])} ms"
            )
            results["profile"] = {"cell": where, **prof}
    results["cells"] = cells
    results["loadavg_at_end"] = os.getloadavg()
    results["total_seconds"] = time.perf_counter() - started
    console.print(
        f"total {results['total_seconds']:.0f} s on {os.cpu_count()} CPUs; load average "
        f"{load[0]:.2f} at start, {results['loadavg_at_end'][0]:.2f} at end (other work shares "
        "the machine)"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "aggregate.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
