import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from models import export as export_mod
from models.export import (
    ExportError,
    ExportParityError,
    export_partitions,
    load_manifest,
    run_tflite,
)
from models.model_config import LayerSpec, ModelConfig
from models.partitioned import build_model, set_weights, weights_of

REPO = Path(__file__).resolve().parents[1]
MLP = ModelConfig(input_shape=(10,), layers=(LayerSpec("dense", 16),) * 3, cuts=(1, 2))
LSTM = ModelConfig(
    input_shape=(6, 4),
    layers=(LayerSpec("lstm", 8), LayerSpec("lstm", 8), LayerSpec("dense", 8)),
    cuts=(1, 2),
    exit_hidden_units=4,
)
CONFIGS = {"mlp": MLP, "lstm": LSTM}


def make_model(config: ModelConfig, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = build_model(config)
    rng = np.random.default_rng(seed)
    set_weights(model, [w + rng.normal(0, 0.1, w.shape).astype(w.dtype) for w in weights_of(model)])
    return model


def sample(config: ModelConfig, n: int = 6, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *config.input_shape)).astype(np.float32)


def keras_outputs(layer: keras.Model, x: np.ndarray) -> list[np.ndarray]:
    out = layer(x, training=False)
    return [np.asarray(o) for o in (out if isinstance(out, list | tuple) else [out])]


@pytest.fixture(scope="module", params=list(CONFIGS), ids=list(CONFIGS))
def exported(request, tmp_path_factory):
    config = CONFIGS[request.param]
    model = make_model(config)
    out_dir = tmp_path_factory.mktemp(request.param)
    report = export_partitions(
        model,
        config,
        out_dir,
        sample(config),
        quantize=("float16", "int8"),
        metadata={"dataset": "synthetic", "round": 3},
    )
    return config, model, out_dir, report


def test_edge_tflite_runs_in_litert_and_matches_keras(exported):
    config, model, out_dir, report = exported
    x = sample(config, n=4, seed=11)  # not the inputs the export checked itself
    interpreter = Interpreter(model_path=str(out_dir / "edge.tflite"))
    runner = interpreter.get_signature_runner()
    (input_name,) = interpreter.get_signature_list()["serve"]["inputs"]
    hidden, exit_out = keras_outputs(model.get_layer("edge"), x)
    for i in range(len(x)):
        got = runner(**{input_name: x[i : i + 1]})
        np.testing.assert_allclose(got["edge_exit_out"][0], exit_out[i], rtol=0, atol=1e-4)
        np.testing.assert_allclose(got["edge_hidden"][0], hidden[i], rtol=0, atol=1e-4)
    assert report.file("edge", "tflite").parity_max_abs_diff <= 1e-4


