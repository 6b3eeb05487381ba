"""Real brokers for the integration tests: one Kafka (Tansu) and one MQTT broker per session.

Tests that restart or stop a broker start their own, so the shared ones stay up and clean. The
bad-input catalogue has brokers of its own too: its stations reuse real station ids, and a
consumer group it leaves behind must not delay a station process here.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from evfl.brokers import EmbeddedKafka, EmbeddedMqtt


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    with EmbeddedKafka(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture(scope="session")
def mqtt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedMqtt]:
    with EmbeddedMqtt(tmp_path_factory.mktemp("mqtt")) as broker:
        yield broker
