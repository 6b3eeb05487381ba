"""The vehicle's edge runtime and model store, on the real Dundee energy model.

What a driver would notice: the car answers like the trained model's edge exit, keeps
answering while a new version swaps in, and after a reboot serves its last good version.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from agent.edge_runtime import EdgeRuntime, UnknownTask
from agent.model_store import ModelStore, StoredModelCorrupt
from models.model_config import PARTITIONS
from proto.partition_messages import build_manifest

TASK = "dundee-energy"
THRESHOLDS = (0.5, 1.0)
ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "pandas", "confluent_kafka", "sklearn")


def _perturbed(weights: list[np.ndarray], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [w + rng.normal(0.0, 0.05, w.shape).astype(w.dtype) for w in weights]


@pytest.fixture(scope="module")
def versions(energy_global) -> dict[int, tuple[object, bytes]]:
    """Versions 1 (the trained weights) and 2 (perturbed): manifest and edge file each."""
    from coordinator.version_serving import parity_samples
    from models.export import serving_partitions

    normalization = json.dumps(energy_global.preprocessing.normalization.to_dict())
    out = {}
    for version, weights in ((1, energy_global.weights), (2, _perturbed(energy_global.weights, 2))):
        files = serving_partitions(energy_global.config, weights, PARTITIONS)
        parity = parity_samples(files, energy_global.x_test[:8])
        edge = files["edge"]
        manifest = build_manifest(
            TASK, version, "edge", "tflite", "float32", edge, THRESHOLDS, normalization,
            parity["edge"], None,
        )  # fmt: skip
        out[version] = (manifest, edge)
    return out


def _raw(energy_global, rows: np.ndarray) -> np.ndarray:
    """Real rows back in raw feature units, as the car's sensors would give them."""
    norm = energy_global.preprocessing.normalization
    return rows * norm.x_std + norm.x_mean


def test_predict_local_equals_the_keras_edge_exit_on_real_rows(energy_global, versions):
    from models.partitioned import build_model, set_weights, split

    model = build_model(energy_global.config)
    set_weights(model, energy_global.weights)
    edge = split(model, energy_global.config)[0]
    rows = energy_global.x_test[:64]
    hidden, exit_out = (np.asarray(a) for a in edge.predict(rows, verbose=0))
    norm = energy_global.preprocessing.normalization
    want_mean, want_std = norm.inverse(exit_out)

    runtime = EdgeRuntime()
    runtime.swap(TASK, *versions[1])
    answers = [runtime.predict_local(TASK, row) for row in _raw(energy_global, rows)]

    assert {a.version for a in answers} == {1}
    got_hidden = np.concatenate([a.result.hidden for a in answers])
    np.testing.assert_allclose(got_hidden, hidden, rtol=0, atol=1e-4)
    # Compared in normalised units: 1e-4 of the target's spread.
    got_mean = np.array([a.result.mean for a in answers])
    got_std = np.array([a.result.std for a in answers])
    np.testing.assert_allclose(got_mean / norm.y_std, want_mean / norm.y_std, rtol=0, atol=1e-4)
    np.testing.assert_allclose(got_std / norm.y_std, want_std / norm.y_std, rtol=0, atol=1e-4)
    assert [a.result.confident for a in answers] == [s <= THRESHOLDS[0] for s in got_std]
    with pytest.raises(UnknownTask):
        runtime.predict_local("no-such-task", rows[0])


