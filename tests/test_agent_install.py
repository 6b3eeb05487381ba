"""The vehicle's install: `pip install .[agent]` into a clean venv pulls no TensorFlow, and
the exported edge partition runs there with LiteRT alone."""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"tensorflow", "tensorflow-cpu", "keras", "pandas", "confluent-kafka", "scikit-learn"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def agent_venv(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("agent-venv")
    venv.EnvBuilder(with_pip=True).create(where)
    python = where / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", f"{ROOT}[agent]"],
        check=True, capture_output=True, timeout=900,
    )
    return python


def test_agent_extra_installs_no_tensorflow(agent_venv: Path):
    listing = subprocess.run(
        [agent_venv, "-m", "pip", "list", "--format", "json"],
        check=True, capture_output=True, text=True,
    )
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listing.stdout)}
    assert "ai-edge-litert" in installed and "evfl" in installed
    assert not installed & FORBIDDEN, installed & FORBIDDEN


def test_edge_partition_runs_with_litert_alone(agent_venv: Path, tmp_path: Path):
    from models.export import export_partitions
    from models.model_config import LayerSpec, ModelConfig
    from models.partitioned import build_model, compile_model, split

    config = ModelConfig(
        (12,), (LayerSpec("dense", 16), LayerSpec("dense", 16), LayerSpec("dense", 16)), (1, 2)
    )
    model = compile_model(build_model(config), config)
    x = np.random.default_rng(0).normal(size=(8, 12)).astype(np.float32)
    export_partitions(model, config, tmp_path, x)
    edge, _, _ = split(model, config)
    hidden, exit_out = (np.asarray(a) for a in edge(x))
    np.save(tmp_path / "x.npy", x)
    script = f"""
import sys, numpy as np
from models.export import run_tflite
x = np.load({str(tmp_path / "x.npy")!r})
edge = {str(tmp_path / "edge.tflite")!r}
hidden, exit_out = run_tflite(edge, x, ["edge_hidden", "edge_exit_out"])
np.save({str(tmp_path / "out.npy")!r}, np.concatenate([hidden, exit_out], axis=1))
assert "tensorflow" not in sys.modules and "keras" not in sys.modules
"""
    subprocess.run([agent_venv, "-c", script], check=True, capture_output=True, timeout=300)
    got = np.load(tmp_path / "out.npy")
    want = np.concatenate([hidden, exit_out], axis=1)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_evfl_command_starts_without_heavy_libraries(agent_venv: Path):
    out = subprocess.run(
        [agent_venv, "-m", "evfl.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "data" in out.stdout and "model" in out.stdout

