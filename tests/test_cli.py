"""The `evfl` command as a user runs it: tables on success, one red line on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PALO_ALTO_EXCERPT

EVFL = [sys.executable, "-m", "evfl.cli"]
ENV = {**os.environ, "COLUMNS": "120", "TF_CPP_MIN_LOG_LEVEL": "2"}


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EVFL, *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600
    )


def test_data_summary_all_three_datasets():
    out = run(
        "data",
        "summary",
        "--dataset",
        "dundee",
        "--dataset",
        "perth",
        "--dataset",
        "paloalto",
        "--paloalto",
        str(PALO_ALTO_EXCERPT),
    )
    assert out.returncode == 0, out.stderr
    assert "67,112" in out.stdout and "66,664" in out.stdout and "52" in out.stdout
    assert "test site" in out.stdout and "DST-ambiguous ends fixed" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("data", "summary", "--dataset", "paloalto", "--paloalto", "/no/such.csv"),
            "/no/such.csv: file not found",
        ),
        (("data", "summary", "--dataset", "oslo"), "dataset 'oslo' is unknown"),
        (
            ("model", "train", "--dataset", "perth", "--target", "charging_time"),
            "records no charging time",
        ),
        (("model", "train", "--dataset", "perth", "--cuts", "0,2"), "cuts=(0, 2)"),
        (("model", "train", "--dataset", "perth", "--cuts", "2,1"), "cuts=(2, 1)"),
        (("model", "export", "--model", "/no/model", "--out", "/tmp/x"), "bundle.json: missing"),
    ],
)
def test_bad_input_is_one_line_not_a_traceback(args, message):
    out = run(*args)
    assert out.returncode == 2
    assert "Traceback" not in out.stdout + out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


@pytest.mark.slow
def test_train_then_export_round_trip(tmp_path: Path):
    model_dir, export_dir = tmp_path / "m", tmp_path / "e"
    out = run(
        "model",
        "train",
        "--dataset",
        "perth",
        "--target",
        "energy",
        "--epochs",
        "2",
        "--out",
        str(model_dir),
    )
    assert out.returncode == 0, out.stderr
    for row in (
        "edge exit",
        "fog exit",
        "cloud exit",
        "early-exit chain",
        "baseline: training mean",
    ):
        assert row in out.stdout
    out = run(
        "model",
        "export",
        "--model",
        str(model_dir),
        "--out",
        str(export_dir),
        "--quantize",
        "float16",
    )
    assert out.returncode == 0, out.stderr
    manifest = json.loads((export_dir / "manifest.json").read_text())
    files = {(f["partition"], f["format"], f["variant"]): f for f in manifest["files"]}
    edge = files[("edge", "tflite", "float32")]
    assert edge["parity_max_abs_diff"] <= 1e-4
    assert ("edge", "tflite", "float16") in files
    assert manifest["metadata"]["normalization"]["y_std"] > 0
    assert manifest["metadata"]["encoder"]["kind"] == "tabular"
