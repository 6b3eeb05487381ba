"""The shapes of aggregation data and the small base class every strategy extends.

A strategy is pure: arrays and sample counts in, arrays and server-optimizer state out. The
coordinator owns I/O (Kafka, the registry); it persists `StrategyState` between rounds with
the tensor codec, which is why the state flattens to named arrays.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np

NDArrays = list[np.ndarray]

STEP_NAME = "step"


class AggregationError(ValueError):
    """The round's results cannot be combined (none, inconsistent shapes, no examples)."""


class StrategyConfigError(ValueError):
    """An unknown strategy name, an unknown parameter or a parameter out of range."""


class StrategyStateError(ValueError):
    """Persisted server-optimizer state that is malformed or belongs to another model."""


@dataclass(frozen=True)
class ClientResult:
    """One client's trained weights for a round, and how many examples it trained on."""

    client_id: str
    weights: NDArrays
    num_examples: int

    def __post_init__(self) -> None:
        if self.num_examples < 0:
            raise AggregationError(
                f"client {self.client_id!r}: num_examples must be >= 0, got {self.num_examples}"
            )


@dataclass(frozen=True)
class StrategyState:
    """Server-optimizer state carried between rounds (e.g. momentum "m", Adam's "v")."""

    step: int = 0
    arrays: dict[str, NDArrays] = field(default_factory=dict)

    def to_named_arrays(self) -> list[tuple[str, np.ndarray]]:
        """Flatten to ("step", 0-d int64), ("m/0", ...), ... for a tensor codec."""
        named = [(STEP_NAME, np.array(self.step, dtype=np.int64))]
        for key in sorted(self.arrays):
            named.extend((f"{key}/{i}", arr) for i, arr in enumerate(self.arrays[key]))
        return named

    @classmethod
    def from_named_arrays(cls, named: Iterable[tuple[str, np.ndarray]]) -> StrategyState:
        """Inverse of `to_named_arrays`; raises `StrategyStateError` on malformed names."""
        step: int | None = None
        indexed: dict[str, dict[int, np.ndarray]] = {}
        for name, arr in named:
            arr = np.asarray(arr)
            if name == STEP_NAME:
                if arr.shape != () or arr.dtype.kind not in "iu":
                    raise StrategyStateError(f"'step' must be a 0-d integer array, got {arr!r}")
                step = int(arr)
                continue
            key, sep, index = name.rpartition("/")
            if not sep or not key or not index.isdigit():
                raise StrategyStateError(f"state array name {name!r} is not '<key>/<index>'")
            if int(index) in indexed.setdefault(key, {}):
                raise StrategyStateError(f"state array {name!r} appears twice")
            indexed[key][int(index)] = arr
        if step is None:
            raise StrategyStateError("state has no 'step' array")
        arrays: dict[str, NDArrays] = {}
        for key, by_index in indexed.items():
            if sorted(by_index) != list(range(len(by_index))):
                raise StrategyStateError(f"state key {key!r} has gaps: {sorted(by_index)}")
            arrays[key] = [by_index[i] for i in range(len(by_index))]
        return cls(step=step, arrays=arrays)


class Strategy(ABC):
    """Combines a round's client results into the next global weights.

    `aggregate` validates the inputs, lets the subclass compute in float64, and casts the
    result back to the dtypes of `current`; inputs are never mutated. Subclasses are frozen
    dataclasses whose fields are their parameters, so `__repr__` and `make_strategy` can list
    them.
    """

    name: ClassVar[str]
    summary: ClassVar[str]

    def initial_state(self) -> StrategyState:
        """State before round one; buffers are created lazily once the shapes are known."""
        return StrategyState()

    def aggregate(
        self, current: NDArrays, results: Sequence[ClientResult], state: StrategyState
    ) -> tuple[NDArrays, StrategyState]:
        check_results(current, results)
        new_weights, arrays = self._update(current, results, state)
        return cast_like(new_weights, current), StrategyState(step=state.step + 1, arrays=arrays)

    @abstractmethod
    def _update(
        self, current: NDArrays, results: Sequence[ClientResult], state: StrategyState
    ) -> tuple[NDArrays, dict[str, NDArrays]]:
        """Return the next weights (any float dtype) and the new state arrays."""

    @classmethod
    def param_names(cls) -> list[str]:
        """The tunable parameters: the dataclass fields of the concrete strategy."""
        return [f.name for f in fields(cls)]  # type: ignore[arg-type]

    def params(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.param_names()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args}): {self.summary}"


def check_results(current: NDArrays, results: Sequence[ClientResult]) -> None:
    """Every result must have the global weights' number of arrays and shapes."""
    if not results:
        raise AggregationError("no client results to aggregate")
    shapes = [np.shape(a) for a in current]
    for r in results:
        got = [np.shape(a) for a in r.weights]
        if got != shapes:
            raise AggregationError(
                f"client {r.client_id!r}: shapes {got} do not match the global weights {shapes}"
            )


def cast_like(arrays: NDArrays, like: NDArrays) -> NDArrays:
    """New arrays with `like`'s dtypes; integer layers are rounded, not truncated."""
    out: NDArrays = []
    for arr, ref in zip(arrays, like, strict=True):
        dtype = np.asarray(ref).dtype
        value = np.rint(arr) if dtype.kind in "iu" else arr
        out.append(np.array(value, dtype=dtype, copy=True))
    return out


def state_buffer(state: StrategyState, key: str, like: NDArrays, fill: float) -> NDArrays:
    """The float64 buffer `key` of `state`, or one filled with `fill` on the first round."""
    if key not in state.arrays:
        return [np.full(np.shape(a), fill, dtype=np.float64) for a in like]
    buf = state.arrays[key]
    if [np.shape(a) for a in buf] != [np.shape(a) for a in like]:
        raise StrategyStateError(
            f"state {key!r} has shapes {[np.shape(a) for a in buf]}, the model "
            f"{[np.shape(a) for a in like]}: state from another model?"
        )
    return [np.asarray(a, dtype=np.float64) for a in buf]
