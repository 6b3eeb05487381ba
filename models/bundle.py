"""A trained model on disk: weights, config, encoder, normalisation, metrics, parity inputs.

Weights are stored as ``.weights.h5`` and the model is rebuilt from its config (no pickled or
lambda-bearing graph to trust); the parity inputs are real test rows saved with
``numpy.save`` (loaded with ``allow_pickle=False``) so an export can check itself later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from models.model_config import ModelConfig
from models.normalization import Normalization
from models.partitioned import build_model, compile_model

WEIGHTS = "model.weights.h5"
META = "bundle.json"
PARITY = "parity_inputs.npy"


class BundleError(Exception):
    """A model directory is missing a file or holds something unreadable."""


@dataclass(frozen=True)
class Bundle:
    model: keras.Model
    config: ModelConfig
    normalization: Normalization
    encoder: dict
    metadata: dict  # use case, metrics, exit policy, feature names
    parity_inputs: np.ndarray


def save_bundle(
    directory: Path,
    model: keras.Model,
    config: ModelConfig,
    normalization: Normalization,
    encoder: dict,
    metadata: dict,
    parity_inputs: np.ndarray,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_weights(directory / WEIGHTS)
    np.save(directory / PARITY, np.asarray(parity_inputs, np.float32), allow_pickle=False)
    meta = {
        "format_version": 1,
        "config": config.to_dict(),
        "normalization": normalization.to_dict(),
        "encoder": encoder,
        "metadata": metadata,
    }
    tmp = directory / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(directory / META)  # written last: a bundle with a bundle.json is complete
    return directory


def load_bundle(directory: Path) -> Bundle:
    for name in (META, WEIGHTS, PARITY):
        if not (directory / name).is_file():
            raise BundleError(f"{directory / name}: missing (is {directory} a trained model?)")
    try:
        meta = json.loads((directory / META).read_text())
        config = ModelConfig.from_dict(meta["config"])
        normalization = Normalization.from_dict(meta["normalization"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{directory / META}: unreadable ({exc})") from exc
    model = build_model(config)
    model.load_weights(directory / WEIGHTS)  # before compiling: the optimizer state is not ours
    compile_model(model, config)
    parity = np.load(directory / PARITY, allow_pickle=False)
    return Bundle(model, config, normalization, meta["encoder"], meta["metadata"], parity)
