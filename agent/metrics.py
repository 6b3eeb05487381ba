"""The agent's Prometheus metrics, read from its parts when scraped (no bookkeeping twice)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class _Counts(Collector):
    """A counter family per label value, from a dict the agent already keeps."""

    def __init__(self, name: str, doc: str, label: str, source: Callable[[], Mapping[str, int]]):
        self.name, self.doc, self.label, self.source = name, doc, label, source

    def collect(self):  # type: ignore[no-untyped-def]
        family = CounterMetricFamily(self.name, self.doc, labels=[self.label])
        for value, count in sorted(dict(self.source()).items()):
            family.add_metric([str(value)], count)
        yield family


def agent_registry(
    answered: Callable[[], Mapping[str, int]],
    refused_partitions: Callable[[], Mapping[str, int]],
    forward_failures: Callable[[], Mapping[str, int]],
    queue_length: Callable[[], int],
    uploaded: Callable[[], int],
    requests_refused: Callable[[], Mapping[str, int]] | None = None,
) -> CollectorRegistry:
    registry = CollectorRegistry()
    if requests_refused is not None:
        registry.register(
            _Counts(
                "evfl_agent_requests_refused",
                "Local API requests refused (bad features, unknown task, bad sessions)",
                "code",
                requests_refused,
            )
        )
    registry.register(
        _Counts(
            "evfl_agent_answers",
            "Answers by the tier that gave them (or degraded)",
            "tier",
            answered,
        )
    )
    registry.register(
        _Counts(
            "evfl_agent_partitions_refused",
            "Partition updates refused",
            "reason",
            refused_partitions,
        )
    )
    registry.register(
        _Counts(
            "evfl_agent_forward_failures",
            "Forwards to the station that failed",
            "reason",
            forward_failures,
        )
    )
    Gauge("evfl_agent_queue_length", "Sessions waiting for upload", registry=registry).set_function(
        queue_length
    )
    Gauge(
        "evfl_agent_sessions_uploaded", "Sessions the stations acknowledged", registry=registry
    ).set_function(uploaded)
    return registry
