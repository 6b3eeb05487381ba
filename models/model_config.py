"""Architecture of a partitioned early-exit network, as plain data.

Pure Python on purpose: the vehicle agent reads the exported manifest's config without
TensorFlow installed, so nothing here may import tensorflow or keras.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, Literal

PARTITIONS: tuple[str, str, str] = ("edge", "fog", "cloud")
LAYER_KINDS: tuple[str, str] = ("dense", "lstm")


class ModelConfigError(ValueError):
    """A model config field is invalid; the message names the field."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class LayerSpec:
    """One hidden layer; dropout is applied right after it during training."""

    kind: Literal["dense", "lstm"]
    units: int
    activation: str = "tanh"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, where: str = "layer") -> None:
        if self.kind not in LAYER_KINDS:
            raise ModelConfigError(f"{where}.kind={self.kind!r}: must be one of {LAYER_KINDS}")
        if not _is_int(self.units) or self.units <= 0:
            raise ModelConfigError(f"{where}.units={self.units!r}: must be a positive int")
        if not isinstance(self.activation, str) or not self.activation:
            raise ModelConfigError(
                f"{where}.activation={self.activation!r}: must be a non-empty string"
            )
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ModelConfigError(
                f"{where}.dropout={self.dropout!r}: must satisfy 0 <= dropout < 1"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "layer") -> LayerSpec:
        return cls(**_checked_kwargs(cls, d, where))


