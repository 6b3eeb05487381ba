"""Feature and target standardisation fitted on training data only; travels with the model.

Kept in numpy (no TensorFlow) because the vehicle agent applies it before the edge partition
and turns the exit's normalised (mean, log-variance) back into kWh or hours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_STD = 1e-6
LOG_VAR_CLIP = 10.0


@dataclass(frozen=True)
class Normalization:
    x_mean: np.ndarray  # per feature (last axis)
    x_std: np.ndarray
    y_mean: float
    y_std: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, scaled: np.ndarray | None = None) -> Normalization:
        """``scaled``: mask of features to standardise (one-hot columns stay as they are)."""
        flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
        mean, std = flat.mean(axis=0), flat.std(axis=0)
        if scaled is not None:
            mean = np.where(scaled, mean, 0.0)
            std = np.where(scaled, std, 1.0)
        std = np.maximum(std, MIN_STD)
        y_std = max(float(np.std(y)), MIN_STD)
        return cls(mean.astype(np.float32), std.astype(np.float32), float(np.mean(y)), y_std)

    def transform_x(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.x_mean) / self.x_std).astype(np.float32)

    def transform_y(self, y: np.ndarray) -> np.ndarray:
        return ((y - self.y_mean) / self.y_std).astype(np.float32)

    def inverse(self, exit_output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(..., 2) normalised [mean, log-variance] -> (mean, std) in target units."""
        mu = exit_output[..., 0] * self.y_std + self.y_mean
        log_var = np.clip(exit_output[..., 1], -LOG_VAR_CLIP, LOG_VAR_CLIP)
        return mu.astype(np.float64), (np.exp(0.5 * log_var) * self.y_std).astype(np.float64)

    def to_dict(self) -> dict:
        return {
            "x_mean": self.x_mean.tolist(),
            "x_std": self.x_std.tolist(),
            "y_mean": self.y_mean,
            "y_std": self.y_std,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        return cls(
            np.asarray(d["x_mean"], dtype=np.float32),
            np.asarray(d["x_std"], dtype=np.float32),
            float(d["y_mean"]),
            float(d["y_std"]),
        )
