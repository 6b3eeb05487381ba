"""What a federated round costs without training: N simulated stations over the embedded broker.

For each N the real ``RoundLoop`` runs in a thread against one embedded Kafka (Tansu) started for
the whole run, on the Dundee energy task (real model, preprocessing and held-out data, loaded
once). The stations are simulated, not trained: on each announcement of version v they answer at
once with the announced weights plus small seeded noise and a random sample count (100..1000),
built with ``build_update`` and published to the task's real updates topic.

One reader, N logical stations: a single consumer reads the announce topic and then publishes
the N updates together (pipelined on one producer). N librdkafka consumers (N groups, N fetch
threads) in this process would compete with the coordinator for 2 CPUs and measure the harness;
the broker's fan-out of one announcement to N readers costs the coordinator nothing. Building
the N updates is timed separately ("stations build"): real stations do that in parallel.

Per round, from the announcement's ``announced_unix_ms`` to the registry's commit of the next
version, split into: announcement reaches the stations, stations build, publish → first update
at the coordinator, collect (first → last update processed), aggregate (outlier screen + FedAvg),
evaluate (every exit on the held-out split) and the registry commit. The first round is a warm-up
and not counted: it includes the coordinator's consumer-group join on Tansu.

Baseline, measured in the same run: FedAvg of the same N updates in memory plus one
``evaluate_weights`` call, i.e. the round without Kafka, protobuf, screening or the registry.

Bytes per station per round: the announcement it downloads plus the update it uploads, against
uploading its raw sessions as serialized ``Session`` protos instead. Assumption: the busiest N
Dundee stations' sessions, in time order, spread evenly over ``--spread-rounds`` rounds (the task
default, 15: Kafka-ML's evaluation), one ``SessionBatch`` per station per round.

Targets (from the issue; printed, never asserted): round ≤ 2 s at 58 stations and ≤ 5 s at
200; ≥ 90% fewer bytes than the raw sessions. A missed time target gets a cProfile of the
coordinator's rounds at the largest N that missed (top entries by cumulative time);
``--profile`` asks for one at the largest N regardless.

The whole default run takes about a minute on 2 CPUs.

    python -m bench.round [--stations 10,58,200] [--rounds 5] [--spread-rounds 15] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
logging.getLogger("tensorflow").setLevel(logging.ERROR)

from coordinator.metrics import CoordinatorMetrics  # noqa: E402
from coordinator.registry import Registry, VersionRecord  # noqa: E402
from coordinator.round_loop import RoundLoop  # noqa: E402
from coordinator.task_data import TaskData, evaluate_weights, load_task_data  # noqa: E402
from coordinator.task_spec import TaskSpec  # noqa: E402
from proto.federation_codec import ExitScore  # noqa: E402
from proto.kafka import KafkaSettings, KafkaUnavailable, Subscriber  # noqa: E402

RESULTS = Path(__file__).parent / "results"
NOISE = 0.01  # std of the noise a simulated station adds to the announced weights
WARM_UP_ROUNDS = 1  # includes the coordinator's consumer-group join
TIME_TARGETS_S = {58: 2.0, 200: 5.0}  # round overhead, from the issue
BYTES_TARGET = 0.90  # fraction of the raw-session bytes saved, from the issue
SCORES = [ExitScore(e, 100, 1.0, 1.0, 1.0) for e in ("edge", "fog", "cloud")]
PROFILE_TOP = 10


def _table(title: str, columns: Sequence[str]) -> Table:
    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    return table


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.0f}"


# --- raw sessions: what federated learning saves uploading ----------------------------------


@dataclass(frozen=True)
class RawUpload:
    """One station's sessions as it would upload them each round instead of an update."""

    station: str
    sessions: int
    per_round_sessions: float
    per_round_bytes: float  # serialized SessionBatch
    per_round_zstd_bytes: float  # the same, zstd level 3 (what Kafka's producer would send)


