"""bench.aggregate's pure-numpy pieces on tiny inputs, without Flower and without timings."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from bench import aggregate as bench

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("params", [10_000, 1_000_000, 10_000_000])
def test_layer_shapes_are_an_mlp_of_about_p_parameters(params):
    shapes = bench.layer_shapes(params)
    total = sum(math.prod(s) for s in shapes)
    assert abs(total - params) / params < 0.01
    assert [len(s) for s in shapes] == [2, 1, 2, 1, 2, 1]
    assert shapes[0][1] == shapes[1][0] == shapes[2][0] == shapes[2][1] == shapes[4][0]


@pytest.fixture
def tiny_inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "inputs"
    params = bench.write_inputs(folder, updates=7, params=600, seed=1)
    assert params == sum(math.prod(s) for s in bench.layer_shapes(600))
    return folder


def test_inputs_round_trip_without_pickle(tiny_inputs):
    layers, counts = bench.load_inputs(tiny_inputs)
    assert [layer.shape[1:] for layer in layers] == bench.layer_shapes(600)
    assert all(layer.shape[0] == 7 and layer.dtype == np.float32 for layer in layers)
    assert counts.shape == (7,) and counts.dtype == np.int64 and counts.min() >= 100
    for path in tiny_inputs.glob("*.npy"):
        np.load(path, allow_pickle=False)  # plain arrays, no object dtype


def test_every_pure_numpy_contender_computes_the_weighted_average(tiny_inputs):
    layers, counts = bench.load_inputs(tiny_inputs)
    expected = [np.average(layer.astype(np.float64), axis=0, weights=counts) for layer in layers]
    for name in ("evfl", "previous", "evfl_float64", "bound"):
        got = bench.CONTENDER_PREPARE[name](layers, counts)()
        assert [a.shape for a in got] == [e.shape for e in expected], name
        tolerance = 1e-12 if name == "evfl_float64" else 1e-6
        for a, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(a, e, rtol=tolerance, atol=tolerance, err_msg=name)
    summed = bench.CONTENDER_PREPARE["add_reduce"](layers, counts)()
    for a, layer in zip(summed, layers, strict=True):
        np.testing.assert_allclose(a, layer.sum(axis=0), rtol=1e-5, atol=1e-5)


def test_a_worker_process_reports_times_memory_and_writes_its_result(tiny_inputs, tmp_path):
    out = tmp_path / "out"
    for method in ("evfl", "bound"):
        cmd = [sys.executable, "-m", "bench.aggregate", "--worker", method]
        cmd += ["--inputs", str(tiny_inputs), "--out", str(out), "--repeats", "2"]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert len(report[method]["seconds"]) == 2
        assert report[method]["memory"]["rss_before_kib"] > 0
    layers, counts = bench.load_inputs(tiny_inputs)
    for k, layer in enumerate(layers):
        reference = np.load(out / f"reference{k}.npy", allow_pickle=False)
        assert reference.dtype == np.float64
        np.testing.assert_allclose(reference, np.average(layer, axis=0, weights=counts))
        evfl = np.load(out / f"evfl{k}.npy", allow_pickle=False)
        bound = np.load(out / f"bound{k}.npy", allow_pickle=False)
        assert evfl.dtype == bound.dtype == np.float32
        np.testing.assert_allclose(evfl, bound, rtol=1e-6, atol=1e-6)


def test_a_cell_without_flower_summarises_and_prints(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "CONTENDERS", ("evfl", "previous", "bound"))
    console = Console(file=io.StringIO(), width=250)
    cell = bench.run_cell(4, 300, tmp_path, console)
    cell["summary"] = bench.summarise(cell)
    assert set(cell["results"]) == {"evfl", "previous", "bound"}
    assert cell["max_abs_diff"]["evfl_vs_bound"] < 1e-6
    assert cell["max_abs_diff"]["evfl_vs_previous"] < 1e-6
    assert cell["summary"]["flower_s"] is None and cell["summary"]["evfl_over_bound"] > 0
    assert not list(tmp_path.rglob("*.npy"))  # inputs and results are removed after the cell
    for table in bench.tables([cell]):
        console.print(table)
    printed = console.file.getvalue()
    assert "4 × " in printed and "skipped" in printed  # Flower's columns
    json.dumps(cell)  # what goes into bench/results/aggregate.json