def test_swap_under_load_drops_no_request_and_mixes_no_versions(energy_global, versions):
    rows = _raw(energy_global, energy_global.x_test[:16])
    runtime = EdgeRuntime()
    reference: dict[int, list[float]] = {}
    for version in (2, 1):  # ends serving v1
        runtime.swap(TASK, *versions[version])
        reference[version] = [runtime.predict_local(TASK, row).result.mean for row in rows]
    assert reference[1] != reference[2]

    stop = threading.Event()
    answers: list[tuple[int, int, float]] = []
    errors: list[BaseException] = []

    def hammer(offset: int) -> None:
        i = offset
        while not stop.is_set():
            try:
                answer = runtime.predict_local(TASK, rows[i % len(rows)])
            except BaseException as exc:  # the assertion below reports it
                errors.append(exc)
                return
            answers.append((i % len(rows), answer.version, answer.result.mean))
            i += 1

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    try:
        for k in range(10):  # v1 -> v2 -> v1 ... built while the old one keeps serving
            stop.wait(0.02)
            runtime.swap(TASK, *versions[2 if k % 2 == 0 else 1])
        stop.wait(0.02)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)

    assert errors == []
    seen = Counter(version for _, version, _ in answers)
    assert set(seen) == {1, 2} and min(seen.values()) > 10, seen
    for row, version, mean in answers:
        assert mean == pytest.approx(reference[version][row], abs=1e-9)
    assert runtime.active(TASK) == (1, versions[1][0].sha256)


def test_store_keeps_current_and_previous_across_restarts_and_rolls_back(
    tmp_path, energy_global, versions
):
    (m1, f1), (m2, f2) = versions[1], versions[2]
    m3 = build_manifest(
        TASK, 3, "edge", "tflite", "float32", f1, THRESHOLDS, m1.normalization_json, [], None
    )
    store = ModelStore(tmp_path)
    assert store.tasks() == [] and store.current(TASK) is None
    for manifest, data in ((m1, f1), (m2, f2), (m3, f1)):
        path = store.install(manifest, data)
        assert (path / "edge.tflite").read_bytes() == data
    task_dir = tmp_path / "models" / TASK
    assert sorted(p.name for p in task_dir.iterdir()) == ["current", "previous", "v2", "v3"]

    reopened = ModelStore(tmp_path)  # a reboot
    assert reopened.tasks() == [TASK]
    assert reopened.current(TASK).manifest.version == 3
    assert reopened.previous(TASK) == (m2, f2)

    assert reopened.rollback(TASK) == (m2, f2)
    assert sorted(p.name for p in task_dir.iterdir()) == ["current", "v2"]
    assert reopened.previous(TASK) is None and reopened.rollback(TASK) is None

    runtime = EdgeRuntime()
    assert runtime.restore(ModelStore(tmp_path)) == {TASK: 2}
    assert runtime.active(TASK) == (2, m2.sha256)
    row = _raw(energy_global, energy_global.x_test[:1])[0]
    assert runtime.predict_local(TASK, row).version == 2


def test_a_damaged_current_version_is_rolled_back_at_start(tmp_path, versions):
    store = ModelStore(tmp_path)
    for version in (1, 2):
        store.install(*versions[version])
    model = tmp_path / "models" / TASK / "v2" / "edge.tflite"
    damaged = bytearray(model.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    model.write_bytes(bytes(damaged))
    with pytest.raises(StoredModelCorrupt, match="does not match"):
        store.current(TASK)

    runtime = EdgeRuntime()
    assert runtime.restore(ModelStore(tmp_path)) == {TASK: 1}
    assert runtime.active(TASK) == (1, versions[1][0].sha256)
    assert store.current(TASK) == versions[1]


def test_agent_modules_run_without_heavy_libraries(tmp_path, energy_global, versions):
    ModelStore(tmp_path).install(*versions[1])
    row = _raw(energy_global, energy_global.x_test[:1])[0]
    np.save(tmp_path / "row.npy", row)
    script = f"""
import sys
import numpy as np
import agent.ota
from agent.edge_runtime import EdgeRuntime
from agent.model_store import ModelStore

runtime = EdgeRuntime()
assert runtime.restore(ModelStore({str(tmp_path)!r})) == {{{TASK!r}: 1}}
answer = runtime.predict_local({TASK!r}, np.load({str(tmp_path / "row.npy")!r}))
print(answer.version, answer.result.mean)
print("heavy:", [name for name in {HEAVY!r} if name in sys.modules])
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    answered, heavy = out.stdout.strip().splitlines()[-2:]
    assert answered.startswith("1 ")
    assert heavy == "heavy: []"
