"""The station's Prometheus metrics, in a registry of its own (tests run several stations)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
TRAINING_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


@dataclass
class FogMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.sessions_stored = Counter(
            "evfl_fog_sessions_stored", "Sessions newly committed to the store", registry=r
        )
        self.sessions_duplicate = Counter(
            "evfl_fog_sessions_duplicate", "Re-sent sessions acknowledged again", registry=r
        )
        self.sessions_rejected = Counter(
            "evfl_fog_sessions_rejected", "Sessions refused at upload", ["reason"], registry=r
        )
        self.upload_streams = Counter(
            "evfl_fog_upload_streams", "Upload streams by outcome", ["outcome"], registry=r
        )
        self.infer_latency = Histogram(
            "evfl_fog_infer_latency_seconds",
            "Infer latency at the station, by the tier that answered",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.infer_errors = Counter(
            "evfl_fog_infer_errors", "Infer requests refused, by gRPC code", ["code"], registry=r
        )
        self.cloud_unreachable = Counter(
            "evfl_fog_cloud_unreachable",
            "Forwards to the cloud that failed (answered degraded at the fog)",
            registry=r,
        )
        self.announcements = Counter(
            "evfl_fog_announcements", "Model announcements by outcome", ["outcome"], registry=r
        )
        self.updates_sent = Counter(
            "evfl_fog_updates_sent", "Client updates delivered to Kafka", registry=r
        )
        self.training_seconds = Histogram(
            "evfl_fog_training_seconds",
            "Wall time of one incremental training round",
            buckets=TRAINING_BUCKETS,
            registry=r,
        )
        self.training_rows = Counter(
            "evfl_fog_training_rows", "Rows trained on (new + replay)", registry=r
        )
