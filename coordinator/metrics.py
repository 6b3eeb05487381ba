"""The coordinator's Prometheus metrics, per task, in a registry of its own."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ROUND_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


@dataclass
class CoordinatorMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.updates_accepted = Counter(
            "evfl_coordinator_updates_accepted", "Client updates aggregated", ["task"], registry=r
        )
        self.updates_refused = Counter(
            "evfl_coordinator_updates_refused",
            "Client updates refused, by reason",
            ["task", "reason"],
            registry=r,
        )
        self.round_seconds = Histogram(
            "evfl_coordinator_round_seconds",
            "Wall time from announcement to committed version",
            ["task"],
            buckets=ROUND_BUCKETS,
            registry=r,
        )
        self.version = Gauge(
            "evfl_coordinator_version", "Latest committed version", ["task"], registry=r
        )
        self.exit_metric = Gauge(
            "evfl_coordinator_exit_metric",
            "Held-out metric of each exit of the latest version",
            ["task", "exit", "metric"],
            registry=r,
        )
        self.bytes_out = Counter(
            "evfl_coordinator_bytes_out", "Bytes published (announcements)", ["task"], registry=r
        )
        self.mqtt_bytes_out = Counter(
            "evfl_coordinator_mqtt_bytes_out",
            "Bytes of partition files and manifests published over MQTT",
            ["task"],
            registry=r,
        )
        self.bytes_in = Counter(
            "evfl_coordinator_bytes_in", "Bytes received (updates)", ["task"], registry=r
        )
