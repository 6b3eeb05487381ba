"""What a global model version needs besides its weights: target, fitted encoder, normalisation.

The coordinator fits these once (``preprocessing_from_prepared``) and ships them with every
model version, so each station encodes its own sessions exactly as the coordinator encoded the
training data. Pure numpy/pandas: no TensorFlow, no transport.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from models.features import TARGETS, TabularEncoder, target_values
from models.normalization import Normalization
from models.sequences import SequenceEncoder
from models.use_cases import PreparedData

Encoder = TabularEncoder | SequenceEncoder
ENCODER_KINDS: dict[str, type[TabularEncoder] | type[SequenceEncoder]] = {
    "tabular": TabularEncoder,
    "sequence": SequenceEncoder,
}
_KEYS = ("target", "encoder", "normalization")


class PreprocessingError(ValueError):
    """A preprocessing dict or JSON document that cannot be used; the message names the field."""


def encoder_from_dict(d: object) -> Encoder:
    """The fitted encoder described by ``d`` (as from ``encoder.to_dict()``), by its "kind"."""
    if not isinstance(d, dict):
        raise PreprocessingError(f"encoder={d!r}: must be a dict")
    kind = d.get("kind")
    if kind not in ENCODER_KINDS:
        raise PreprocessingError(f"encoder.kind={kind!r}: must be one of {sorted(ENCODER_KINDS)}")
    try:
        return ENCODER_KINDS[kind].from_dict(d)
    except KeyError as exc:
        raise PreprocessingError(f"encoder.{exc.args[0]}: required key is missing") from exc
    except (TypeError, ValueError) as exc:
        raise PreprocessingError(f"encoder ({kind}): {exc}") from exc


@dataclass(frozen=True, eq=False)
class Encoded:
    """Model-ready rows of a session frame."""

    x: np.ndarray  # normalised float32, (n, features) or (n, k, features)
    y: np.ndarray  # float64, target units
    rows: np.ndarray  # int64 positions into the encoded frame, ascending

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True, eq=False)
class Preprocessing:
    target: str
    encoder: dict  # as from TabularEncoder.to_dict() / SequenceEncoder.to_dict()
    normalization: Normalization

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise PreprocessingError(f"target={self.target!r}: must be one of {TARGETS}")
        enc = self.fitted_encoder
        if isinstance(enc, SequenceEncoder) and enc.target != self.target:
            raise PreprocessingError(
                f"encoder.target={enc.target!r}: the windows' past target must be the "
                f"predicted target {self.target!r}"
            )
        n = len(enc.names)
        for name in ("x_mean", "x_std"):
            arr = getattr(self.normalization, name)
            if arr.shape != (n,) or not np.isfinite(arr).all():
                raise PreprocessingError(
                    f"normalization.{name}: needs {n} finite values (one per encoder feature), "
                    f"got shape {arr.shape}"
                )
        if not (self.normalization.x_std > 0).all():
            raise PreprocessingError("normalization.x_std: every value must be > 0")
        y_mean, y_std = self.normalization.y_mean, self.normalization.y_std
        if not (np.isfinite(y_mean) and np.isfinite(y_std) and y_std > 0):
            raise PreprocessingError(
                f"normalization y_mean={y_mean!r}, y_std={y_std!r}: must be finite, y_std > 0"
            )

    def __eq__(self, other: object) -> bool:
        # Compared by dict form: exact for float32 arrays, and a dataclass __eq__ would compare
        # numpy arrays elementwise. Unhashable (it holds a dict), like the encoder dict itself.
        if not isinstance(other, Preprocessing):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    @cached_property
    def fitted_encoder(self) -> Encoder:
        return encoder_from_dict(self.encoder)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(self.fitted_encoder.names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample model input: (features,) for tabular, (k, features) for sequence."""
        enc = self.fitted_encoder
        n = len(enc.names)
        return (enc.k, n) if isinstance(enc, SequenceEncoder) else (n,)

    def encode(self, frame: pd.DataFrame) -> Encoded:
        """Encode every row of ``frame`` that has a target value and finite features.

        Sessions without a target are dropped before windowing (as ``prepare`` does), so they
        are neither predicted nor used as history. For the sequence encoder a row needs k
        earlier sessions of its station *in the frame*: pass older sessions along with the new
        ones. Raises FeatureError when the frame cannot provide the target at all.
        """
        y_all = target_values(frame, self.target)
        known = np.flatnonzero(np.isfinite(y_all))
        sub = frame.iloc[known]
        enc = self.fitted_encoder
        if isinstance(enc, SequenceEncoder):
            x, sub_rows = enc.transform(sub)
        else:
            x, sub_rows = enc.transform(sub), np.arange(len(sub))
        finite = np.isfinite(x).all(axis=tuple(range(1, x.ndim)))
        x, rows = x[finite], known[sub_rows[finite]].astype(np.int64)
        return Encoded(self.normalization.transform_x(x), y_all[rows], rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "encoder": self.encoder,
            "normalization": self.normalization.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: object) -> Preprocessing:
        """Inverse of to_dict; missing or unknown keys and inconsistent parts are errors."""
        if not isinstance(d, dict):
            raise PreprocessingError(f"preprocessing={d!r}: must be a dict")
        unknown = sorted(set(d) - set(_KEYS))
        if unknown:
            raise PreprocessingError(f"preprocessing.{unknown[0]}: unknown key (known: {_KEYS})")
        missing = [k for k in _KEYS if k not in d]
        if missing:
            raise PreprocessingError(f"preprocessing.{missing[0]}: required key is missing")
        norm = d["normalization"]
        if not isinstance(norm, dict):
            raise PreprocessingError(f"normalization={norm!r}: must be a dict")
        try:
            normalization = Normalization.from_dict(norm)
        except KeyError as exc:
            raise PreprocessingError(
                f"normalization.{exc.args[0]}: required key is missing"
            ) from exc
        except (TypeError, ValueError) as exc:
            raise PreprocessingError(f"normalization: {exc}") from exc
        if normalization.x_mean.ndim != 1 or normalization.x_std.ndim != 1:
            raise PreprocessingError("normalization.x_mean/x_std: must be flat lists of numbers")
        encoder = d["encoder"]
        encoder_from_dict(encoder)  # reject a bad encoder with its own message
        return cls(str(d["target"]), dict(encoder), normalization)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Preprocessing:
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
            raise PreprocessingError(f"preprocessing JSON is unreadable: {exc}") from exc
        return cls.from_dict(d)


def preprocessing_from_prepared(prepared: PreparedData) -> Preprocessing:
    """The preprocessing the coordinator ships with a model trained on ``prepared``."""
    return Preprocessing(prepared.use_case.target, dict(prepared.encoder), prepared.normalization)