def _raw_uploads(max_stations: int, spread_rounds: int) -> list[RawUpload]:
    """The busiest stations first, each station's time-ordered sessions cut into rounds."""
    import zstandard

    from models.datasets.catalog import load_dataset
    from models.datasets.record import iter_sessions
    from proto import sessions_pb2
    from proto.session_codec import session_to_proto

    sessions = load_dataset("dundee").sessions
    busiest = sessions["station_id"].value_counts().index[:max_stations]
    zstd = zstandard.ZstdCompressor(level=3)
    out = []
    for station in busiest:
        mine = sessions[sessions["station_id"] == station].sort_values("start")
        protos = [session_to_proto(s) for s in iter_sessions(mine)]
        sizes, packed = [], []
        for part in np.array_split(np.arange(len(protos)), spread_rounds):
            data = sessions_pb2.SessionBatch(sessions=[protos[i] for i in part]).SerializeToString()
            sizes.append(len(data))
            packed.append(len(zstd.compress(data)))
        out.append(
            RawUpload(
                str(station),
                len(protos),
                len(protos) / spread_rounds,
                float(np.mean(sizes)),
                float(np.mean(packed)),
            )
        )
    return out


# --- the coordinator, timed from inside (behaviour unchanged) -------------------------------


class _TimedRegistry(Registry):
    """Marks the start and end of each version's commit (wall clock, like announced_unix_ms)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.commits: dict[int, tuple[float, float]] = {}

    def commit_version(self, task_id: str, version: int, *args: Any, **kw: Any) -> VersionRecord:
        start = time.time()
        record = super().commit_version(task_id, version, *args, **kw)
        self.commits[version] = (start, time.time())
        return record


@dataclass
class _Marks:
    first_rx: float | None = None
    last_done: float | None = None
    receive_s: float = 0.0  # decode + screen + record, summed over the round's updates
    close_start: float | None = None
    commit_start: float | None = None


class _TimedLoop(RoundLoop):
    """RoundLoop plus timestamps at its steps, and an optional profiler for rounds > warm-up."""

    def __init__(self, *args: Any, profiler: cProfile.Profile | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.marks: dict[int, _Marks] = {}
        self.profiler = profiler

    def _round(self, base: VersionRecord, publisher: Any, updates: Any) -> VersionRecord | None:
        profiled = self.profiler is not None and base.version >= WARM_UP_ROUNDS
        if profiled and self.profiler is not None:
            self.profiler.enable()
        try:
            return super()._round(base, publisher, updates)
        finally:
            if profiled and self.profiler is not None:
                self.profiler.disable()

    def _receive(self, payload: bytes, rnd: Any) -> None:
        marks = self.marks.setdefault(rnd.number, _Marks())
        start = time.time()
        if marks.first_rx is None:
            marks.first_rx = start
        super()._receive(payload, rnd)
        marks.last_done = time.time()
        marks.receive_s += marks.last_done - start

    def _close(self, rnd: Any, elapsed: float) -> VersionRecord:
        self.marks.setdefault(rnd.number, _Marks()).close_start = time.time()
        return super()._close(rnd, elapsed)

    def _commit(self, version: int, *args: Any, **kw: Any) -> VersionRecord:
        self.marks.setdefault(version, _Marks()).commit_start = time.time()
        return super()._commit(version, *args, **kw)


# --- the simulated stations -----------------------------------------------------------------


@dataclass
class _Answer:
    """What the stations saw and sent for one round."""

    announced: float  # the announcement's announced_unix_ms, in s
    received: float  # when the reader had it
    built: float  # when all N updates were built
    flushed: float  # when the broker acknowledged all N
    announce_bytes: int
    update_bytes: list[int]
    results: list[Any]  # models.aggregate.ClientResult, for the in-memory baseline
    parts: dict[str, int]  # what the last announcement and update carry, in bytes


@dataclass
class _Stations:
    """N logical stations behind one announce reader and one pipelined producer."""

    settings: KafkaSettings
    task: str
    ids: list[str]
    seed: int
    answers: dict[int, _Answer] = field(default_factory=dict)
    error: BaseException | None = None

    def run(self, stop: threading.Event) -> None:
        try:
            self._run(stop)
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def _run(self, stop: threading.Event) -> None:
        from confluent_kafka import Producer

        from models.aggregate import ClientResult
        from proto.federation_codec import SERVE_ONLY, build_update, read_announcement
        from proto.kafka import announce_topic, updates_topic

        failures: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        producer = Producer(self.settings.producer_config())
        with Subscriber(self.settings, f"bench-stations-{self.task}") as reader:
            deadline = time.monotonic() + 120
            while True:  # the loop creates the topics when it starts
                try:
                    reader.assign_from_beginning([announce_topic(self.task)])
                    break
                except KafkaUnavailable:
                    if stop.is_set() or time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            while not stop.is_set():
                record = reader.poll(0.2)
                if record is None:
                    continue
                received = time.time()
                ann = read_announcement(record.value)
                if ann.ends_task:
                    break
                msg = ann.message
                if msg.round == SERVE_ONLY or msg.round in self.answers:
                    continue
                rng = np.random.default_rng([self.seed, msg.round])
                payloads, results = [], []
                for station in self.ids:
                    weights = [
                        w + rng.normal(0.0, NOISE, w.shape).astype(w.dtype) for w in ann.weights
                    ]
                    count = int(rng.integers(100, 1001))
                    update, chunks = build_update(
                        self.task,
                        station,
                        msg.version,
                        msg.round,
                        f"{station}:{self.task}:v{msg.version}",
                        count,
                        SCORES,
                        weights,
                        0.0,
                    )
                    assert not chunks, "a small model's update travels inline"
                    payloads.append(update.SerializeToString())
                    results.append(ClientResult(station, weights, count))
                built = time.time()
                for payload in payloads:
                    producer.produce(updates_topic(self.task), payload, on_delivery=delivered)
                    producer.poll(0)
                left = producer.flush(30)
                assert left == 0 and not failures, (left, failures[:3])
                self.answers[msg.round] = _Answer(
                    msg.announced_unix_ms / 1000,
                    received,
                    built,
                    time.time(),
                    len(record.value),
                    [len(p) for p in payloads],
                    results,
                    {
                        "announcement: weights (zstd blob)": msg.weights.ByteSize(),
                        "announcement: preprocessing JSON": len(msg.preprocessing_json),
                        "announcement: model config JSON": len(msg.model_config_json),
                        "announcement: constraints, policy, ids": len(record.value)
                        - msg.weights.ByteSize()
                        - len(msg.preprocessing_json)
                        - len(msg.model_config_json),
                        "update: weights (zstd blob)": update.weights.ByteSize(),
                        "update: ids, counts, scores": len(payloads[-1])
                        - update.weights.ByteSize(),
                        "weights as raw float32 (for scale)": sum(4 * w.size for w in ann.weights),
                    },
                )


# --- one N ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundTiming:
    round: int
    announce_to_stations_s: float
    stations_build_s: float
    stations_publish_s: float  # produce all N .. the broker acknowledged all N
    publish_to_first_s: float
    collect_s: float
    receive_per_update_s: float  # coordinator time in _receive, per update
    aggregate_s: float
    evaluate_s: float
    registry_commit_s: float
    round_s: float  # announced_unix_ms -> version committed
    coordinator_and_wire_s: float  # round_s less the simulated stations' serial build


@dataclass
class StationsRun:
    stations: int
    task: str
    rounds: list[RoundTiming]
    announce_bytes: int
    update_bytes: float  # mean per station
    parts: dict[str, int]
    announce_out_wire: int  # as the coordinator counted it (RoundLoop's wire metrics)
    updates_in_wire: int
    last_results: list[Any]
    committed_last: list[np.ndarray]
    seconds: float


def _spec(task: str, ids: list[str], rounds: int) -> TaskSpec:
    return TaskSpec(
        task_id=task,
        dataset="dundee",
        target="energy",
        rounds=rounds,
        stations=ids,
        min_updates=len(ids),
        client_fraction=1.0,
        round_deadline_s=600,
        reannounce_s=600,
    )


def _join(thread: threading.Thread, what: str, timeout: float) -> None:
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{what} still running after {timeout:g} s")


def run_stations(
    settings: KafkaSettings,
    data: TaskData,
    n: int,
    rounds: int,
    workdir: Path,
    profiler: cProfile.Profile | None = None,
) -> StationsRun:
    """``rounds`` measured rounds (after the warm-up) of a fresh task with ``n`` stations."""
    started = time.perf_counter()
    task = f"bench-round-{n}-{uuid.uuid4().hex[:6]}"
    ids = [f"dd:{i:03d}" for i in range(n)]
    spec = _spec(task, ids, rounds + WARM_UP_ROUNDS)
    registry = _TimedRegistry(workdir / task)
    with registry:
        loop = _TimedLoop(spec, data, registry, settings, CoordinatorMetrics(), profiler=profiler)
        stations = _Stations(settings, task, ids, seed=n)
        stop = threading.Event()
        failed: list[BaseException] = []

        def coordinate() -> None:
            try:
                loop.run()
            except BaseException as exc:  # reported by this thread
                failed.append(exc)

        coordinator = threading.Thread(target=coordinate, name=f"coordinator-{n}", daemon=True)
        reader = threading.Thread(target=stations.run, args=(stop,), name=f"stations-{n}")
        coordinator.start()
        reader.start()
        try:
            _join(coordinator, f"round loop ({n} stations)", 600)
            if failed:
                raise failed[0]
            _join(reader, f"stations ({n})", 60)  # ends at the end-of-task announcement
            if stations.error is not None:
                raise stations.error
        finally:
            loop.stop.set()
            stop.set()
            coordinator.join(30)
            reader.join(30)
        last = registry.latest(task)
        assert last is not None and last.version == spec.rounds, "the loop stopped early"
        commits = dict(registry.commits)
        committed_last = last.weights()

    timings = []
    for number in range(WARM_UP_ROUNDS + 1, spec.rounds + 1):
        a, m = stations.answers[number], loop.marks[number]
        commit_start, commit_end = commits[number]
        assert None not in (m.first_rx, m.last_done, m.close_start, m.commit_start), m
        first, done = float(m.first_rx or 0), float(m.last_done or 0)
        close, commit = float(m.close_start or 0), float(m.commit_start or 0)
        build = a.built - a.received
        timings.append(
            RoundTiming(
                round=number,
                announce_to_stations_s=a.received - a.announced,
                stations_build_s=build,
                stations_publish_s=a.flushed - a.built,
                publish_to_first_s=first - a.built,
                collect_s=done - first,
                receive_per_update_s=m.receive_s / n,
                aggregate_s=commit - close,
                evaluate_s=commit_start - commit,
                registry_commit_s=commit_end - commit_start,
                round_s=commit_end - a.announced,
                coordinator_and_wire_s=commit_end - a.announced - build,
            )
        )
    final = stations.answers[spec.rounds]
    wire = last.metrics["wire"]
    return StationsRun(
        stations=n,
        task=task,
        rounds=timings,
        announce_bytes=final.announce_bytes,
        update_bytes=float(np.mean(final.update_bytes)),
        parts=final.parts,
        announce_out_wire=int(wire["announce_out"]),
        updates_in_wire=int(wire["updates_in"]),
        last_results=final.results,
        committed_last=committed_last,
        seconds=time.perf_counter() - started,
    )


def in_memory_round(
    data: TaskData, results: list[Any], tolerance: float
) -> tuple[float, float, list[np.ndarray]]:
    """The baseline: FedAvg of the same updates plus one evaluation, no wire, no registry.

    Returns the seconds of each part and the averaged weights.
    """
    from models.aggregate import fedavg

    start = time.perf_counter()
    weights = fedavg(results)
    averaged = time.perf_counter()
    evaluate_weights(data, weights, tolerance)
    return averaged - start, time.perf_counter() - averaged, weights


def _profile_rows(profiler: cProfile.Profile) -> list[dict[str, Any]]:
    entries = pstats.Stats(profiler, stream=io.StringIO()).stats  # type: ignore[attr-defined]
    rows = []
    for (file, line, name), (_cc, calls, tottime, cumtime, _callers) in entries.items():
        if Path(file).resolve() == Path(__file__).resolve():
            continue  # this bench's timing wrappers: the same time as what they wrap
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}" if line else file
        rows.append(
            {
                "function": f"{name} ({where})",
                "calls": calls,
                "tottime": tottime,
                "cumtime": cumtime,
            }
        )
    rows.sort(key=lambda r: r["cumtime"], reverse=True)
    return rows


# --- main -----------------------------------------------------------------------------------


def _median(runs: list[RoundTiming], name: str) -> float:
    return statistics.median(getattr(r, name) for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stations", default="10,58,200", help="comma-separated N")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per N")
    parser.add_argument(
        "--spread-rounds",
        type=int,
        default=TaskSpec.model_fields["rounds"].default,
        help="rounds a station's sessions are spread over, for the raw-upload comparison",
    )
    parser.add_argument("--baseline-repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="profile even if targets are met")
    parser.add_argument("--no-profile", action="store_true", help="skip the profile on a miss")
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.stations.split(",") if s.strip()})

    from evfl.brokers import EmbeddedKafka

    console = Console(width=max(Console().width, 150))
    started = time.perf_counter()
    with console.status("loading Dundee (model, preprocessing, held-out data)…"):
        data = load_task_data(_spec("bench-round", ["x"], 1))
        raw = _raw_uploads(max(sizes), args.spread_rounds)
    tolerance = _spec("bench-round", ["x"], 1).exit_tolerance

    runs: list[StationsRun] = []
    baselines: dict[int, list[float]] = {}
    baseline_parts: dict[int, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedKafka(Path(tmp) / "kafka") as kafka:
        settings = kafka.settings("evfl-bench-round")
        for n in sizes:
            with console.status(f"{n} stations: {args.rounds} + {WARM_UP_ROUNDS} rounds…"):
                run = run_stations(settings, data, n, args.rounds, Path(tmp))
                parts: dict[str, list[float]] = {"fedavg": [], "evaluate": []}
                for _ in range(max(1, args.baseline_repeats)):
                    agg_s, eval_s, weights = in_memory_round(data, run.last_results, tolerance)
                    parts["fedavg"].append(agg_s)
                    parts["evaluate"].append(eval_s)
                for got, want in zip(run.committed_last, weights, strict=True):
                    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
            runs.append(run)
            baselines[n] = [a + e for a, e in zip(parts["fedavg"], parts["evaluate"], strict=True)]
            baseline_parts[n] = parts

        def missed(run: StationsRun) -> bool:
            target = TIME_TARGETS_S.get(run.stations)
            return target is not None and _median(run.rounds, "round_s") > target

        profile: dict[str, Any] | None = None
        if args.profile or (any(missed(r) for r in runs) and not args.no_profile):
            n = max(r.stations for r in runs if missed(r) or args.profile)
            profiler = cProfile.Profile()
            with console.status(f"profiling the coordinator's rounds at {n} stations…"):
                run_stations(settings, data, n, 1, Path(tmp), profiler=profiler)
            profile = {"stations": n, "rounds": 1, "top": _profile_rows(profiler)[:PROFILE_TOP]}

    # --- table 1: where a round's time goes ------------------------------------------------
    steps = _table(
        f"1. a round without training, Dundee energy "
        f"({sum(int(np.prod(w.shape)) for w in runs[0].committed_last):,} weights): median ms "
        f"of {args.rounds} rounds after {WARM_UP_ROUNDS} warm-up",
        (
            "stations",
            "ann.→stations",
            "stations build",
            "publish→1st",
            "collect",
            "per update",
            "aggregate",
            "evaluate",
            "registry",
            "round",
        ),
    )
    # --- table 2: against the in-memory baseline -------------------------------------------
    versus = _table(
        f"2. round (announced → committed) vs the baseline: FedAvg of the same updates + one "
        f"evaluate_weights in memory (median of {args.baseline_repeats}); ratio and share use the "
        f"round less the simulated stations' build",
        (
            "stations",
            "round s",
            "less stations build s",
            "in-memory FedAvg ms",
            "in-memory s (baseline)",
            "× in-memory",
            "wire/Kafka share",
            "target",
        ),
    )
    time_rows = []
    for run in runs:
        r = run.rounds
        round_s = _median(r, "round_s")
        less_build = _median(r, "coordinator_and_wire_s")
        base = statistics.median(baselines[run.stations])
        fedavg_s = statistics.median(baseline_parts[run.stations]["fedavg"])
        target = TIME_TARGETS_S.get(run.stations)
        verdict = (
            "—"
            if target is None
            else f"≤ {target:g} s: " + ("met" if round_s <= target else "MISSED")
        )
        steps.add_row(
            str(run.stations),
            _ms(_median(r, "announce_to_stations_s")),
            _ms(_median(r, "stations_build_s")),
            _ms(_median(r, "publish_to_first_s")),
            _ms(_median(r, "collect_s")),
            f"{_median(r, 'receive_per_update_s') * 1e3:.1f}",
            _ms(_median(r, "aggregate_s")),
            _ms(_median(r, "evaluate_s")),
            _ms(_median(r, "registry_commit_s")),
            _ms(round_s),
        )
        versus.add_row(
            str(run.stations),
            f"{round_s:.2f}",
            f"{less_build:.2f}",
            f"{fedavg_s * 1e3:.1f}",
            f"{base:.2f}",
            f"{less_build / base:.2f}×",
            f"{1 - base / less_build:.0%}",
            verdict,
        )
        time_rows.append(
            {
                "stations": run.stations,
                "task": run.task,
                "rounds": [r_.__dict__ for r_ in r],
                "median": {
                    name: _median(r, name)
                    for name in RoundTiming.__dataclass_fields__
                    if name != "round"
                },
                "in_memory_seconds": baselines[run.stations],
                "in_memory_fedavg_seconds": baseline_parts[run.stations]["fedavg"],
                "in_memory_evaluate_seconds": baseline_parts[run.stations]["evaluate"],
                "in_memory_seconds_median": base,
                "round_over_in_memory": round_s / base,
                "round_less_build_over_in_memory": less_build / base,
                "wire_kafka_share": 1 - base / less_build,
                "target_seconds": target,
                "target_met": None if target is None else round_s <= target,
                "run_seconds": run.seconds,
            }
        )
    console.print(steps)
    console.print(versus)

    # --- table 3: bytes -------------------------------------------------------------------
    table = _table(
        f"3. bytes per station per round: announcement + update vs uploading its raw sessions "
        f"(busiest N Dundee stations, each one's sessions spread over {args.spread_rounds} "
        f"rounds)",
        (
            "stations",
            "announce B",
            "update B",
            "federated B",
            "sess./round",
            "raw proto B",
            "raw zstd B",
            "fed ÷ proto",
            f"sess. for {BYTES_TARGET:.0%}",
            f"≥ {BYTES_TARGET:.0%} saved",
        ),
    )
    bytes_rows = []
    for run in runs:
        mine = raw[: run.stations]
        sessions = float(np.mean([u.per_round_sessions for u in mine]))
        proto_b = float(np.mean([u.per_round_bytes for u in mine]))
        zstd_b = float(np.mean([u.per_round_zstd_bytes for u in mine]))
        per_session = float(
            sum(u.per_round_bytes for u in mine) / sum(u.per_round_sessions for u in mine)
        )
        federated = run.announce_bytes + run.update_bytes
        saved, saved_zstd = 1 - federated / proto_b, 1 - federated / zstd_b
        # Sessions per station per round at which the federated bytes would be 10% of raw.
        break_even = federated / (1 - BYTES_TARGET) / per_session
        label = str(run.stations) + ("" if len(mine) == run.stations else "*")
        table.add_row(
            label,
            f"{run.announce_bytes:,}",
            f"{run.update_bytes:,.0f}",
            f"{federated:,.0f}",
            f"{sessions:,.0f}",
            f"{proto_b:,.0f}",
            f"{zstd_b:,.0f}",
            f"{federated / proto_b:.1f}×",
            f"{break_even:,.0f}",
            f"{saved:.0%}: " + ("met" if saved >= BYTES_TARGET else "MISSED"),
        )
        bytes_rows.append(
            {
                "stations": run.stations,
                "real_stations_used": len(mine),
                "announcement_bytes": run.announce_bytes,
                "update_bytes_mean": run.update_bytes,
                "coordinator_counted": {
                    "announce_out": run.announce_out_wire,
                    "updates_in_per_station": run.updates_in_wire / run.stations,
                },
                "federated_bytes": federated,
                "raw_sessions_per_round": sessions,
                "raw_proto_bytes": proto_b,
                "raw_zstd_bytes": zstd_b,
                "proto_bytes_per_session": per_session,
                "federated_over_proto": federated / proto_b,
                "saved_vs_proto": saved,
                "saved_vs_zstd": saved_zstd,
                "break_even_sessions_per_round": break_even,
                "target_met": saved >= BYTES_TARGET,
            }
        )
    console.print(table)
    if len(raw) < max(sizes):
        console.print(
            f"* Dundee has {len(raw)} stations: raw bytes are averaged over all of them. "
            f"'sess. for {BYTES_TARGET:.0%}': sessions per station per round at which the "
            f"federated bytes would be {1 - BYTES_TARGET:.0%} of the raw proto bytes."
        )

    # --- table 4: what the federated bytes are ----------------------------------------------
    largest = runs[-1]
    table = _table(
        f"4. what a station downloads and uploads per round ({largest.stations} stations)",
        ("part", "bytes", "share of federated"),
    )
    federated = largest.announce_bytes + largest.update_bytes
    for part, size in largest.parts.items():
        share = "" if part.startswith("weights as raw") else f"{size / federated:.0%}"
        table.add_row(part, f"{size:,}", share)
    console.print(table)

    # --- table 5: profile, when a time target was missed ----------------------------------
    if profile is not None:
        table = _table(
            f"5. cProfile of the coordinator thread, {profile['stations']} stations, one round "
            f"after warm-up: top {PROFILE_TOP} by cumulative time",
            ("function", "calls", "tottime s", "cumtime s"),
        )
        for row in profile["top"]:
            table.add_row(
                row["function"],
                f"{row['calls']:,}",
                f"{row['tottime']:.3f}",
                f"{row['cumtime']:.3f}",
            )
        console.print(table)

    results = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "task": "dundee-energy",
        "measured_rounds": args.rounds,
        "warm_up_rounds": WARM_UP_ROUNDS,
        "spread_rounds": args.spread_rounds,
        "noise_std": NOISE,
        "simulation": "one announce reader, N logical stations, one pipelined producer",
        "time": time_rows,
        "bytes": bytes_rows,
        "bytes_parts": largest.parts,
        "raw_uploads": [u.__dict__ for u in raw],
        "profile": profile,
    }
    results["total_seconds"] = time.perf_counter() - started
    console.print(f"total {results['total_seconds']:.0f} s on {os.cpu_count()} CPUs")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "round.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
