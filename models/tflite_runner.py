"""Serving one TFLite partition to concurrent single requests (numpy + ai_edge_litert only).

An interpreter is not thread-safe, so the runner keeps a small pool of them over the same model
bytes; a request borrows one, runs, and gives it back. The vehicle agent uses this too, so it
must never import TensorFlow or Keras.
"""

from __future__ import annotations

import queue
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


class TfliteModelError(ValueError):
    """The model bytes are not a usable single-signature, single-input TFLite model."""


class BadPartitionInput(ValueError):
    """A request's tensor does not fit the partition's input (shape), or holds NaN/Inf."""


@dataclass(frozen=True)
class _Signature:
    input_name: str
    input_shape: tuple[int, ...]
    input_dtype: np.dtype
    output_names: tuple[str, ...]


def _open(model: bytes) -> tuple[Any, _Signature]:
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_content=model)
        signatures = interpreter.get_signature_list()
    except (ValueError, RuntimeError) as exc:
        raise TfliteModelError(f"not a TFLite model: {exc}") from exc
    if len(signatures) != 1:
        raise TfliteModelError(f"expected exactly one signature, found {sorted(signatures)}")
    key = next(iter(signatures))
    runner = interpreter.get_signature_runner(key)
    inputs = runner.get_input_details()
    if len(inputs) != 1:
        raise TfliteModelError(f"expected one input, found {sorted(inputs)}")
    name, details = next(iter(inputs.items()))
    signature = _Signature(
        name,
        tuple(int(s) for s in details["shape"]),
        np.dtype(details["dtype"]),
        tuple(sorted(runner.get_output_details())),
    )
    return runner, signature


class TfliteRunner:
    def __init__(self, model: bytes, workers: int = 4) -> None:
        if workers < 1:
            raise ValueError(f"workers: {workers} must be >= 1")
        first, self.signature = _open(model)
        self.size = len(model)
        self._pool: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pool.put(first)
        for _ in range(workers - 1):
            self._pool.put(_open(model)[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.signature.input_shape

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.signature.output_names

    def run(self, x: np.ndarray) -> Mapping[str, np.ndarray]:
        """One request; ``x`` must have the partition's exact input shape (batch 1)."""
        want = self.signature.input_shape
        if tuple(x.shape) != want:
            raise BadPartitionInput(f"input shape {tuple(x.shape)} does not match {want}")
        if not np.all(np.isfinite(x)):
            raise BadPartitionInput("input holds NaN or Inf")
        runner = self._pool.get()
        try:
            out = runner(**{self.signature.input_name: x.astype(self.signature.input_dtype)})
            return {name: np.array(value, copy=True) for name, value in out.items()}
        finally:
            self._pool.put(runner)
