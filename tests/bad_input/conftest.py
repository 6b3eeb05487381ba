"""Fixtures of the bad-input catalogue: real brokers, the real Dundee model's partition files,
and reading a Prometheus sample before and after a case."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from evfl.brokers import EmbeddedKafka, EmbeddedMqtt
from tests.bad_input.catalogue import Case


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    with EmbeddedKafka(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture(scope="session")
def mqtt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedMqtt]:
    with EmbeddedMqtt(tmp_path_factory.mktemp("mqtt")) as broker:
        yield broker


@pytest.fixture(scope="session")
def partition_files(energy_global) -> dict[str, bytes]:
    """The edge, fog and cloud .tflite files of the model trained on real Dundee sessions."""
    from models.export import serving_partitions
    from models.model_config import PARTITIONS

    return serving_partitions(energy_global.config, energy_global.weights, PARTITIONS)


def sample(registry: CollectorRegistry, c: Case, **extra_labels: str) -> float:
    """The case's counter as the program exports it (0 before its first increment)."""
    labels = {**extra_labels, **c.labels}
    value = registry.get_sample_value(c.metric, labels)
    return 0.0 if value is None else value


def xfail_marks(c: Case) -> list[pytest.MarkDecorator]:
    return [pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []
