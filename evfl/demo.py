"""``evfl demo``: the whole system on real data, as real processes on loopback.

Embedded Kafka-compatible broker (Tansu) and MQTT broker (Mosquitto, else amqtt) unless
existing ones are given; the coordinator; one fog service per station; one vehicle agent per
frequent card plus a fleet agent. Real sessions are replayed in time order, a chunk per round:
agents record them and upload them to the station they charged at; stations train on the new
global version; vehicles receive each new edge partition over MQTT and answer held-out
prediction requests through the early-exit chain. Everything is stopped at the end, on error
and on Ctrl-C.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import grpc
from rich.console import Console
from rich.live import Live
from rich.table import Table

from evfl.brokers import EmbeddedKafka, EmbeddedMqtt, free_port
from evfl.demo_plan import DemoPlan, Query, plan, queries
from evfl.launch import Program, agent_program, coordinator_program, fog_program, write_toml
from proto import (
    agent_pb2,
    agent_pb2_grpc,
    inference_pb2,
    station_pb2,
    station_pb2_grpc,
)
from proto.grpc_channel import open_channel
from proto.tensor_codec import encode_tensor

TIERS = {inference_pb2.EDGE: "edge", inference_pb2.FOG: "fog", inference_pb2.CLOUD: "cloud"}


@dataclass(frozen=True)
class DemoSettings:
    dataset: str = "dundee"
    target: str = "energy"
    dataset_path: Path | None = None
    stations: int = 4
    vehicles: int = 6
    rounds: int = 6
    pause_s: float = 2.0  # between chunks of arriving data (Kafka-ML paused between chunks)
    queries_per_vehicle: int = 25
    max_per_station: int | None = None
    epochs: int = 3
    round_deadline_s: float = 90.0
    kafka: str | None = None  # existing brokers instead of the embedded ones
    mqtt: str | None = None  # host:port
    out: Path = Path("runs")

    @classmethod
    def quick(cls, **overrides: object) -> DemoSettings:
        base = cls(
            stations=3,
            vehicles=2,
            rounds=3,
            pause_s=0.5,
            queries_per_vehicle=10,
            max_per_station=900,
            epochs=2,
            round_deadline_s=60.0,
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def task_id(self) -> str:
        return f"demo-{self.dataset}-{self.target}".replace("_", "-")


@dataclass
class Progress:
    """What the live view shows; written by the driver thread, read by the view."""

    phase: str = "starting"
    round: int = 0
    uploaded: int = 0
    upload_bytes: int = 0
    answers: list[dict] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def _scrape(port: int) -> dict[str, float]:
    """The coordinator's Prometheus metrics as {name{labels}: value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "task")
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def _view(settings: DemoSettings, progress: Progress) -> Table:
    m = progress.metrics
    table = Table(title=f"evfl demo: {settings.task_id} — {progress.phase}")
    table.add_column("what")
    table.add_column("value", justify="right")
    version = int(m.get("evfl_coordinator_version{}", -1))
    table.add_row("round / committed version", f"{progress.round} / {version}")
    refused = sum(v for k, v in m.items() if k.startswith("evfl_coordinator_updates_refused_total"))
    table.add_row(
        "updates accepted / refused",
        f"{int(m.get('evfl_coordinator_updates_accepted_total{}', 0))} / {int(refused)}",
    )
    for exit_name in ("edge", "fog", "cloud"):
        mse = m.get(f"evfl_coordinator_exit_metric{{exit={exit_name},metric=mse}}")
        mae = m.get(f"evfl_coordinator_exit_metric{{exit={exit_name},metric=mae}}")
        if mse is not None and mae is not None:
            table.add_row(f"{exit_name} exit held-out MSE / MAE", f"{mse:.3f} / {mae:.3f}")
    answers = progress.answers
    if answers:
        shares = {t: sum(a["tier"] == t for a in answers) / len(answers) for t in TIERS.values()}
        table.add_row(
            "vehicle answers (edge/fog/cloud)",
            f"{len(answers)} ({' / '.join(f'{v:.0%}' for v in shares.values())})",
        )
    table.add_row(
        "sessions uploaded (gRPC bytes)", f"{progress.uploaded} ({progress.upload_bytes:,} B)"
    )
    kafka = m.get("evfl_coordinator_bytes_out_total{}", 0) + m.get(
        "evfl_coordinator_bytes_in_total{}", 0
    )
    table.add_row("Kafka bytes (announce + updates)", f"{int(kafka):,}")
    table.add_row(
        "MQTT bytes (partitions)", f"{int(m.get('evfl_coordinator_mqtt_bytes_out_total{}', 0)):,}"
    )
    return table


