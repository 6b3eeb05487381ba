"""Build, split and (de)serialise weights of the edge/fog/cloud early-exit network.

The partitioning lives in ModelConfig; one builder (build_partition) makes both the nested
partitions of the training model and the standalone export copies, so they cannot drift.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from models.losses import BetaNLL, mean_mse
from models.model_config import PARTITIONS, ModelConfig

EXIT_OUTPUTS: tuple[str, ...] = tuple(f"{p}_exit" for p in PARTITIONS)


class ShapeMismatch(ValueError):
    """A weight array does not fit the model variable it is meant to replace."""


class PartitionIndexError(IndexError):
    """A partition index outside 0 (edge), 1 (fog), 2 (cloud)."""


def _partition_index(index: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(PARTITIONS):
        raise PartitionIndexError(
            f"index={index!r}: partition index must be 0 (edge), 1 (fog) or 2 (cloud)"
        )
    return index


def build_partition(config: ModelConfig, index: int, batch_size: int | None = None) -> keras.Model:
    """Partition ``index`` as a standalone model named "edge", "fog" or "cloud".

    Edge and fog return [hidden, exit]; cloud returns exit only. Exit = (batch, 2) holding
    [mean, log_variance]. Layer names are deterministic ("fog_lstm_1", "fog_exit_out") and use
    the layer's index in the whole model, so weights can be copied between builds by name.
    """
    name = PARTITIONS[_partition_index(index)]
    start, stop = config.partition_range(index)
    inputs = keras.Input(
        shape=config.partition_input_shape(index), batch_size=batch_size, name=f"{name}_in"
    )
    x = inputs
    for i in range(start, stop):
        spec = config.layers[i]
        if spec.kind == "lstm":
            x = keras.layers.LSTM(
                spec.units,
                activation=spec.activation,
                return_sequences=config.returns_sequence(i),
                name=f"{name}_lstm_{i}",
            )(x)
        else:
            x = keras.layers.Dense(
                spec.units, activation=spec.activation, name=f"{name}_dense_{i}"
            )(x)
        if spec.dropout > 0:
            x = keras.layers.Dropout(spec.dropout, name=f"{name}_dropout_{i}")(x)
    hidden = x = keras.layers.Identity(name=f"{name}_hidden")(x)
    if len(hidden.shape) == 3:
        # Last timestep via builtin slicing layers (no Lambda) so the export converts to TFLite
        # builtins: crop all but the last step, then drop the length-1 time axis.
        steps = hidden.shape[1]
        x = keras.layers.Cropping1D((steps - 1, 0), name=f"{name}_exit_last_step")(x)
        x = keras.layers.Flatten(name=f"{name}_exit_flatten")(x)
    if config.exit_hidden_units > 0:
        x = keras.layers.Dense(
            config.exit_hidden_units, activation="relu", name=f"{name}_exit_hidden"
        )(x)
    exit_out = keras.layers.Dense(2, name=f"{name}_exit_out")(x)
    outputs = exit_out if index == len(PARTITIONS) - 1 else [hidden, exit_out]
    return keras.Model(inputs, outputs, name=name)


def build_model(config: ModelConfig, batch_size: int | None = None) -> keras.Model:
    """Full training model: features -> edge -> fog -> cloud, outputs [edge, fog, cloud] exits.

    The partitions are nested models (layers "edge", "fog", "cloud"); the exits are named
    "edge_exit", "fog_exit", "cloud_exit" via Identity layers so losses/metrics/histories carry
    readable names.
    """
    inputs = keras.Input(shape=config.input_shape, batch_size=batch_size, name="features")
    edge, fog, cloud = (build_partition(config, i, batch_size) for i in range(len(PARTITIONS)))
    h_edge, e_edge = edge(inputs)
    h_fog, e_fog = fog(h_edge)
    e_cloud = cloud(h_fog)
    exits = [
        keras.layers.Identity(name=out_name)(e)
        for out_name, e in zip(EXIT_OUTPUTS, (e_edge, e_fog, e_cloud), strict=True)
    ]
    return keras.Model(inputs, exits, name="early_exit")


def compile_model(model: keras.Model, config: ModelConfig) -> keras.Model:
    """Adam + beta-NLL on every exit, weighted by config.loss_weights; MSE of the mean as metric."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
        loss=[BetaNLL(beta=config.beta) for _ in PARTITIONS],
        loss_weights=list(config.loss_weights),
        metrics=[[mean_mse] for _ in PARTITIONS],
    )
    return model


def exit_targets(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same target for all three exits, in the order model.fit expects."""
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    return (y, y, y)


def _nested(model: keras.Model, index: int) -> keras.Model:
    return model.get_layer(PARTITIONS[_partition_index(index)])


def split(
    model: keras.Model, config: ModelConfig, batch_size: int | None = None
) -> tuple[keras.Model, keras.Model, keras.Model]:
    """Fresh standalone edge, fog and cloud models holding copies of ``model``'s weights.

    Chaining them (edge hidden -> fog, fog hidden -> cloud) reproduces the full model's three
    exits. Use batch_size=1 for a TFLite export copy (LSTMs need a static batch dimension).
    """
    parts = []
    for index in range(len(PARTITIONS)):
        source = _nested(model, index)
        fresh = build_partition(config, index, batch_size)
        for layer in fresh.layers:
            arrays = source.get_layer(layer.name).get_weights()
            if arrays:
                set_weights(layer, arrays)
        parts.append(fresh)
    return parts[0], parts[1], parts[2]


def weights_of(model: keras.Model | keras.layers.Layer) -> list[np.ndarray]:
    """Copies of all weights (trainable and not) in a stable order, for federated averaging."""
    return [np.array(v.numpy(), copy=True) for v in model.weights]


def set_weights(model: keras.Model | keras.layers.Layer, arrays: Sequence[np.ndarray]) -> None:
    """Assign ``arrays`` (as from weights_of) after checking count, shapes and float dtypes.

    Floating arrays of another precision (e.g. float64 from np.average) are cast to the
    variable's dtype; nothing is assigned unless every array fits.
    """
    variables = model.weights
    if len(arrays) != len(variables):
        raise ShapeMismatch(
            f"arrays: got {len(arrays)} arrays, model {model.name!r} has {len(variables)} weights"
        )
    cast = []
    for i, (var, arr) in enumerate(zip(variables, arrays, strict=True)):
        arr = np.asarray(arr)
        want = tuple(var.shape)
        if arr.shape != want:
            raise ShapeMismatch(
                f"arrays[{i}] ({var.path}): shape {arr.shape} does not match {want}"
            )
        var_dtype = np.dtype(var.dtype)
        both_float = np.issubdtype(arr.dtype, np.floating) and np.issubdtype(var_dtype, np.floating)
        if not both_float and arr.dtype != var_dtype:
            raise ShapeMismatch(
                f"arrays[{i}] ({var.path}): dtype {arr.dtype} does not match {var_dtype}"
            )
        cast.append(arr.astype(var_dtype, copy=False))
    for var, arr in zip(variables, cast, strict=True):
        var.assign(arr)


def partition_weights(model: keras.Model, index: int) -> list[np.ndarray]:
    """Weights of one partition (0 edge, 1 fog, 2 cloud) of a model from build_model."""
    return weights_of(_nested(model, index))


def set_partition_weights(model: keras.Model, index: int, arrays: Sequence[np.ndarray]) -> None:
    """Replace one partition's weights, e.g. with a federated average of partition_weights."""
    set_weights(_nested(model, index), arrays)
