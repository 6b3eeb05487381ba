"""Joint training of all exits, prediction in target units, and the per-exit evaluation.

Used as is by the centralized run, and by the station's incremental rounds (``fit`` on new
sessions, starting from the global weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from models.exit_policy import ExitPolicy, calibrate
from models.metrics import ExitMetrics, exit_metrics
from models.model_config import PARTITIONS, ModelConfig
from models.normalization import Normalization
from models.partitioned import build_model, compile_model, exit_targets


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 40
    batch_size: int = 512
    patience: int = 8  # early stopping on validation loss, best weights restored
    seed: int = 0
    verbose: int = 0


@dataclass(frozen=True)
class Evaluation:
    exits: tuple[ExitMetrics, ...]  # edge, fog, cloud
    policy: ExitPolicy
    exit_rates: tuple[float, ...]  # share of test samples answered at each exit under policy
    chain: ExitMetrics  # metrics of the answers the early-exit chain actually gives


def new_model(config: ModelConfig, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return compile_model(build_model(config), config)


def fit(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    norm: Normalization,
    settings: TrainSettings,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> keras.callbacks.History:
    """Train every exit jointly on normalised targets (weighted sum of exit losses)."""
    keras.utils.set_random_seed(settings.seed)
    callbacks = []
    val = None
    if validation is not None:
        val = (validation[0], exit_targets(norm.transform_y(validation[1])))
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=settings.patience, restore_best_weights=True
            )
        )
    return model.fit(
        x,
        exit_targets(norm.transform_y(y)),
        validation_data=val,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        callbacks=callbacks,
        verbose=settings.verbose,
        shuffle=True,
    )


def predict(
    model: keras.Model, x: np.ndarray, norm: Normalization
) -> tuple[np.ndarray, np.ndarray]:
    """Means and stds per exit in target units, each (n, exits)."""
    outputs = model.predict(x, batch_size=1024, verbose=0)
    pairs = [norm.inverse(np.asarray(o)) for o in outputs]
    return np.column_stack([m for m, _ in pairs]), np.column_stack([s for _, s in pairs])


def evaluate(
    model: keras.Model,
    norm: Normalization,
    validation: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    tolerance: float = 0.05,
) -> Evaluation:
    """Per-exit test metrics, plus the exit policy calibrated on validation and its effect."""
    val_mean, val_std = predict(model, validation[0], norm)
    policy = calibrate(validation[1], val_mean, val_std, tolerance)
    mean, std = predict(model, test[0], norm)
    y = test[1]
    exits = tuple(exit_metrics(y, mean[:, k], std[:, k]) for k in range(len(PARTITIONS)))
    chosen = policy.choose(std)
    rows = np.arange(len(y))
    rates = tuple(float(np.mean(chosen == k)) for k in range(len(PARTITIONS)))
    chain = exit_metrics(y, mean[rows, chosen], std[rows, chosen])
    return Evaluation(exits, policy, rates, chain)
