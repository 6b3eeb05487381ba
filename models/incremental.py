"""A station's incremental round: global weights in, locally trained weights and metrics out.

The station trains the whole partitioned model on the sessions stored since its last round
(store ``seq`` > watermark) plus a bounded, seeded replay sample of older ones, so a round
adapts to recent sessions without forgetting the rest. Every exit is measured on new sessions
held out from training, before and after, so the station can log what the round changed.
A wall-clock budget keeps a round from starving the station's serving work.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd

from models.metrics import ExitMetrics, exit_metrics
from models.model_config import PARTITIONS, ModelConfig
from models.normalization import Normalization
from models.partitioned import ShapeMismatch, exit_targets, set_weights, weights_of
from models.preprocessing import Preprocessing
from models.training import new_model, predict


class IncrementalSettingsError(ValueError):
    """An incremental-training setting out of range; the message names the field."""


class BadFrame(ValueError):
    """The session frame lacks the store's ``seq`` column, or ``eligible`` does not fit it."""


class IncompatibleModel(ValueError):
    """The model config's input shape is not what the preprocessing produces."""


class NotEnoughData(ValueError):
    """Too few new usable sessions since the watermark to train and validate a round."""


class TrainingDiverged(RuntimeError):
    """Training produced non-finite weights; they must not be sent to the coordinator."""


