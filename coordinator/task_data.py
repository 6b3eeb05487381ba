"""The coordinator's side of a use case: preprocessing, the model, and held-out data.

Stations keep their sessions; the coordinator keeps a held-out slice (validation for the exit
thresholds, test for every exit's metrics each round), as Kafka-ML's coordinator kept its
evaluation data. The preprocessing (encoder vocabulary and normalisation) is fitted on the
training split and travels with every announcement, so every station encodes identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coordinator.task_spec import TaskSpec
from models.model_config import ModelConfig
from models.preprocessing import Preprocessing, preprocessing_from_prepared

PARITY_ROWS = 8


@dataclass(frozen=True)
class TaskData:
    config: ModelConfig
    preprocessing: Preprocessing
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    parity_inputs: np.ndarray  # real test rows the partitions' self-tests run on
    train_stations: tuple[str, ...]


def load_task_data(spec: TaskSpec) -> TaskData:
    from models.datasets.catalog import load_dataset
    from models.use_cases import UseCase, default_model_config, prepare

    dataset = load_dataset(spec.dataset, spec.dataset_path)
    use_case = UseCase.default(
        spec.dataset,
        spec.target,
        features=spec.features,
        split=spec.split,
        train_ratio=spec.train_ratio,
        seed=spec.seed,
        window=spec.window,
    )
    prepared = prepare(dataset.sessions, use_case)
    config = (
        ModelConfig.from_dict(spec.model)
        if spec.model is not None
        else default_model_config(use_case, prepared.input_shape)
    )
    return TaskData(
        config=config,
        preprocessing=preprocessing_from_prepared(prepared),
        validation=(prepared.x_val, prepared.y_val),
        test=(prepared.x_test, prepared.y_test),
        parity_inputs=prepared.x_test[:PARITY_ROWS],
        train_stations=tuple(sorted(set(prepared.station_train.tolist()))),
    )


@dataclass(frozen=True)
class VersionQuality:
    metrics: dict  # per exit + the chain under the calibrated policy
    thresholds: tuple[float, ...]


def evaluate_weights(data: TaskData, weights: list[np.ndarray], tolerance: float) -> VersionQuality:
    """Every exit on the held-out test set; the exit policy calibrated on validation."""
    from models.model_config import PARTITIONS
    from models.partitioned import build_model, set_weights
    from models.training import evaluate

    model = build_model(data.config)
    set_weights(model, weights)
    ev = evaluate(model, data.preprocessing.normalization, data.validation, data.test, tolerance)
    metrics = {name: m.to_dict() for name, m in zip(PARTITIONS, ev.exits, strict=True)}
    metrics["chain"] = ev.chain.to_dict()
    metrics["exit_rates"] = dict(zip(PARTITIONS, ev.exit_rates, strict=True))
    return VersionQuality(metrics, tuple(ev.policy.thresholds))
