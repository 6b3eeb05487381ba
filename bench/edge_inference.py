"""Per-request inference cost of each exit, in-process, against Keras in the same run.

What a vehicle pays to answer at its own exit (edge .tflite through LiteRT), what the whole
chain of .tflite partitions costs, and the baseline: the full Keras model called for one
request. Ratios, not absolute times: these machines are shared and noisy. The network hops
are measured by bench/latency once the programs exist.

    python -m bench.edge_inference [--model runs/main/dundee-energy] [--requests 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
RESULTS = Path(__file__).parent / "results"


def _timed(call: Callable[[np.ndarray], object], rows: np.ndarray, requests: int) -> np.ndarray:
    for i in range(min(50, requests)):  # warm-up
        call(rows[i % len(rows)][None])
    out = np.empty(requests)
    for i in range(requests):
        x = rows[i % len(rows)][None]
        t0 = time.perf_counter()
        call(x)
        out[i] = time.perf_counter() - t0
    return out * 1e6  # µs


def _litert(path: Path) -> Callable[[np.ndarray], dict]:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    (name,) = runner.get_input_details()
    return lambda x: runner(**{name: x})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("runs/main/dundee-energy"))
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()

    from models.bundle import load_bundle
    from models.export import export_partitions

    bundle = load_bundle(args.model)
    rows = bundle.parity_inputs
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        export_partitions(bundle.model, bundle.config, out, rows, quantize=("float16", "int8"))
        edge, fog, cloud = (_litert(out / f"{p}.tflite") for p in ("edge", "fog", "cloud"))

        def chain(x: np.ndarray) -> object:
            h1 = edge(x)["edge_hidden"]
            h2 = fog(h1)["fog_hidden"]
            return cloud(h2)

        keras_model = bundle.model
        cases = {
            "Keras full model, eager (baseline)": lambda x: keras_model(x, training=False),
            "edge exit, LiteRT float32": edge,
            "edge exit, LiteRT float16": _litert(out / "edge.float16.tflite"),
            "edge exit, LiteRT int8": _litert(out / "edge.int8.tflite"),
            "edge→fog→cloud, LiteRT": chain,
        }
        timings = {name: _timed(call, rows, args.requests) for name, call in cases.items()}
    base = np.median(timings["Keras full model, eager (baseline)"])
    table = Table(title=f"in-process inference, one request, {args.requests} requests each")
    for col in ("path", "p50 µs", "p95 µs", "p99 µs", "speed-up vs Keras (p50)"):
        table.add_column(col, justify="left" if col == "path" else "right")
    results = []
    for name, t in timings.items():
        p50, p95, p99 = np.percentile(t, [50, 95, 99])
        table.add_row(name, f"{p50:.1f}", f"{p95:.1f}", f"{p99:.1f}", f"{base / p50:.1f}×")
        results.append({"path": name, "p50_us": p50, "p95_us": p95, "p99_us": p99,
                        "speedup_vs_keras_p50": base / p50})
    Console().print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "edge_inference.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