@dataclass(frozen=True)
class ModelConfig:
    """Whole-network architecture; cuts split ``layers`` into edge, fog and cloud partitions.

    edge = layers[:c1], fog = layers[c1:c2], cloud = layers[c2:]; every partition ends in an
    exit head predicting [mean, log_variance] of the normalised target.
    """

    input_shape: tuple[int, ...]
    layers: tuple[LayerSpec, ...]
    cuts: tuple[int, int]
    exit_hidden_units: int = 0
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    beta: float = 0.5
    learning_rate: float = 0.01

    def __post_init__(self) -> None:
        # Accept lists (e.g. straight from JSON) but store tuples so the config stays hashable.
        for name in ("input_shape", "layers", "cuts", "loss_weights"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raise ModelConfigError naming the first offending field."""
        shape = self.input_shape
        if not isinstance(shape, tuple) or not shape:
            raise ModelConfigError(f"input_shape={shape!r}: must be a non-empty tuple of ints")
        if not all(_is_int(d) and d > 0 for d in shape):
            raise ModelConfigError(f"input_shape={shape!r}: every dimension must be a positive int")
        if not isinstance(self.layers, tuple) or not self.layers:
            raise ModelConfigError("layers=(): need at least 3 layers (one per partition)")
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, LayerSpec):
                raise ModelConfigError(f"layers[{i}]={layer!r}: must be a LayerSpec")
            layer.validate(f"layers[{i}]")
        n = len(self.layers)
        if n < len(PARTITIONS):
            raise ModelConfigError(f"layers: got {n}, need at least 3 (one per partition)")
        self._validate_cuts(n)
        first = self.layers[0].kind
        want_rank = 2 if first == "lstm" else 1
        if len(shape) != want_rank:
            raise ModelConfigError(
                f"input_shape={shape!r}: a model starting with {first!r} needs rank {want_rank}"
                f" ({'(timesteps, n_features)' if want_rank == 2 else '(n_features,)'})"
            )
        for i in range(1, n):
            if self.layers[i].kind == "lstm" and self.layers[i - 1].kind == "dense":
                raise ModelConfigError(
                    f"layers[{i}].kind='lstm': follows a dense layer, which has no time axis"
                )
        if not _is_int(self.exit_hidden_units) or self.exit_hidden_units < 0:
            raise ModelConfigError(
                f"exit_hidden_units={self.exit_hidden_units!r}: must be an int >= 0"
            )
        lw = self.loss_weights
        if (
            not isinstance(lw, tuple)
            or len(lw) != len(PARTITIONS)
            or not all(_is_number(w) and math.isfinite(w) and w >= 0 for w in lw)
        ):
            raise ModelConfigError(f"loss_weights={lw!r}: must be 3 finite numbers >= 0")
        if not any(w > 0 for w in lw):
            raise ModelConfigError(f"loss_weights={lw!r}: at least one must be > 0")
        if not _is_number(self.beta) or not 0.0 <= self.beta <= 1.0:
            raise ModelConfigError(f"beta={self.beta!r}: must satisfy 0 <= beta <= 1")
        lr = self.learning_rate
        if not _is_number(lr) or not math.isfinite(lr) or lr <= 0:
            raise ModelConfigError(f"learning_rate={lr!r}: must be a finite number > 0")

    def _validate_cuts(self, n: int) -> None:
        cuts = self.cuts
        if not isinstance(cuts, tuple) or len(cuts) != 2 or not all(_is_int(c) for c in cuts):
            raise ModelConfigError(f"cuts={cuts!r}: must be a pair of ints (c1, c2)")
        c1, c2 = cuts
        rule = f"cuts must satisfy 0 < c1 < c2 < {n} layers"
        if c1 < 0 or c2 > n:
            problem = "out of range"
        elif c2 < c1:
            problem = "not increasing"
        elif c1 == 0:
            problem = "the edge partition would be empty"
        elif c2 == c1:
            problem = "the fog partition would be empty"
        elif c2 == n:
            problem = "the cloud partition would be empty"
        else:
            return
        raise ModelConfigError(f"cuts={cuts!r}: {problem} ({rule})")

    def partition_range(self, index: int) -> tuple[int, int]:
        """Global [start, stop) layer indices of partition ``index`` (0 edge, 1 fog, 2 cloud)."""
        if not _is_int(index) or not 0 <= index < len(PARTITIONS):
            raise ModelConfigError(f"index={index!r}: partition index must be 0, 1 or 2")
        bounds = (0, *self.cuts, len(self.layers))
        return bounds[index], bounds[index + 1]

    def partition_layers(self, index: int) -> tuple[LayerSpec, ...]:
        start, stop = self.partition_range(index)
        return self.layers[start:stop]

    def returns_sequence(self, layer_index: int) -> bool:
        """An LSTM keeps the time axis only when the next layer of the whole model is an LSTM."""
        nxt = layer_index + 1
        return (
            self.layers[layer_index].kind == "lstm"
            and nxt < len(self.layers)
            and self.layers[nxt].kind == "lstm"
        )

    def hidden_shape(self, index: int) -> tuple[int, ...]:
        """Per-sample shape of the hidden tensor partition ``index`` hands to the next one."""
        _, stop = self.partition_range(index)
        last = stop - 1
        units = self.layers[last].units
        return (self.input_shape[0], units) if self.returns_sequence(last) else (units,)

    def partition_input_shape(self, index: int) -> tuple[int, ...]:
        return self.input_shape if index == 0 else self.hidden_shape(index - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (lists, not tuples); from_dict(to_dict()) == self."""
        return {
            "input_shape": list(self.input_shape),
            "layers": [layer.to_dict() for layer in self.layers],
            "cuts": list(self.cuts),
            "exit_hidden_units": self.exit_hidden_units,
            "loss_weights": list(self.loss_weights),
            "beta": self.beta,
            "learning_rate": self.learning_rate,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of to_dict; unknown keys and missing required keys are errors."""
        kwargs = _checked_kwargs(cls, d, "config")
        layers = kwargs.get("layers")
        if not isinstance(layers, list | tuple):
            raise ModelConfigError(f"layers={layers!r}: must be a list of layer dicts")
        kwargs["layers"] = tuple(
            LayerSpec.from_dict(layer, f"layers[{i}]") for i, layer in enumerate(layers)
        )
        for name in ("input_shape", "cuts", "loss_weights"):
            if isinstance(kwargs.get(name), list):
                kwargs[name] = tuple(kwargs[name])
        return cls(**kwargs)


def _checked_kwargs(cls: type, d: object, where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ModelConfigError(f"{where}={d!r}: must be a dict")
    known = {f.name for f in fields(cls)}
    required = {
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    }
    unknown = sorted(set(d) - known)
    if unknown:
        raise ModelConfigError(f"{where}.{unknown[0]}: unknown key (known: {sorted(known)})")
    missing = sorted(required - set(d))
    if missing:
        raise ModelConfigError(f"{where}.{missing[0]}: required key is missing")
    return dict(d)
