"""Loss and metric for exits that predict a Gaussian: y_pred[:, 0] = mean, y_pred[:, 1] = log var.

Registered under package "evfl" so a saved .keras model (with its compile config) loads back.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

LOG_VAR_MIN = -10.0
LOG_VAR_MAX = 10.0


def _split(y_true: Any, y_pred: Any) -> tuple[Any, Any, Any]:
    """Flatten y_true from (batch,) or (batch, 1) and split y_pred into mean and clipped log var."""
    y_true = ops.reshape(ops.cast(y_true, y_pred.dtype), (-1,))
    mean = y_pred[:, 0]
    log_var = ops.clip(y_pred[:, 1], LOG_VAR_MIN, LOG_VAR_MAX)
    return y_true, mean, log_var


@keras.saving.register_keras_serializable(package="evfl")
class BetaNLL(keras.losses.Loss):
    """beta-NLL (Seitzer et al. 2022): Gaussian NLL weighted per sample by stop_grad(var)**beta.

    beta=0 is the plain Gaussian NLL, which lets the network explain hard samples away with a
    large variance; beta=0.5 keeps the mean's gradient from vanishing there. The constant
    0.5*log(2*pi) is omitted.
    """

    def __init__(
        self,
        beta: float = 0.5,
        name: str = "beta_nll",
        reduction: str = "sum_over_batch_size",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.beta = float(beta)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true, mean, log_var = _split(y_true, y_pred)
        nll = 0.5 * (log_var + ops.square(y_true - mean) * ops.exp(-log_var))
        if self.beta == 0.0:
            return nll
        weight = ops.stop_gradient(ops.exp(self.beta * log_var))
        return weight * nll

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta": self.beta}


@keras.saving.register_keras_serializable(package="evfl")
def mean_mse(y_true: Any, y_pred: Any) -> Any:
    """Per-sample squared error of the predicted mean only (ignores the variance)."""
    y_true, mean, _ = _split(y_true, y_pred)
    return ops.square(y_true - mean)