def test_tflite_chain_edge_fog_cloud_matches_all_keras_exits(exported):
    config, model, out_dir, report = exported
    if any(s.format == "tflite" for s in report.skipped):
        pytest.skip(f"a partition did not convert: {report.skipped}")
    x = sample(config, n=4, seed=12)
    h_edge, e_edge = run_tflite(out_dir / "edge.tflite", x, ["edge_hidden", "edge_exit_out"])
    h_fog, e_fog = run_tflite(out_dir / "fog.tflite", h_edge, ["fog_hidden", "fog_exit_out"])
    (e_cloud,) = run_tflite(out_dir / "cloud.tflite", h_fog)
    for got, want in zip((e_edge, e_fog, e_cloud), keras_outputs(model, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_manifest_describes_every_file_with_its_hash(exported):
    config, _, out_dir, report = exported
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert ModelConfig.from_dict(manifest["config"]) == config
    assert manifest["metadata"] == {"dataset": "synthetic", "round": 3}
    assert manifest == report.to_manifest()
    assert {f["partition"] for f in manifest["files"]} == {"edge", "fog", "cloud"}
    listed = {f["path"] for f in manifest["files"]}
    assert {"edge.tflite", "edge.float16.tflite", "edge.int8.tflite"} <= listed
    assert {"fog.keras", "cloud.keras"} <= listed
    for f in manifest["files"]:
        data = (out_dir / f["path"]).read_bytes()
        assert f["sha256"] == hashlib.sha256(data).hexdigest()
        assert f["size_bytes"] == len(data)
        if f["variant"] == "float32":
            assert f["parity_max_abs_diff"] <= 1e-4
    edge = report.file("edge", "tflite")
    assert [t.name for t in edge.outputs] == ["edge_hidden", "edge_exit_out"]
    assert edge.inputs[0].shape == (1, *config.input_shape)
    assert load_manifest(out_dir) == report


def test_quantized_edge_variants_run_and_report_their_error(exported):
    config, model, out_dir, report = exported
    _, exit_out = keras_outputs(model.get_layer("edge"), sample(config))
    for variant in ("float16", "int8"):
        entry = report.file("edge", "tflite", variant)
        (got,) = run_tflite(out_dir / entry.path, sample(config), ["edge_exit_out"])
        diff = float(np.max(np.abs(got - exit_out)))
        assert diff == pytest.approx(entry.outputs[1].max_abs_diff, abs=1e-6)
        assert np.isfinite(entry.parity_max_abs_diff)


def test_keras_fog_and_cloud_load_back_and_match(exported):
    config, model, out_dir, _ = exported
    x = sample(config, n=5, seed=13)
    hidden, _ = keras_outputs(model.get_layer("edge"), x)
    fog = keras.saving.load_model(out_dir / "fog.keras")
    cloud = keras.saving.load_model(out_dir / "cloud.keras")
    h_fog, e_fog = keras_outputs(fog, hidden)
    (e_cloud,) = keras_outputs(cloud, h_fog)
    _, want_fog, want_cloud = keras_outputs(model, x)
    np.testing.assert_array_equal(e_fog, want_fog)
    np.testing.assert_array_equal(e_cloud, want_cloud)


def test_int8_shrinks_an_edge_with_enough_weights(tmp_path):
    # Dynamic-range quantisation leaves tensors under 1024 elements in float32, so the tiny
    # test models above are not shrunk; a 10x128 edge kernel is.
    config = ModelConfig(
        input_shape=(10,),
        layers=(LayerSpec("dense", 128), LayerSpec("dense", 4), LayerSpec("dense", 4)),
        cuts=(1, 2),
    )
    report = export_partitions(make_model(config), config, tmp_path, sample(config), ("int8",))
    int8, f32 = report.file("edge", "tflite", "int8"), report.file("edge", "tflite")
    assert int8.size_bytes < 0.8 * f32.size_bytes
    assert int8.parity_max_abs_diff < 0.1


def test_failed_conversion_is_recorded_not_fatal(tmp_path, monkeypatch):
    real = export_mod.to_tflite

    def cloud_fails(model, variant):
        if model.name == "cloud":
            raise RuntimeError("error: op 'Foo' is neither a custom op nor a flex op")
        return real(model, variant)

    monkeypatch.setattr(export_mod, "to_tflite", cloud_fails)
    report = export_partitions(make_model(MLP), MLP, tmp_path, sample(MLP))
    assert [(s.partition, s.format) for s in report.skipped] == [("cloud", "tflite")]
    assert "neither a custom op" in report.skipped[0].reason
    assert not (tmp_path / "cloud.tflite").exists()
    assert (tmp_path / "cloud.keras").exists()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["skipped"][0]["partition"] == "cloud"
    assert any("skipped" in cell for row in report.rows() for cell in row)


def test_parity_failure_raises_and_writes_no_manifest(tmp_path, monkeypatch):
    real = export_mod.run_tflite

    def drifting(path, inputs, output_names=None):
        return [o + 1e-3 for o in real(path, inputs, output_names)]

    monkeypatch.setattr(export_mod, "run_tflite", drifting)
    with pytest.raises(ExportParityError, match=r"edge\.tflite"):
        export_partitions(make_model(MLP), MLP, tmp_path, sample(MLP))
    assert not (tmp_path / "manifest.json").exists()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"quantize": ("int4",)}, "quantize"),
        ({"sample_inputs": np.zeros((3, 9), np.float32)}, "sample_inputs"),
        ({"metadata": {"when": object()}}, "metadata"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, field):
    args = {"sample_inputs": sample(MLP), **kwargs}
    with pytest.raises(ExportError, match=rf"^{field}"):
        export_partitions(build_model(MLP), MLP, tmp_path, **args)


def test_tflite_runner_does_not_need_tensorflow(exported, tmp_path):
    config, _, out_dir, _ = exported
    np.save(tmp_path / "x.npy", sample(config, n=2))
    code = (
        "import sys, numpy as np; from models.export import run_tflite; "
        f"out = run_tflite({str(out_dir / 'edge.tflite')!r}, "
        f"np.load({str(tmp_path / 'x.npy')!r}), ['edge_exit_out']); "
        "assert out[0].shape == (2, 2); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True)
