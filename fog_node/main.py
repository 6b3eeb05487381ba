"""The station process: store, gRPC server, Kafka loop and metrics, started and stopped as one.

SIGTERM (systemd, Kubernetes) and SIGINT stop it cleanly: health flips to NOT_SERVING, the
server finishes in-flight calls within a grace period, the Kafka loop leaves its group, and the
store is closed. Nothing acknowledged is at risk at any point: acks follow commits.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from types import FrameType

import grpc

from fog_node.config import FogConfig
from fog_node.federation_loop import FederationLoop
from fog_node.metrics import FogMetrics
from fog_node.participant import Participant
from fog_node.service import ServiceLimits, StationServicer
from fog_node.session_store import SessionStore
from models.incremental import IncrementalSettings
from models.served_partition import ServedVersions
from proto import station_pb2, station_pb2_grpc
from proto.grpc_channel import (
    add_health_and_reflection,
    announce_port,
    bind,
    message_options,
    open_channel,
)
from proto.limits import WireLimits

log = logging.getLogger("evfl.fog")

STOP_GRACE_S = 5.0
STATION_SERVICE = station_pb2.DESCRIPTOR.services_by_name["StationService"].full_name


class FogNode:
    def __init__(self, config: FogConfig) -> None:
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = FogMetrics()
        self.store = SessionStore(config.store_path)
        self.served = ServedVersions()
        keyring, signer = config.signing.load(config.station_id)
        t = config.training
        self.participant = Participant(
            config.station_id,
            config.tasks,
            self.store,
            self.served,
            self.metrics,
            IncrementalSettings(
                epochs=t.epochs,
                batch_size=t.batch_size,
                time_budget_s=t.time_budget_s,
                replay_ratio=t.replay_ratio,
                replay_max=t.replay_max,
                seed=t.seed,
            ),
            keyring=keyring,
            require_signed=config.signing.require_signed,
            signer=signer,
            limits=WireLimits(),
            serve_workers=config.serve_workers,
        )
        self._cloud_channel: grpc.Channel | None = None
        self.server: grpc.Server | None = None
        self.health: object | None = None
        self.loop: FederationLoop | None = None
        self.metrics_server: object | None = None
        self.port = 0
        self.stopped = threading.Event()

    def start(self) -> int:
        c = self.config
        restored = self.participant.restore()
        if restored:
            log.info("serving restored versions: %s", ", ".join(restored))
        cloud = None
        if c.cloud.target:
            self._cloud_channel = open_channel(c.cloud.target, c.cloud.client_tls())
            cloud = station_pb2_grpc.CloudServiceStub(self._cloud_channel)
        servicer = StationServicer(
            c.station_id,
            c.accepted_station_ids,
            self.store,
            self.served,
            self.metrics,
            cloud,
            ServiceLimits(c.max_sessions_per_stream, c.cloud.timeout_s),
        )
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=c.serve_workers, thread_name_prefix="grpc"),
            options=message_options(c.max_message_bytes),
        )
        station_pb2_grpc.add_StationServiceServicer_to_server(servicer, self.server)
        self.health = add_health_and_reflection(self.server, [STATION_SERVICE])
        self.port = bind(self.server, c.listen, c.tls.server() if c.tls else None)
        self.server.start()
        if c.metrics_listen:
            from prometheus_client import start_http_server

            host, _, port = c.metrics_listen.rpartition(":")
            self.metrics_server = start_http_server(
                int(port), addr=host or "0.0.0.0", registry=self.metrics.registry
            )
        settings = c.kafka.settings(f"evfl-fog-{c.station_id}", c.max_message_bytes)
        if settings is not None and c.tasks:
            self.loop = FederationLoop(
                settings, c.station_id, c.tasks, self.participant, self.store, self.metrics
            )
            self.loop.start()
        log.info(
            "station %s listening on port %d (%s), tasks %s, kafka %s",
            c.station_id, self.port, "TLS" if c.tls else "plaintext", c.tasks or "none",
            settings.bootstrap_servers if settings else "off",
        )
        return self.port

    def stop(self) -> None:
        if self.stopped.is_set():
            return
        if self.health is not None:
            self.health.enter_graceful_shutdown()  # type: ignore[attr-defined]
        if self.loop is not None:
            self.loop.stop()
        if self.server is not None:
            self.server.stop(STOP_GRACE_S).wait()
        if self.loop is not None:
            self.loop.join(timeout=60)
        if self.metrics_server is not None:
            server, _thread = self.metrics_server  # type: ignore[misc]
            server.shutdown()
        if self._cloud_channel is not None:
            self._cloud_channel.close()
        self.store.close()
        self.stopped.set()
        log.info("station %s stopped", self.config.station_id)


def run(config: FogConfig) -> None:
    """Serve until SIGTERM/SIGINT."""
    node = FogNode(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    node.start()
    announce_port(node.port)
    try:
        while not stop.wait(0.5):
            if node.loop is not None and node.loop.failure is not None:
                log.error("Kafka loop failed; stopping")
                break
    finally:
        node.stop()
