import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.model_config import PARTITIONS, LayerSpec, ModelConfig, ModelConfigError

REPO = Path(__file__).resolve().parents[1]
DENSE3 = (LayerSpec("dense", 16), LayerSpec("dense", 16), LayerSpec("dense", 16))
LSTM_STACK = (LayerSpec("lstm", 8), LayerSpec("lstm", 8, dropout=0.2), LayerSpec("dense", 8))


def mlp(**overrides) -> ModelConfig:
    kwargs = {"input_shape": (10,), "layers": DENSE3, "cuts": (1, 2), **overrides}
    return ModelConfig(**kwargs)


def test_partitions_cover_the_layers_in_order():
    config = ModelConfig(
        input_shape=(6, 4), layers=(*LSTM_STACK, LayerSpec("dense", 4)), cuts=(1, 3)
    )
    assert [config.partition_layers(i) for i in range(3)] == [
        LSTM_STACK[:1],
        (*LSTM_STACK[1:],),
        (LayerSpec("dense", 4),),
    ]
    assert PARTITIONS == ("edge", "fog", "cloud")


def test_hidden_shape_is_a_sequence_only_between_two_lstms():
    seq_cut = ModelConfig(input_shape=(6, 4), layers=LSTM_STACK, cuts=(1, 2))
    assert seq_cut.hidden_shape(0) == (6, 8)
    assert seq_cut.hidden_shape(1) == (8,)
    vector_cut = ModelConfig(
        input_shape=(6, 4), layers=(*LSTM_STACK, LayerSpec("dense", 4)), cuts=(2, 3)
    )
    assert vector_cut.hidden_shape(0) == (8,)


@pytest.mark.parametrize(
    ("cuts", "problem"),
    [
        ((0, 2), "edge partition would be empty"),
        ((1, 1), "fog partition would be empty"),
        ((1, 3), "cloud partition would be empty"),
        ((2, 1), "not increasing"),
        ((-1, 2), "out of range"),
        ((1, 7), "out of range"),
    ],
)
def test_bad_cuts_are_rejected_with_the_reason(cuts, problem):
    with pytest.raises(ModelConfigError, match=r"^cuts=") as err:
        mlp(cuts=cuts)
    assert problem in str(err.value)
    assert "0 < c1 < c2 < 3" in str(err.value)


def test_lstm_after_dense_names_the_layer():
    layers = (LayerSpec("dense", 8), LayerSpec("lstm", 8), LayerSpec("dense", 8))
    with pytest.raises(ModelConfigError, match=r"layers\[1\]"):
        ModelConfig(input_shape=(10,), layers=layers, cuts=(1, 2))


@pytest.mark.parametrize("dropout", [1.0, -0.1, 1.5])
def test_bad_dropout_is_rejected(dropout):
    with pytest.raises(ModelConfigError, match="dropout"):
        LayerSpec("dense", 8, dropout=dropout)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"input_shape": (6, 4)}, "input_shape"),  # dense first needs rank 1
        ({"layers": (LayerSpec("dense", 8),) * 2}, "layers"),
        ({"loss_weights": (0.0, 0.0, 0.0)}, "loss_weights"),
        ({"loss_weights": (1.0, -1.0, 1.0)}, "loss_weights"),
        ({"beta": 1.5}, "beta"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"exit_hidden_units": -1}, "exit_hidden_units"),
    ],
)
def test_other_invalid_fields_are_named(overrides, field):
    with pytest.raises(ModelConfigError, match=rf"^{field}"):
        mlp(**overrides)


def test_lstm_model_needs_timesteps_and_features():
    with pytest.raises(ModelConfigError, match="input_shape"):
        ModelConfig(input_shape=(4,), layers=LSTM_STACK, cuts=(1, 2))


def test_bad_units_is_rejected():
    with pytest.raises(ModelConfigError, match="units"):
        LayerSpec("dense", 0)


def test_json_round_trip_is_lossless():
    config = ModelConfig(
        input_shape=(6, 4),
        layers=LSTM_STACK,
        cuts=(1, 2),
        exit_hidden_units=4,
        loss_weights=(0.3, 0.3, 1.0),
        beta=0.0,
        learning_rate=0.003,
    )
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert hash(again) == hash(config)


def test_from_dict_rejects_unknown_and_missing_keys():
    d = mlp().to_dict()
    with pytest.raises(ModelConfigError, match="unknown key"):
        ModelConfig.from_dict({**d, "lr": 0.1})
    with pytest.raises(ModelConfigError, match=r"config\.cuts: required key is missing"):
        ModelConfig.from_dict({k: v for k, v in d.items() if k != "cuts"})
    bad_layer = {**d, "layers": [{**d["layers"][0], "units_": 3}, *d["layers"][1:]]}
    with pytest.raises(ModelConfigError, match=r"layers\[0\]\.units_"):
        ModelConfig.from_dict(bad_layer)


def test_from_dict_fills_optional_fields_with_defaults():
    d = {"input_shape": [10], "layers": [{"kind": "dense", "units": 4}] * 3, "cuts": [1, 2]}
    assert ModelConfig.from_dict(d) == ModelConfig(
        input_shape=(10,), layers=(LayerSpec("dense", 4),) * 3, cuts=(1, 2)
    )


@given(n_layers=st.integers(3, 8), data=st.data())
def test_any_valid_cut_gives_three_nonempty_partitions(n_layers, data):
    c1 = data.draw(st.integers(1, n_layers - 2))
    c2 = data.draw(st.integers(c1 + 1, n_layers - 1))
    units = data.draw(st.lists(st.integers(1, 64), min_size=n_layers, max_size=n_layers))
    config = ModelConfig(
        input_shape=(5,), layers=tuple(LayerSpec("dense", u) for u in units), cuts=(c1, c2)
    )
    parts = [config.partition_layers(i) for i in range(3)]
    assert all(parts)
    assert sum(parts, ()) == config.layers
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_importing_the_config_does_not_need_tensorflow():
    code = (
        "import sys, models.model_config; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True)
