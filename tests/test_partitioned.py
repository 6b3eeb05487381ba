import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from models.losses import BetaNLL, mean_mse
from models.model_config import LayerSpec, ModelConfig
from models.partitioned import (
    EXIT_OUTPUTS,
    PartitionIndexError,
    ShapeMismatch,
    build_model,
    build_partition,
    compile_model,
    exit_targets,
    partition_weights,
    set_partition_weights,
    set_weights,
    split,
    weights_of,
)

MLP = ModelConfig(input_shape=(10,), layers=(LayerSpec("dense", 16),) * 3, cuts=(1, 2))
LSTM_SEQ_CUT = ModelConfig(
    input_shape=(6, 4),
    layers=(LayerSpec("lstm", 8), LayerSpec("lstm", 8), LayerSpec("dense", 8)),
    cuts=(1, 2),
)
LSTM_AFTER_CUT = ModelConfig(
    input_shape=(6, 4),
    layers=(
        LayerSpec("lstm", 8),
        LayerSpec("lstm", 8, dropout=0.1),
        LayerSpec("dense", 8),
        LayerSpec("dense", 4),
    ),
    cuts=(2, 3),
    exit_hidden_units=4,
)
CONFIGS = {"mlp": MLP, "lstm_seq_cut": LSTM_SEQ_CUT, "lstm_after_cut": LSTM_AFTER_CUT}


def inputs(config: ModelConfig, n: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *config.input_shape)).astype(np.float32)


def jitter(model: keras.Model, seed: int = 1) -> keras.Model:
    """Non-zero biases etc., so a weight that is not copied shows up in the outputs."""
    rng = np.random.default_rng(seed)
    set_weights(model, [w + rng.normal(0, 0.1, w.shape).astype(w.dtype) for w in weights_of(model)])
    return model


def outputs(model: keras.Model, x: np.ndarray) -> list[np.ndarray]:
    out = model(x, training=False)
    return [np.asarray(o) for o in (out if isinstance(out, list | tuple) else [out])]


@pytest.fixture(scope="module", params=list(CONFIGS), ids=list(CONFIGS))
def trained(request):
    config = CONFIGS[request.param]
    keras.utils.set_random_seed(0)
    return config, jitter(build_model(config))


def test_full_model_has_three_named_exits_of_mean_and_log_variance(trained):
    config, model = trained
    assert list(model.output_names) == list(EXIT_OUTPUTS)
    assert [o.shape for o in outputs(model, inputs(config))] == [(7, 2)] * 3


def test_split_chain_reproduces_the_full_model_exactly(trained):
    config, model = trained
    x = inputs(config)
    full = outputs(model, x)
    edge, fog, cloud = split(model, config)
    h_edge, e_edge = outputs(edge, x)
    h_fog, e_fog = outputs(fog, h_edge)
    (e_cloud,) = outputs(cloud, h_fog)
    for got, want in zip((e_edge, e_fog, e_cloud), full, strict=True):
        np.testing.assert_array_equal(got, want)
    assert h_edge.shape == (7, *config.hidden_shape(0))
    assert h_fog.shape == (7, *config.hidden_shape(1))


def test_batch_one_export_copy_matches_sample_by_sample(trained):
    config, model = trained
    x = inputs(config, n=3)
    full = outputs(model, x)
    edge, fog, cloud = split(model, config, batch_size=1)
    assert edge.inputs[0].shape[0] == 1
    for i in range(len(x)):
        h_edge, e_edge = outputs(edge, x[i : i + 1])
        h_fog, e_fog = outputs(fog, h_edge)
        (e_cloud,) = outputs(cloud, h_fog)
        for got, want in zip((e_edge, e_fog, e_cloud), full, strict=True):
            np.testing.assert_allclose(got[0], want[i], rtol=0, atol=1e-6)


def test_lstm_cut_passes_a_sequence_between_lstms():
    assert build_partition(LSTM_SEQ_CUT, 0).outputs[0].shape == (None, 6, 8)
    assert build_partition(LSTM_AFTER_CUT, 0).outputs[0].shape == (None, 8)
    assert len(build_partition(LSTM_SEQ_CUT, 2).outputs) == 1  # cloud has only its exit


def test_set_weights_rejects_wrong_shapes_and_changes_nothing():
    model = build_model(MLP)
    before = weights_of(model)
    bad = [*before[:-1], np.zeros((3,), np.float32)]
    with pytest.raises(ShapeMismatch, match=r"arrays\[\d+\].*shape \(3,\)"):
        set_weights(model, bad)
    with pytest.raises(ShapeMismatch, match="arrays: got"):
        set_weights(model, before[:-1])
    with pytest.raises(ShapeMismatch, match="dtype"):
        set_weights(model, [w.astype(np.int32) for w in before])
    for got, want in zip(weights_of(model), before, strict=True):
        np.testing.assert_array_equal(got, want)


def test_weights_copied_between_models_give_identical_predictions():
    a, b = jitter(build_model(MLP), seed=1), jitter(build_model(MLP), seed=2)
    x = inputs(MLP)
    # float64 (as from np.average across clients) is accepted and cast back.
    set_weights(b, [w.astype(np.float64) for w in weights_of(a)])
    for got, want in zip(outputs(b, x), outputs(a, x), strict=True):
        np.testing.assert_array_equal(got, want)


def test_partition_weights_replace_only_that_partition():
    a, b = jitter(build_model(MLP), seed=1), jitter(build_model(MLP), seed=2)
    x = inputs(MLP)
    set_partition_weights(b, 0, partition_weights(a, 0))
    (a_edge, a_fog, _), (b_edge, b_fog, _) = outputs(a, x), outputs(b, x)
    np.testing.assert_array_equal(b_edge, a_edge)
    assert not np.allclose(b_fog, a_fog)
    with pytest.raises(PartitionIndexError, match="index=3"):
        partition_weights(a, 3)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_beta_nll_matches_the_formula(beta):
    rng = np.random.default_rng(0)
    y = rng.normal(size=5).astype(np.float32)
    pred = np.stack([rng.normal(size=5), [-20.0, -1.0, 0.0, 2.0, 30.0]], axis=1).astype(np.float32)
    log_var = np.clip(pred[:, 1], -10, 10)
    var = np.exp(log_var)
    want = np.mean(var**beta * 0.5 * (log_var + (y - pred[:, 0]) ** 2 / var))
    loss = BetaNLL(beta=beta)
    for y_true in (y, y[:, None]):
        np.testing.assert_allclose(float(loss(y_true, pred)), want, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(mean_mse(y, pred)), (y - pred[:, 0]) ** 2, rtol=1e-6)


def test_tiny_model_learns_a_noisy_linear_target(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 10)).astype(np.float32)
    y = x @ rng.normal(size=10).astype(np.float32) * 0.3 + rng.normal(0, 0.1, 256)
    config = ModelConfig(
        input_shape=(10,), layers=(LayerSpec("dense", 8),) * 3, cuts=(1, 2), learning_rate=0.01
    )
    model = compile_model(build_model(config), config)
    history = model.fit(x, exit_targets(y), epochs=6, batch_size=32, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert history["cloud_exit_mean_mse"][-1] < 0.5 * history["cloud_exit_mean_mse"][0]

    # The registered loss and metric let the compiled model be saved and loaded back.
    model.save(tmp_path / "full.keras")
    loaded = keras.saving.load_model(tmp_path / "full.keras")
    for got, want in zip(outputs(loaded, x[:5]), outputs(model, x[:5]), strict=True):
        np.testing.assert_array_equal(got, want)
    assert isinstance(loaded.loss[0], BetaNLL)
