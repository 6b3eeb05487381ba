"""The coordinator process: registry, cloud gRPC service, one round loop per task, metrics.

Each task runs its rounds on a thread of its own (they wait on Kafka, not the CPU); the cloud
service answers stations' forwards with the newest versions of every task. SIGTERM stops the
loops between polls, finishes in-flight gRPC calls and closes the registry; a round left open
is resumed by the next start. With MQTT, a keeper thread ships each task's latest version
again when the broker may have lost it (it restarted empty, or a publish failed).
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from pathlib import Path
from types import FrameType

import grpc

from coordinator.cloud_service import CloudServicer
from coordinator.config import CoordinatorConfig
from coordinator.metrics import CoordinatorMetrics
from coordinator.registry import Registry
from coordinator.round_loop import RoundLoop
from coordinator.task_data import load_task_data
from coordinator.task_spec import TaskSpec, load_task
from coordinator.version_serving import VersionServing
from models.served_partition import ServedVersions
from proto import station_pb2, station_pb2_grpc
from proto.grpc_channel import (
    add_health_and_reflection,
    announce_port,
    bind,
    message_options,
)

log = logging.getLogger("evfl.coordinator")

CLOUD_SERVICE = station_pb2.DESCRIPTOR.services_by_name["CloudService"].full_name
STOP_GRACE_S = 5.0
KEEP_SHIPPED_S = 1.0


class Coordinator:
    def __init__(self, config: CoordinatorConfig, tasks: list[TaskSpec]) -> None:
        if not tasks:
            raise ValueError("no tasks: give at least one task file")
        self.config = config
        self.specs = tasks
        self.metrics = CoordinatorMetrics()
        config.registry_dir.mkdir(parents=True, exist_ok=True)
        self.registry = Registry(config.registry_dir)
        self.served = ServedVersions()
        self.keyring, self.signer = config.signing.load(config.coordinator_id)
        self.kafka = config.kafka.settings(config.coordinator_id, config.max_message_bytes)
        if self.kafka is None:
            raise ValueError("kafka.bootstrap_servers is empty: the coordinator needs Kafka")
        self.mqtt_settings = config.mqtt.settings(config.coordinator_id)
        self.mqtt = None
        self.loops: list[RoundLoop] = []
        self.sinks: list[VersionServing] = []
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []  # one round loop per task
        self.keeper: threading.Thread | None = None  # re-ships versions an MQTT broker lost
        self.failures: dict[str, BaseException] = {}
        self.server: grpc.Server | None = None
        self.health: object | None = None
        self.metrics_server: object | None = None
        self.port = 0

    def start(self) -> int:
        c = self.config
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=c.serve_workers, thread_name_prefix="grpc"),
            options=message_options(c.max_message_bytes),
        )
        station_pb2_grpc.add_CloudServiceServicer_to_server(
            CloudServicer(self.served, self.metrics.registry), self.server
        )
        self.health = add_health_and_reflection(self.server, [CLOUD_SERVICE])
        self.port = bind(self.server, c.cloud_listen, c.tls.server() if c.tls else None)
        self.server.start()
        if c.metrics_listen:
            from prometheus_client import start_http_server

            host, _, port = c.metrics_listen.rpartition(":")
            self.metrics_server = start_http_server(
                int(port), addr=host or "0.0.0.0", registry=self.metrics.registry
            )
        if self.mqtt_settings is not None:
            from proto.mqtt import MqttPublisher

            self.mqtt = MqttPublisher(self.mqtt_settings)
        assert self.kafka is not None
        for spec in self.specs:
            data = load_task_data(spec)
            counter = self.metrics.mqtt_bytes_out.labels(spec.task_id)
            sink = VersionServing(
                spec.task_id, data, self.served, self.mqtt, self.mqtt_settings, self.signer,
                on_published=counter.inc,
            )
            loop = RoundLoop(
                spec,
                data,
                self.registry,
                self.kafka,
                self.metrics,
                sink,
                self.signer,
                self.keyring,
                c.signing.require_signed,
            )
            thread = threading.Thread(
                target=self._run_loop, args=(loop,), name=f"task-{spec.task_id}", daemon=True
            )
            self.loops.append(loop)
            self.sinks.append(sink)
            self.threads.append(thread)
            thread.start()
        if self.mqtt is not None:
            self.keeper = threading.Thread(
                target=self._keep_shipped, name="mqtt-keeper", daemon=True
            )
            self.keeper.start()
        log.info(
            "coordinator: cloud service on port %d, tasks %s, kafka %s, mqtt %s",
            self.port,
            [s.task_id for s in self.specs],
            self.kafka.bootstrap_servers,
            f"{self.mqtt_settings.host}:{self.mqtt_settings.port}" if self.mqtt_settings else "off",
        )
        return self.port

    def _keep_shipped(self) -> None:
        """Every KEEP_SHIPPED_S, ship each task's latest version again if the MQTT broker may
        have lost it (restarted empty, or a publish failed)."""
        while not self.stopping.wait(KEEP_SHIPPED_S):
            for sink in self.sinks:
                sink.keep_shipped()

    def _run_loop(self, loop: RoundLoop) -> None:
        try:
            loop.run()
        except Exception as exc:  # reported by the main thread; the process then stops
            self.failures[loop.task] = exc
            log.exception("task %s failed: %s", loop.task, exc)

    def done(self) -> bool:
        return all(not t.is_alive() for t in self.threads)

    def stop(self) -> None:
        self.stopping.set()
        for loop in self.loops:
            loop.stop.set()
        if self.health is not None:
            self.health.enter_graceful_shutdown()  # type: ignore[attr-defined]
        for thread in [*self.threads, *([self.keeper] if self.keeper else [])]:
            thread.join(timeout=60)
        if self.server is not None:
            self.server.stop(STOP_GRACE_S).wait()
        if self.mqtt is not None:
            self.mqtt.close()
        if self.metrics_server is not None:
            server, _thread = self.metrics_server  # type: ignore[misc]
            server.shutdown()
        self.registry.close()
        log.info("coordinator stopped")


def run(config: CoordinatorConfig, task_files: list[Path], exit_when_done: bool = True) -> int:
    """Run until every task ended (or SIGTERM/SIGINT); 0 on success, 1 if a task failed."""
    specs = [load_task(p) for p in [*config.tasks, *task_files]]
    coordinator = Coordinator(config, specs)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    coordinator.start()
    announce_port(coordinator.port)
    try:
        while not stop.wait(0.5):
            if coordinator.failures or (exit_when_done and coordinator.done()):
                break
    finally:
        coordinator.stop()
    return 1 if coordinator.failures else 0