@dataclass(frozen=True)
class IncrementalSettings:
    epochs: int = 5
    batch_size: int = 64
    time_budget_s: float = 60.0  # checked at each epoch end: a round runs at least one epoch
    replay_ratio: float = 1.0  # replay rows per new row
    replay_max: int = 2000
    validation_share: float = 0.2  # of the new rows, held out for the before/after metrics
    min_validation: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> IncrementalSettingsError:
            return IncrementalSettingsError(f"{name}={getattr(self, name)!r}: {rule}")

        for name, low in (("epochs", 1), ("batch_size", 1), ("min_validation", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise bad(name, f"must be an int >= {low}")
        for name in ("replay_max", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(name, "must be an int >= 0")
        if not (math.isfinite(self.time_budget_s) and self.time_budget_s > 0):
            raise bad("time_budget_s", "must be a finite number > 0")
        if not (math.isfinite(self.replay_ratio) and self.replay_ratio >= 0):
            raise bad("replay_ratio", "must be a finite number >= 0")
        if not 0.0 <= self.validation_share < 1.0:
            raise bad("validation_share", "must satisfy 0 <= share < 1")


@dataclass(frozen=True, eq=False)
class RoundResult:
    weights: list[np.ndarray]  # same order, shapes and dtypes as the global weights
    sample_count: int  # rows trained on: new_rows + replay_rows
    new_rows: int  # new rows trained on (the held-out ones excluded)
    replay_rows: int
    validation_rows: int  # new rows held out for the metrics
    metrics_before: tuple[ExitMetrics, ...]  # edge, fog, cloud on the held-out rows
    metrics_after: tuple[ExitMetrics, ...]
    train_seconds: float
    epochs_run: int
    new_watermark: int  # the next round's new rows have seq > this

    def summary(self) -> str:
        before, after = self.metrics_before[-1], self.metrics_after[-1]
        return (
            f"trained {self.sample_count} rows ({self.new_rows} new + {self.replay_rows} replay)"
            f" for {self.epochs_run} epochs in {self.train_seconds:.1f} s; cloud MAE"
            f" {before.mae:.3f} -> {after.mae:.3f} on {self.validation_rows} held-out rows;"
            f" watermark {self.new_watermark}"
        )


def select_rows(
    seqs: np.ndarray, watermark: int, settings: IncrementalSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the new rows (seq > watermark) and of a seeded uniform replay sample of the
    older rows, min(ceil(replay_ratio * new), replay_max, older available) of them; both sorted."""
    seqs = np.asarray(seqs)
    new = np.flatnonzero(seqs > watermark)
    old = np.flatnonzero(seqs <= watermark)
    wanted = math.ceil(settings.replay_ratio * len(new) - 1e-9)  # 0.1 * 30 is 3, not 4
    n = min(wanted, settings.replay_max, len(old))
    replay = np.random.default_rng(settings.seed).choice(old, size=n, replace=False)
    return new.astype(np.int64), np.sort(replay).astype(np.int64)


def hold_out(new_idx: np.ndarray, settings: IncrementalSettings) -> tuple[np.ndarray, np.ndarray]:
    """Split the new rows into (train, validation): a seeded share, at least min_validation."""
    n = len(new_idx)
    n_val = max(round(settings.validation_share * n), settings.min_validation)
    if n - n_val < 1:
        raise NotEnoughData(
            f"only {n} new usable sessions: a round holds out {n_val} for validation "
            "and needs at least one more to train on"
        )
    order = np.random.default_rng((settings.seed, 1)).permutation(n)
    return np.sort(new_idx[order[n_val:]]), np.sort(new_idx[order[:n_val]])


def conform_weights(
    reference: Sequence[np.ndarray], trained: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """``trained`` cast to the reference's dtypes, after checking shapes and finiteness."""
    if len(trained) != len(reference):
        raise ShapeMismatch(
            f"trained: {len(trained)} arrays, the global weights have {len(reference)}"
        )
    out = []
    for i, (ref, arr) in enumerate(zip(reference, trained, strict=True)):
        ref, arr = np.asarray(ref), np.asarray(arr)
        if arr.shape != ref.shape:
            raise ShapeMismatch(f"trained[{i}]: shape {arr.shape}, global weight {ref.shape}")
        if not np.isfinite(arr).all():
            already = " (already in the global weights)" if not np.isfinite(ref).all() else ""
            raise TrainingDiverged(f"weights[{i}] {arr.shape}: NaN or inf after training{already}")
        out.append(arr.astype(ref.dtype, copy=True))
    return out


class TimeBudget(keras.callbacks.Callback):
    """Stops training at the first epoch end past ``seconds`` (weights stay those of that epoch)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.started = 0.0
        self.exceeded = False

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if time.monotonic() - self.started >= self.seconds:
            self.exceeded = True
            self.model.stop_training = True


def per_exit_metrics(
    model: keras.Model, x: np.ndarray, y: np.ndarray, norm: Normalization
) -> tuple[ExitMetrics, ...]:
    """Edge, fog and cloud metrics in target units."""
    mean, std = predict(model, x, norm)
    return tuple(exit_metrics(y, mean[:, k], std[:, k]) for k in range(len(PARTITIONS)))


def _row_flags(frame: pd.DataFrame, eligible: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if "seq" not in frame.columns:
        raise BadFrame("the session frame needs the store's int 'seq' column")
    try:
        seq = frame["seq"].to_numpy(np.int64)
    except (TypeError, ValueError) as exc:
        raise BadFrame(f"column 'seq' must hold integers without gaps: {exc}") from exc
    if eligible is None:
        return seq, np.ones(len(frame), dtype=bool)
    considered = np.asarray(eligible)
    if considered.dtype != bool or considered.shape != (len(frame),):
        raise BadFrame(
            f"eligible: a bool mask of shape ({len(frame)},) is needed, "
            f"got {considered.dtype} {considered.shape}"
        )
    return seq, considered


def train_round(
    config: ModelConfig,
    preprocessing: Preprocessing,
    weights: Sequence[np.ndarray],
    frame: pd.DataFrame,
    watermark: int,
    settings: IncrementalSettings | None = None,
    *,
    eligible: np.ndarray | None = None,
) -> RoundResult:
    """Train the whole model from ``weights`` on the frame's new rows plus replay.

    ``frame`` holds the station's sessions with the store's ``seq`` column, older ones
    included (replay candidates and LSTM history). ``eligible`` (bool per frame row, e.g. the
    round's time window) limits the rows trained and validated on; history still uses every
    row. Rows considered but not usable (no target, no history) are skipped for good: the new
    watermark is the largest seq considered. Raises NotEnoughData, BadFrame, IncompatibleModel
    or ShapeMismatch before training, TrainingDiverged after it.
    """
    settings = settings or IncrementalSettings()
    if tuple(config.input_shape) != preprocessing.input_shape:
        raise IncompatibleModel(
            f"config.input_shape={tuple(config.input_shape)}: the preprocessing produces "
            f"{preprocessing.input_shape}"
        )
    seq, considered = _row_flags(frame, eligible)
    new_watermark = max(watermark, int(seq[considered].max())) if considered.any() else watermark
    encoded = preprocessing.encode(frame)
    keep = considered[encoded.rows]
    x, y, seqs = encoded.x[keep], encoded.y[keep], seq[encoded.rows][keep]
    new_idx, replay_idx = select_rows(seqs, watermark, settings)
    if not len(new_idx):
        stored = int((considered & (seq > watermark)).sum())
        raise NotEnoughData(
            f"no new usable sessions after watermark {watermark} "
            f"({stored} new sessions considered, none encodable)"
        )
    train_new, val = hold_out(new_idx, settings)
    train = np.concatenate([train_new, replay_idx])

    norm = preprocessing.normalization
    model = new_model(config, settings.seed)
    set_weights(model, weights)
    before = per_exit_metrics(model, x[val], y[val], norm)
    keras.utils.set_random_seed(settings.seed)
    started = time.monotonic()
    # models.training.fit's loop, plus the time budget (fit takes no extra callbacks).
    history = model.fit(
        x[train],
        exit_targets(norm.transform_y(y[train])),
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        callbacks=[TimeBudget(settings.time_budget_s)],
        verbose=0,
        shuffle=True,
    )
    seconds = time.monotonic() - started
    trained = conform_weights(weights, weights_of(model))
    after = per_exit_metrics(model, x[val], y[val], norm)
    return RoundResult(
        weights=trained,
        sample_count=len(train),
        new_rows=len(train_new),
        replay_rows=len(replay_idx),
        validation_rows=len(val),
        metrics_before=before,
        metrics_after=after,
        train_seconds=seconds,
        epochs_run=len(history.epoch),
        new_watermark=new_watermark,
    )
