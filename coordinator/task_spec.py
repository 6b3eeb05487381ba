"""A federated task, as an operator writes it in ``tasks/NAME.toml``.

Everything a round needs is here and typed: the use case (dataset, target), the model, how
many rounds (or continuous mode for incremental learning), when a round may close (minimum
updates, client fraction, deadline), the aggregation strategy, and the exit-policy target.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from proto.kafka import InvalidTaskId, validate_task_id
from proto.update_encoding import UpdateEncoding, UpdateEncodingError


class TaskSpecError(ValueError):
    """A task file is unreadable or invalid."""


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: str
    dataset: Literal["dundee", "perth", "paloalto"] = "dundee"
    dataset_path: Path | None = None  # paloalto: the CSV the user supplies
    target: Literal["energy", "occupancy", "charging_time"] = "energy"
    features: Literal["paper", "rich"] = "paper"
    split: Literal["random", "time"] | None = None  # None: the use case's default
    train_ratio: float = Field(0.8, gt=0, lt=1)
    window: int = Field(8, ge=1)
    seed: int = 0
    model: dict[str, Any] | None = None  # ModelConfig.to_dict(); None: the use case's default

    rounds: int = Field(15, ge=1)  # Kafka-ML's evaluation ran 15
    continuous: bool = False  # keep announcing new versions (incremental learning)
    stations: list[str] = Field(default_factory=list)  # who may send updates; empty: anyone
    min_updates: int = Field(1, ge=1)
    client_fraction: float = Field(1.0, gt=0, le=1)  # of `stations`, to close a round early
    round_deadline_s: float = Field(120.0, gt=0)
    reannounce_s: float = Field(30.0, gt=0)  # re-publish the open round's announcement
    min_samples: int = Field(50, ge=1)  # new rows a station needs to take part

    # How stations send updates: float32 (full weights), float16 or int8 (deltas against the
    # announced version; int8 is ~5× smaller at no measured accuracy cost, bench.comm), or
    # topk-int8@F (the largest share F of each delta; stations keep the rest for their next
    # update). "+sr" after an int8 kind: stochastic rounding. Checked here, so a bad value
    # stops the task file from loading rather than the round loop.
    update_encoding: str = "float32"
    strategy: str = "fedavg"
    strategy_params: dict[str, float] = Field(default_factory=dict)
    norm_outlier_k: float = Field(5.0, gt=0)
    # Below this many updates a round's spread of update norms says too little: flag nothing.
    norm_outlier_min_clients: int = Field(8, ge=3)
    exit_tolerance: float = Field(0.05, ge=0)  # an early exit may be this much worse (MAE)

    @field_validator("task_id")
    @classmethod
    def _task_id(cls, value: str) -> str:
        try:
            return validate_task_id(value)
        except InvalidTaskId as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("update_encoding")
    @classmethod
    def _update_encoding(cls, value: str) -> str:
        try:
            UpdateEncoding.parse(value)  # kept as written: str() would round the fraction
        except UpdateEncodingError as exc:
            raise ValueError(str(exc)) from exc
        return value

    def updates_to_close(self) -> int:
        """Updates that close a round before its deadline."""
        wanted = math.ceil(self.client_fraction * len(self.stations)) if self.stations else 0
        return max(self.min_updates, wanted)


def load_task(path: Path) -> TaskSpec:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise TaskSpecError(f"{path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TaskSpecError(f"{path}: not TOML ({exc})") from exc
    try:
        return TaskSpec(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'task'}: {e['msg']}" for e in exc.errors()
        )
        raise TaskSpecError(f"{path}: {problems}") from exc
