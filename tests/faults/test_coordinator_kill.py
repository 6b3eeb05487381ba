"""Fault: the coordinator is SIGKILLed in the middle of a round, then restarted.

A real coordinator and two real stations run a 2-round task. In round 2 (the last) one
station's update is accepted (recorded in the registry), the other station has no new data
yet; the coordinator is killed with SIGKILL right then and restarted on the same registry; the
second station's data arrives afterwards.

Nothing lost, nothing twice: the restart resumes round 2 with the recorded update, every
version 0..2 is committed exactly once (no number reused or skipped), and the final model is
the one an uninterrupted run gives: a second, never-killed round loop on an emptied broker,
fed the very update payloads the first run recorded, round by round, commits the same
weights for every version. (tests/integration/test_coordinator.py checks each version against
FedAvg of the recorded updates; this adds the comparison with an uninterrupted run.)
"""

from __future__ import annotations

import threading

import numpy as np

from coordinator.metrics import CoordinatorMetrics
from coordinator.registry import Registry, TaskNotFound
from coordinator.round_loop import RoundLoop
from coordinator.task_data import load_task_data
from coordinator.task_spec import load_task
from proto.kafka import Publisher, updates_topic
from tests.faults.conftest import report, wait_for
from tests.faults.federation_run import FederationRun

ROUNDS = 2


def _open_round(registry: Registry, task: str) -> int | None:
    try:
        state = registry.current_round(task)
    except TaskNotFound:  # the loop has not created the task yet
        return None
    return None if state is None else state.round


def _replay(run, kafka, recorded, workdir) -> dict[int, list[np.ndarray]]:
    """An uninterrupted round loop fed the recorded updates of each round; its versions."""
    spec = load_task(run.task_file)
    with Registry(workdir / "registry") as registry:
        loop = RoundLoop(
            spec, load_task_data(spec), registry, kafka.settings(), CoordinatorMetrics()
        )
        failure: list[BaseException] = []

        def run_loop() -> None:
            try:
                loop.run()
            except BaseException as exc:  # reported by the test thread
                failure.append(exc)

        thread = threading.Thread(target=run_loop, daemon=True)
        thread.start()
        try:
            with Publisher(kafka.settings()) as publisher:
                for r in range(1, ROUNDS + 1):
                    wait_for(
                        f"the replay to open round {r}",
                        lambda r=r: failure or _open_round(registry, spec.task_id) == r,
                    )
                    assert not failure, failure
                    for payload in recorded[r]:
                        publisher.publish(updates_topic(spec.task_id), payload)
            thread.join(300)
        finally:
            loop.stop.set()
            thread.join(60)
        assert not failure, failure
        assert [v.version for v in registry.versions(spec.task_id)] == list(range(ROUNDS + 1))
        return {v: registry.version(spec.task_id, v).weights() for v in range(ROUNDS + 1)}


def test_coordinator_killed_mid_round_resumes_and_matches_an_uninterrupted_run(
    tmp_path, kafka, dundee
):
    run = FederationRun(tmp_path / "run", dundee, kafka.bootstrap_servers, ROUNDS)
    coordinator = run.coordinator
    try:
        run.start_stations(coordinator_too=True)
        for i in range(len(run.stations)):
            run.upload(i, 0)
        wait_for("round 1", lambda: all(run.trained(i, 0) for i in (0, 1)), run.programs)
        run.upload(0, 1)  # only station 0 has round 2's data for now
        run.wait_log("station 0's round-2 update", r"round 2: accepted")
        coordinator.kill()  # SIGKILL mid-round: one of two updates recorded
        before = {
            "versions": run.log_count(r"committed version \d+ "),
            "round2_updates": run.log_count(r"round 2: accepted"),
        }
        assert before == {"versions": 2, "round2_updates": 1}

        coordinator.start()
        run.wait_log("the resumed round 2", r"round 2: resumed with 1 recorded updates")
        run.upload(1, 1)
        assert coordinator.wait(timeout=300) == 0, coordinator.log_tail()
    finally:
        run.kill_all()
    for v in range(ROUNDS + 1):  # across both processes' logs: each version exactly once
        assert run.log_count(rf"committed version {v} ") == 1, v

    with Registry(run.registry_dir) as registry:
        assert [v.version for v in registry.versions(run.task)] == list(range(ROUNDS + 1))
        recorded = {}
        for r in range(1, ROUNDS + 1):
            stored = registry.round_updates(run.task, r)
            assert sorted(u.station_id for u in stored) == sorted(run.stations)
            recorded[r] = [u.payload for u in stored]
        killed = {v: registry.version(run.task, v).weights() for v in range(ROUNDS + 1)}
        refusals = registry.refusals(run.task)

    kafka.restart()  # an empty broker for the uninterrupted run
    uninterrupted = _replay(run, kafka, recorded, tmp_path / "replay")
    for v in range(1, ROUNDS + 1):
        for a, b in zip(killed[v], uninterrupted[v], strict=True):
            assert np.allclose(a, b, rtol=1e-6, atol=1e-7), f"version {v} differs"
    same_start = all(np.array_equal(a, b) for a, b in zip(killed[0], uninterrupted[0], strict=True))
    after = {
        "versions": run.log_count(r"committed version \d+ "),
        "round2_updates": len(recorded[2]),
        "updates_recorded": sum(len(p) for p in recorded.values()),
        "duplicates_refused": refusals.get("duplicate", 0),
    }
    report(
        "coordinator SIGKILLed mid-round 2",
        "resumed round 2 with its recorded update; versions 0..2 once each; every version "
        f"allclose to an uninterrupted replay of the same updates (v0 identical: {same_start})",
        before,
        after,
    )
