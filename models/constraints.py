"""Can a station's sessions train this model version? If not, exactly why.

Kafka-ML accepts a data source only when its JSON description equals the model's, so a
mismatch says nothing about what to fix. Here the coordinator states what a round needs
(``DataConstraints``) and each station checks its own sessions against it, reporting the first
failed check as a sentence an operator can act on. Pure numpy/pandas, and it never raises on
odd session data: it reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from models.features import FeatureError, TabularEncoder, category_strings, target_values
from models.preprocessing import Encoded, Preprocessing
from models.sequences import SequenceEncoder

FEATURE_DTYPE = "float32"  # what both encoders produce
MAX_NAMED_STATIONS = 3
# What odd session data (missing columns, wrong dtypes, bad encodings) can raise while checked.
_DATA_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError)


class ConstraintsError(ValueError):
    """Constraints that cannot be met by any data (bad window, min_samples), or a bad dict."""


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]  # per sample: () for a tabular feature, (k,) along an LSTM window

    def describe(self) -> str:
        return f"{self.dtype} shape {self.shape}"


def _utc(t: datetime) -> pd.Timestamp:
    """Naive datetimes are taken as UTC."""
    ts = pd.Timestamp(t)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


@dataclass(frozen=True)
class DataConstraints:
    """What a round needs from a station's sessions; the window bounds the plug-in time."""

    features: tuple[FeatureSpec, ...]
    target: str
    min_samples: int
    window_start: datetime | None = None  # inclusive
    window_end: datetime | None = None  # exclusive

    def __post_init__(self) -> None:
        if isinstance(self.features, list):
            object.__setattr__(self, "features", tuple(self.features))
        m = self.min_samples
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise ConstraintsError(f"min_samples={m!r}: must be an int >= 0")
        for name in ("window_start", "window_end"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, datetime):
                raise ConstraintsError(f"{name}={value!r}: must be a datetime or None")
        start, end = self.window_start, self.window_end
        if start is not None and end is not None and _utc(start) >= _utc(end):
            raise ConstraintsError(f"window {window_text(self)}: start must be before end")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe; times as ISO 8601 strings."""
        return {
            "features": [
                {"name": f.name, "dtype": f.dtype, "shape": list(f.shape)} for f in self.features
            ],
            "target": self.target,
            "min_samples": self.min_samples,
            "window_start": None if self.window_start is None else self.window_start.isoformat(),
            "window_end": None if self.window_end is None else self.window_end.isoformat(),
        }

    @classmethod
    def from_dict(cls, d: object) -> DataConstraints:
        if not isinstance(d, dict):
            raise ConstraintsError(f"constraints={d!r}: must be a dict")
        try:
            features = tuple(
                FeatureSpec(str(f["name"]), str(f["dtype"]), tuple(int(s) for s in f["shape"]))
                for f in d["features"]
            )
            window = [
                None if d.get(k) is None else datetime.fromisoformat(d[k])
                for k in ("window_start", "window_end")
            ]
            return cls(features, str(d["target"]), d["min_samples"], window[0], window[1])
        except ConstraintsError:
            raise
        except KeyError as exc:
            raise ConstraintsError(f"constraints.{exc.args[0]}: required key is missing") from exc
        except (TypeError, ValueError) as exc:
            raise ConstraintsError(f"constraints unreadable: {exc}") from exc


@dataclass(frozen=True)
class Compatibility:
    ok: bool
    reason: str
    usable_rows: int  # new encodable rows inside the window: what the round would learn from


def feature_specs(preprocessing: Preprocessing) -> tuple[FeatureSpec, ...]:
    """One spec per encoder feature; LSTM features carry the window length as their shape."""
    shape = preprocessing.input_shape[:-1]
    return tuple(FeatureSpec(n, FEATURE_DTYPE, shape) for n in preprocessing.feature_names)


def constraints_for(
    preprocessing: Preprocessing,
    min_samples: int,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
) -> DataConstraints:
    """The constraints a round of a model version with this preprocessing announces."""
    return DataConstraints(
        feature_specs(preprocessing), preprocessing.target, min_samples, window_start, window_end
    )


def window_text(constraints: DataConstraints) -> str:
    """Like 2019-01-01..2019-02-01 (dates when at midnight); an open end is left blank."""

    def fmt(t: datetime | None) -> str:
        if t is None:
            return ""
        ts = pd.Timestamp(t)
        return ts.date().isoformat() if ts == ts.normalize() else ts.isoformat()

    return f"{fmt(constraints.window_start)}..{fmt(constraints.window_end)}"


def window_mask(constraints: DataConstraints, frame: pd.DataFrame) -> np.ndarray:
    """Rows whose plug-in time lies in [window_start, window_end); naive times are UTC."""
    mask = np.ones(len(frame), dtype=bool)
    if constraints.window_start is None and constraints.window_end is None:
        return mask
    start = pd.to_datetime(frame["start"], utc=True)
    if constraints.window_start is not None:
        mask &= (start >= _utc(constraints.window_start)).to_numpy(dtype=bool)
    if constraints.window_end is not None:
        mask &= (start < _utc(constraints.window_end)).to_numpy(dtype=bool)
    return mask


def check_compatibility(
    constraints: DataConstraints,
    preprocessing: Preprocessing,
    encoded: Encoded | None,
    frame: pd.DataFrame,
    *,
    watermark: int | None = None,
) -> Compatibility:
    """Check, in this order, and report the first failure:

    1. target: the same as the model's, and computable from the local sessions;
    2. feature schema: the preprocessing produces the features the model expects;
    3. encoding: ``encoded`` (or, when None, ``preprocessing.encode(frame)``) fits both;
    4. new rows: with a ``watermark``, the frame has the store's ``seq`` column;
    5. window: some sessions start inside it;
    6. station vocabulary: tabular station one-hots know every station that would train;
    7. enough new usable rows (seq > watermark, inside the window): at least min_samples, 1.
    """
    try:
        return _check(constraints, preprocessing, encoded, frame, watermark)
    except _DATA_ERRORS as exc:
        return _fail(f"local sessions unreadable ({type(exc).__name__}: {exc})")


def _fail(reason: str) -> Compatibility:
    return Compatibility(False, reason, 0)


def _check(
    constraints: DataConstraints,
    preprocessing: Preprocessing,
    encoded: Encoded | None,
    frame: pd.DataFrame,
    watermark: int | None,
) -> Compatibility:
    reason = _target_problem(constraints.target, preprocessing, frame)
    reason = reason or _schema_problem(constraints.features, feature_specs(preprocessing))
    if reason:
        return _fail(reason)
    if encoded is None:
        try:
            encoded = preprocessing.encode(frame)
        except _DATA_ERRORS as exc:
            return _fail(f"local sessions cannot be encoded ({type(exc).__name__}: {exc})")
    reason = _encoded_problem(encoded, preprocessing, len(frame))
    if reason:
        return _fail(reason)
    if watermark is None:
        new = np.ones(len(frame), dtype=bool)
    elif "seq" not in frame.columns:
        return _fail(
            f"sessions carry no 'seq' column, so rows after watermark {watermark} "
            "cannot be told from older ones"
        )
    else:
        seq = pd.to_numeric(frame["seq"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
        if np.isnan(seq).any():
            return _fail(f"column 'seq' holds {int(np.isnan(seq).sum())} non-numeric values")
        new = seq > watermark
    in_window = window_mask(constraints, frame)
    windowed = constraints.window_start is not None or constraints.window_end is not None
    if windowed and not in_window.any():
        return _fail(f"no sessions inside the window {window_text(constraints)}")
    usable = np.zeros(len(frame), dtype=bool)
    usable[encoded.rows] = True
    candidates = usable & in_window
    reason = _vocabulary_problem(preprocessing, frame, candidates)
    if reason:
        return _fail(reason)
    n_new = int((candidates & new).sum())
    n_old = int((candidates & ~new).sum())
    needed = max(constraints.min_samples, 1)
    if n_new < needed:
        inside = f" inside the window {window_text(constraints)}" if windowed else ""
        stored = int((in_window & new).sum())
        detail = ""
        if stored > n_new:
            why = "lack a target value"
            if isinstance(preprocessing.fitted_encoder, SequenceEncoder):
                k = preprocessing.fitted_encoder.k
                why += f" or {k} earlier ended sessions at their station"
            detail = f" ({stored} new sessions stored; {stored - n_new} {why})"
        reason = f"only {n_new} new usable sessions{inside}, round needs {needed}{detail}"
        return Compatibility(False, reason, n_new)
    return Compatibility(True, f"compatible: {n_new} new rows (+{n_old} older for replay)", n_new)


def _target_problem(target: str, preprocessing: Preprocessing, frame: pd.DataFrame) -> str | None:
    if preprocessing.target != target:
        return (
            f"target differs: the model predicts {target!r}, "
            f"the preprocessing encodes {preprocessing.target!r}"
        )
    lead = f"target {target!r} not computable from local sessions"
    try:
        y = target_values(frame, target)
    except KeyError as exc:
        return f"{lead} (no column {exc.args[0]!r})"
    except FeatureError as exc:
        return f"{lead} ({str(exc).split(': ', 1)[-1]})"
    except _DATA_ERRORS as exc:
        return f"{lead} ({type(exc).__name__}: {exc})"
    if len(y) and not np.isfinite(y).any():
        return f"{lead} (all {len(y)} values missing)"
    return None


def _schema_problem(
    expected: tuple[FeatureSpec, ...], actual: tuple[FeatureSpec, ...]
) -> str | None:
    lead = "feature schema differs:"
    if len(expected) != len(actual):

        def ending(specs: tuple[FeatureSpec, ...]) -> str:
            return f" ending with {specs[-1].name!r}" if specs else ""

        return (
            f"{lead} model expects {len(expected)} features{ending(expected)}, "
            f"preprocessing produces {len(actual)}{ending(actual)}"
        )
    for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
        if e.name != a.name:
            return f"{lead} feature {i} is {e.name!r} in the model, {a.name!r} in the preprocessing"
        if (e.dtype, tuple(e.shape)) != (a.dtype, tuple(a.shape)):
            return (
                f"{lead} feature {e.name!r} is {e.describe()} in the model, "
                f"{a.describe()} in the preprocessing"
            )
    return None


def _encoded_problem(encoded: Encoded, preprocessing: Preprocessing, n_frame: int) -> str | None:
    x, y, rows = np.asarray(encoded.x), np.asarray(encoded.y), np.asarray(encoded.rows)
    n = len(rows)
    want = (n, *preprocessing.input_shape)
    if x.shape != want or y.shape != (n,) or not np.issubdtype(rows.dtype, np.integer):
        return (
            f"encoded rows do not fit the preprocessing: x {x.shape}, y {y.shape}, "
            f"rows {rows.dtype}; expected x {want}, y ({n},), integer rows"
        )
    if n and (rows.min() < 0 or rows.max() >= n_frame):
        return f"encoded rows point outside the {n_frame} local sessions"
    return None


def _vocabulary_problem(
    preprocessing: Preprocessing, frame: pd.DataFrame, candidates: np.ndarray
) -> str | None:
    enc = preprocessing.fitted_encoder
    if not isinstance(enc, TabularEncoder) or not enc.stations or not candidates.any():
        return None
    local = set(category_strings(frame["station_id"])[candidates])
    unknown = sorted(local - set(enc.stations))
    if not unknown:
        return None
    named = ", ".join(repr(s) for s in unknown[:MAX_NAMED_STATIONS])
    more = len(unknown) - MAX_NAMED_STATIONS
    if more > 0:
        named += f" (+{more} more)"
    which, whose = ("station", "its") if len(unknown) == 1 else ("stations", "their")
    return (
        f"{which} {named} not in the model's station vocabulary "
        f"({whose} rows would encode as all-zero station one-hots)"
    )