class Demo:
    def __init__(self, settings: DemoSettings, console: Console) -> None:
        self.s = settings
        self.console = console
        self.run_dir = settings.out / datetime.now().strftime("%Y%m%d-%H%M%S")
        self.progress = Progress()
        self.programs: list[Program] = []
        self.fogs: dict[str, Program] = {}
        self.agents: dict[str, Program] = {}

    # --- set-up -------------------------------------------------------------------------------

    @contextmanager
    def brokers(self) -> Iterator[tuple[str, tuple[str, int]]]:
        with ExitStack() as stack:
            if self.s.kafka:
                kafka = self.s.kafka
            else:
                kafka = stack.enter_context(EmbeddedKafka(self.run_dir / "kafka")).bootstrap_servers
            if self.s.mqtt:
                host, _, port = self.s.mqtt.rpartition(":")
                mqtt = (host or "127.0.0.1", int(port))
            else:
                broker = stack.enter_context(EmbeddedMqtt(self.run_dir / "mqtt"))
                mqtt = (broker.host, broker.port)
            yield kafka, mqtt

    def _task_file(self, demo: DemoPlan) -> Path:
        return write_toml(
            self.run_dir / "task.toml",
            {
                "task_id": self.s.task_id,
                "dataset": self.s.dataset,
                "target": self.s.target,
                **({"dataset_path": str(self.s.dataset_path)} if self.s.dataset_path else {}),
                "split": "time",
                "rounds": self.s.rounds,
                "stations": list(demo.stations),
                "min_updates": 1,
                "client_fraction": 1.0,
                "round_deadline_s": self.s.round_deadline_s,
                "reannounce_s": 10.0,
                "min_samples": 20,
                "update_encoding": "int8",  # deltas ~5× smaller than float32 (bench.comm)
            },
        )

    def start(self, kafka: str, mqtt: tuple[str, int], demo: DemoPlan) -> None:
        from proto.signing import generate_keypair

        key, _ = generate_keypair(self.run_dir / "keys", "coordinator")
        self.metrics_port = free_port()
        coordinator = coordinator_program(
            self.run_dir / "coordinator",
            [self._task_file(demo)],
            kafka,
            mqtt,
            key,
            self.metrics_port,
        )
        self.programs.append(coordinator.start())
        self.coordinator = coordinator
        training = {"epochs": self.s.epochs, "time_budget_s": 60}
        for station in demo.stations:
            fog = fog_program(
                self.run_dir / f"fog-{station}",
                station,
                kafka,
                [self.s.task_id],
                coordinator.port,
                training=training,
            )
            self.fogs[station] = fog.start(wait_ready=False)
            self.programs.append(fog)
        for fog in self.fogs.values():
            fog.wait_ready()
        for vehicle in demo.vehicles:
            home = self.fogs[demo.home.get(vehicle, demo.stations[0])]
            agent = agent_program(
                self.run_dir / f"agent-{vehicle}",
                vehicle,
                [self.s.task_id],
                f"127.0.0.1:{home.port}",
                mqtt,
                self.run_dir / "keys",
            )
            self.agents[vehicle] = agent.start(wait_ready=False)
            self.programs.append(agent)
        for agent in self.agents.values():
            agent.wait_ready()

    # --- the run ------------------------------------------------------------------------------

    def _agent(self, vehicle: str) -> agent_pb2_grpc.VehicleAgentStub:
        sock = self.agents[vehicle].workdir / "agent.sock"
        return agent_pb2_grpc.VehicleAgentStub(open_channel(f"unix:{sock}"))

    def _station_status(self, station: str) -> station_pb2.StationStatus:
        stub = station_pb2_grpc.StationServiceStub(
            open_channel(f"127.0.0.1:{self.fogs[station].port}")
        )
        return stub.Status(station_pb2.StatusRequest(), timeout=10)

    def upload_chunk(self, chunk: dict) -> None:
        """Each vehicle records its sessions and uploads them where it charged (in parallel)."""
        from models.datasets.record import iter_sessions
        from proto.session_codec import session_to_proto

        def one(vehicle: str, frame) -> None:  # type: ignore[no-untyped-def]
            stub = self._agent(vehicle)
            for station, part in frame.groupby("station_id"):
                protos = [session_to_proto(x) for x in iter_sessions(part)]
                for i in range(0, len(protos), 500):
                    request = agent_pb2.RecordSessionsRequest(sessions=protos[i : i + 500])
                    self.progress.upload_bytes += request.ByteSize()
                    stub.RecordSessions(request, timeout=30)
                target = f"127.0.0.1:{self.fogs[str(station)].port}"
                stub.SetPlugState(
                    agent_pb2.PlugState(plugged=True, station_target=target), timeout=10
                )
                deadline = time.monotonic() + 120
                while stub.Status(agent_pb2.AgentStatusRequest(), timeout=10).queue_length:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"vehicle {vehicle}: upload to {station} stalled")
                    time.sleep(0.1)
                stub.SetPlugState(agent_pb2.PlugState(plugged=False), timeout=10)
                self.progress.uploaded += len(protos)

        threads = [threading.Thread(target=one, args=item, daemon=True) for item in chunk.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def wait_round(self, r: int, timeout: float) -> None:
        """Until the coordinator committed version r (or every station has sent its update)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.progress.metrics = _scrape(self.metrics_port)
            if self.progress.metrics.get("evfl_coordinator_version{}", -1) >= r:
                return
            if not self.coordinator.alive():
                return
            time.sleep(0.5)
        raise RuntimeError(f"round {r} did not complete in {timeout:.0f} s")

    def wait_agents(self, version: int, timeout: float = 60) -> None:
        """Until every vehicle runs ``version``'s edge and every station serves its fog."""
        deadline = time.monotonic() + timeout
        for station in self.fogs:
            while time.monotonic() < deadline:
                tasks = self._station_status(station).tasks
                if tasks and tasks[0].serving_version >= version:
                    break
                time.sleep(0.2)
        for vehicle in self.agents:
            while time.monotonic() < deadline:
                status = self._agent(vehicle).Status(agent_pb2.AgentStatusRequest(), timeout=5)
                if any(m.version >= version for m in status.models):
                    break
                time.sleep(0.2)

    def ask(self, qs: list[Query], version: int) -> None:
        for q in qs:
            request = agent_pb2.PredictRequest(
                task_id=self.s.task_id,
                request_id=uuid.uuid4().hex,
                features=encode_tensor(q.raw, "features"),
                timeout_ms=2000,
            )
            started = time.perf_counter()
            try:
                reply = self._agent(q.vehicle).Predict(request, timeout=5)
            except grpc.RpcError as exc:
                self.progress.answers.append(
                    {"vehicle": q.vehicle, "round": version, "error": exc.code().name}
                )
                continue
            self.progress.answers.append(
                {
                    "vehicle": q.vehicle,
                    "station": q.station,
                    "round": version,
                    "model_version": reply.model_version,
                    "tier": TIERS.get(reply.tier, "?"),
                    "degraded": reply.degraded,
                    "prediction": reply.prediction,
                    "uncertainty": reply.uncertainty,
                    "truth": q.truth,
                    "latency_ms": (time.perf_counter() - started) * 1e3,
                    "hops": {TIERS.get(h.tier, "?"): h.total_ms for h in reply.hops},
                }
            )

    def run(self) -> Path:
        from coordinator.task_data import load_task_data
        from coordinator.task_spec import TaskSpec
        from evfl.demo_report import write_report
        from models.datasets.catalog import load_dataset

        self.run_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        sessions = load_dataset(self.s.dataset, self.s.dataset_path).sessions
        demo = plan(
            sessions,
            self.s.stations,
            self.s.vehicles,
            self.s.rounds,
            max_per_station=self.s.max_per_station,
        )
        spec = TaskSpec(
            task_id=self.s.task_id,
            dataset=self.s.dataset,
            target=self.s.target,
            dataset_path=self.s.dataset_path,
            split="time",
        )
        qs = queries(sessions, demo, load_task_data(spec).preprocessing, self.s.queries_per_vehicle)
        by_vehicle: dict[str, list[Query]] = {}
        for q in qs:
            by_vehicle.setdefault(q.vehicle, []).append(q)
        with (
            self.brokers() as (kafka, mqtt),
            Live(
                _view(self.s, self.progress),
                console=self.console,
                refresh_per_second=2,
                transient=False,
            ) as live,
        ):
            stop_view = threading.Event()

            def refresh() -> None:
                while not stop_view.wait(0.5):
                    live.update(_view(self.s, self.progress))

            viewer = threading.Thread(target=refresh, daemon=True)
            viewer.start()
            try:
                self.progress.phase = "starting programs"
                self.start(kafka, mqtt, demo)
                for r in range(1, self.s.rounds + 1):
                    self.progress.round = r
                    self.progress.phase = f"round {r}: vehicles upload new sessions"
                    self.upload_chunk(demo.chunks[r - 1])
                    self.progress.phase = f"round {r}: stations train, coordinator aggregates"
                    self.wait_round(r, timeout=self.s.round_deadline_s * 3 + 120)
                    self.progress.phase = f"round {r}: vehicles answer with version {r}"
                    self.wait_agents(r)
                    self.ask([q for v in by_vehicle.values() for q in v], r)
                    time.sleep(self.s.pause_s)
                self.progress.phase = "finishing"
                code = self.coordinator.wait(timeout=120)
                if code != 0:
                    raise RuntimeError(f"coordinator exited {code}:\n{self.coordinator.log_tail()}")
                self.progress.metrics = _scrape(self.metrics_port) or self.progress.metrics
                self.station_counts = {
                    s: self._station_status(s).sessions_stored for s in demo.stations
                }
                self.agent_models = {
                    v: [
                        (m.version, m.sha256)
                        for m in self._agent(v)
                        .Status(agent_pb2.AgentStatusRequest(), timeout=5)
                        .models
                    ]
                    for v in self.agents
                }
                self.progress.phase = "done"
            finally:
                stop_view.set()
                self.stop()
                live.update(_view(self.s, self.progress))
        elapsed = time.monotonic() - started
        return write_report(self, demo, elapsed)

    def stop(self) -> None:
        for program in reversed(self.programs):
            if program.alive():
                program.terminate(timeout=30)
