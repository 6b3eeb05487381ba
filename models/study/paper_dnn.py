"""The FEDL paper's DNN in numpy: two hidden layers of 64 tanh, dropout 0.15, Adam 0.01, MSE.

Numpy rather than Keras because the study trains it thousands of times on tiny clients (one
per charging station, every round); a ``model.fit`` call costs more than the arithmetic. The
weights are a plain list of arrays, exactly what ``models.aggregate`` strategies take. The
maths mirrors Keras (Glorot-uniform kernels, zero biases, inverted dropout, Adam with bias
correction and epsilon 1e-7), and a finite-difference test checks the gradients.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

NDArrays = list[np.ndarray]
ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-7


@dataclass(frozen=True)
class DnnSettings:
    """Training knobs; ``epochs`` is the local epochs per round in federated use."""

    hidden: int = 64
    dropout: float = 0.15
    learning_rate: float = 0.01
    batch_size: int = 64
    epochs: int = 20
    steps: int | None = None  # if set: exactly this many mini-batches instead of epochs
    optimizer: str = "adam"  # or "sgd": plain steps, leaving adaptivity to a server optimizer
    final_learning_rate: float | None = None  # if set: cosine decay to it over the call's steps


@dataclass(frozen=True)
class TargetScale:
    """Standardisation of the target: the network learns (y - mean) / std."""

    mean: float
    std: float

    @classmethod
    def fit(cls, y: np.ndarray) -> TargetScale:
        return cls(float(np.mean(y)), max(float(np.std(y)), 1e-6))

    def forward(self, y: np.ndarray) -> np.ndarray:
        return ((np.asarray(y, np.float64) - self.mean) / self.std).astype(np.float32)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z, np.float64) * self.std + self.mean


def init_weights(n_features: int, settings: DnnSettings, seed: int) -> NDArrays:
    """[W1, b1, W2, b2, W3, b3], Glorot-uniform kernels and zero biases as in Keras."""
    rng = np.random.default_rng(seed)
    sizes = (n_features, settings.hidden, settings.hidden, 1)
    weights: NDArrays = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        weights.append(rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32))
        weights.append(np.zeros(fan_out, np.float32))
    return weights


def predict(weights: NDArrays, x: np.ndarray) -> np.ndarray:
    """Standardised predictions, shape (n,); dropout is off at inference."""
    w1, b1, w2, b2, w3, b3 = weights
    h1 = np.tanh(x @ w1 + b1)
    h2 = np.tanh(h1 @ w2 + b2)
    return (h2 @ w3 + b3)[:, 0]


def loss_and_gradients(
    weights: NDArrays, x: np.ndarray, z: np.ndarray, keep: np.ndarray | None = None
) -> tuple[float, NDArrays]:
    """MSE on standardised targets ``z`` and its gradients; ``keep`` is the scaled dropout mask."""
    w1, b1, w2, b2, w3, b3 = weights
    h1 = np.tanh(x @ w1 + b1)
    h2 = np.tanh(h1 @ w2 + b2)
    d = h2 if keep is None else h2 * keep
    err = (d @ w3 + b3)[:, 0] - z
    n = len(z)
    g_out = (2.0 / n) * err[:, None]
    g_w3, g_b3 = d.T @ g_out, g_out.sum(axis=0)
    g_d = g_out @ w3.T
    g_h2 = g_d if keep is None else g_d * keep
    g_a2 = g_h2 * (1.0 - h2 * h2)
    g_w2, g_b2 = h1.T @ g_a2, g_a2.sum(axis=0)
    g_a1 = (g_a2 @ w2.T) * (1.0 - h1 * h1)
    g_w1, g_b1 = x.T @ g_a1, g_a1.sum(axis=0)
    return float(np.mean(err * err)), [g_w1, g_b1, g_w2, g_b2, g_w3, g_b3]


def train(
    weights: NDArrays, x: np.ndarray, z: np.ndarray, settings: DnnSettings, seed: int | list[int]
) -> NDArrays:
    """Shuffled mini-batch Adam (or SGD) from a fresh optimizer; returns new arrays."""
    rng = np.random.default_rng(seed)
    params = [np.array(w, np.float32, copy=True) for w in weights]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1, b2 = ADAM_BETAS
    lr, rate = settings.learning_rate, settings.dropout
    x, z = np.asarray(x, np.float32), np.asarray(z, np.float32)
    step = 0
    total = _total_steps(len(z), settings)
    for rows in _batches(len(z), settings, rng):
        if settings.final_learning_rate is not None:
            lr = cosine(settings.learning_rate, settings.final_learning_rate, step, total)
        keep = None
        if rate > 0:
            mask = rng.random((len(rows), settings.hidden)) >= rate
            keep = mask.astype(np.float32) / np.float32(1.0 - rate)
        _, grads = loss_and_gradients(params, x[rows], z[rows], keep)
        step += 1
        if settings.optimizer == "sgd":
            for p, g in zip(params, grads, strict=True):
                p -= np.float32(lr) * g
            continue
        alpha = lr * np.sqrt(1 - b2**step) / (1 - b1**step)
        for p, g, mi, vi in zip(params, grads, m, v, strict=True):
            mi *= b1
            mi += (1 - b1) * g
            vi *= b2
            vi += (1 - b2) * (g * g)
            p -= (alpha * mi / (np.sqrt(vi) + ADAM_EPSILON)).astype(np.float32)
    return params


def cosine(start: float, end: float, index: int, count: int) -> float:
    """Cosine decay from ``start`` (index 0) to ``end`` (index ``count`` - 1)."""
    if count <= 1:
        return start
    return end + 0.5 * (start - end) * (1.0 + np.cos(np.pi * index / (count - 1)))


def _total_steps(n: int, settings: DnnSettings) -> int:
    if settings.steps is not None:
        return settings.steps
    return settings.epochs * -(-n // settings.batch_size)


def _batches(n: int, settings: DnnSettings, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Shuffled epochs, or exactly ``settings.steps`` batches (cycling through shuffles).

    Fixed steps make every client's update the same length whatever its size, so FedAvg's
    sample weighting alone decides its influence (FedNova's point); with epochs a hub with
    4x the sessions also takes 4x the steps and weighs ~16x.
    """
    size = settings.batch_size
    if settings.steps is None:
        for _ in range(settings.epochs):
            order = rng.permutation(n)
            for start in range(0, n, size):
                yield order[start : start + size]
        return
    done = 0
    while done < settings.steps:
        order = rng.permutation(n)
        for start in range(0, n, size):
            if done == settings.steps:
                return
            yield order[start : start + size]
            done += 1
