"""The agent process: edge runtime, upload queue and uploader, OTA updater, local API.

Starts serving the last good model on disk before any network is up (a car must answer
offline); MQTT updates and station uploads come and go with connectivity. SIGTERM stops the
local API (in-flight requests finish), the uploader (an interrupted stream leaves its sessions
queued) and the updater, then closes the queue.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from types import FrameType

import grpc

from agent.config import AgentConfig
from agent.edge_runtime import EdgeRuntime
from agent.forwarder import Forwarder
from agent.local_api import AgentServicer
from agent.model_store import ModelStore
from agent.ota import PartitionUpdater
from agent.upload_queue import UploadQueue
from agent.uploader import Uploader
from proto import agent_pb2_grpc
from proto.grpc_channel import announce_port, bind
from proto.mqtt import MqttTransportError

log = logging.getLogger("evfl.agent")

STOP_GRACE_S = 3.0


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = ModelStore(config.state_dir)
        self.runtime = EdgeRuntime()
        self.queue = UploadQueue(config.state_dir / "upload-queue.sqlite3")
        self.uploader = Uploader(
            self.queue,
            config.station.client_tls(),
            batch_size=config.upload.batch_size,
            timeout_s=config.upload.timeout_s,
            max_sessions_per_stream=config.upload.max_sessions_per_stream,
            idle_poll_s=0.2,
        )
        default_station = config.station.target or None
        self.forwarder = Forwarder(
            lambda: self.uploader.target or default_station,
            config.station.client_tls(),
            retries=config.forward_retries,
        )
        keyring, _signer = config.signing.load(config.vehicle_id)
        mqtt = config.mqtt.settings(f"evfl-agent-{config.vehicle_id}")
        self.updater = (
            PartitionUpdater(
                mqtt,
                config.tasks,
                keyring,
                self.store,
                self.runtime,
                require_signed=config.signing.require_signed,
            )
            if mqtt is not None and config.tasks
            else None
        )
        self.server: grpc.Server | None = None
        self.port = 0
        self.stopping = threading.Event()
        self.metrics_server: tuple | None = None

    def start(self) -> int:
        restored = self.runtime.restore(self.store)
        if restored:
            log.info("serving from disk: %s", restored)
        self.uploader.start()
        servicer = AgentServicer(
            self.config.vehicle_id,
            self.runtime,
            self.forwarder,
            self.queue,
            self.uploader,
            self.store,
            self.config.answer_timeout_s,
            self.updater.refusals if self.updater is not None else None,
        )
        self.server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.config.serve_workers, thread_name_prefix="grpc"
            )
        )
        agent_pb2_grpc.add_VehicleAgentServicer_to_server(servicer, self.server)
        self.port = bind(self.server, self.config.listen)
        self.server.start()
        if self.config.metrics_listen:
            self._serve_metrics(servicer)
        if self.updater is not None:
            threading.Thread(target=self._follow_updates, name="ota-start", daemon=True).start()
        log.info(
            "agent %s: local API on %s, tasks %s",
            self.config.vehicle_id,
            self.config.listen,
            self.config.tasks,
        )
        return self.port

    def _serve_metrics(self, servicer: AgentServicer) -> None:
        from prometheus_client import start_http_server

        from agent.metrics import agent_registry

        registry = agent_registry(
            lambda: servicer.answered,
            lambda: self.updater.refusals if self.updater is not None else {},
            lambda: self.forwarder.failures,
            lambda: len(self.queue),
            self.queue.uploaded_count,
            requests_refused=lambda: servicer.requests_refused,
        )
        host, _, port = self.config.metrics_listen.rpartition(":")
        self.metrics_server = start_http_server(
            int(port), addr=host or "127.0.0.1", registry=registry
        )

    def _follow_updates(self) -> None:
        """Subscribe to model updates, retrying while the broker is unreachable: a car with no
        network keeps answering with the model it has."""
        assert self.updater is not None
        delay = 1.0
        while not self.stopping.is_set():
            try:
                self.updater.start(timeout=10)
                return
            except MqttTransportError as exc:
                log.warning("model updates unavailable (%s); retrying in %.0f s", exc, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 60.0)

    def stop(self) -> None:
        self.stopping.set()
        if self.server is not None:
            self.server.stop(STOP_GRACE_S).wait()
        self.uploader.stop()
        if self.updater is not None:
            self.updater.stop()
        self.forwarder.close()
        if self.metrics_server is not None:
            self.metrics_server[0].shutdown()
        self.queue.close()
        log.info("agent %s stopped", self.config.vehicle_id)


def run(config: AgentConfig) -> None:
    agent = Agent(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.start()
    announce_port(agent.port)
    try:
        stop.wait()
    finally:
        agent.stop()
