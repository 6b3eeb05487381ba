"""The Dundee study's pieces: clustering, federated rounds, the paper's DNN, bytes, the CLI."""

from __future__ import annotations

import csv
import itertools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.aggregate import make_strategy
from models.study import paper_dnn
from models.study.communication import raw_upload_bytes, update_bytes
from models.study.federation import (
    Client,
    PersonalRows,
    RowUsage,
    iid_clients,
    merge_personal,
    rescale_row_updates,
    run_rounds,
)
from models.study.station_clusters import cluster_stations, size_bounds

ROOT = Path(__file__).resolve().parents[1]


def _locations(n: int, missing: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    lat = np.r_[rng.normal(56.46, 0.01, n // 2), rng.normal(56.50, 0.01, n - n // 2)]
    lon = rng.normal(-2.97, 0.02, n)
    lat[:missing] = np.nan
    return pd.DataFrame({"latitude": lat, "longitude": lon}, index=[f"s{i}" for i in range(n)])


def test_clustering_places_stations_without_coordinates_and_respects_bounds():
    locations = _locations(30, missing=5)
    clusters = cluster_stations(locations, k=2, slack=0.1, seed=0)
    assert set(clusters.labels) == set(locations.index)
    assert clusters.without_coordinates == tuple(sorted(f"s{i}" for i in range(5)))
    located = [clusters.labels[s] for s in locations.index[5:]]
    counts = np.bincount(located, minlength=2)
    assert (clusters.size_min, clusters.size_max) == size_bounds(25, 2, 0.1)
    assert all(clusters.size_min <= c <= clusters.size_max for c in counts)
    assert sum(clusters.sizes()) == 30
    assert max(clusters.sizes()) - min(clusters.sizes()) <= max(counts) - min(counts) + 5
    assert list(clusters.of(np.array(["s7", "nowhere"])))[1] == -1


def test_clustering_on_real_dundee_uses_every_station(dundee):
    from models.study.station_clusters import station_locations

    locations = station_locations(dundee.sessions)
    clusters = cluster_stations(locations, k=2, slack=0.1)
    assert clusters.without_coordinates == ()  # the enriched file fills the publisher's gaps
    assert len(clusters.labels) == len(locations)
    assert all(clusters.size_min <= c <= clusters.size_max for c in clusters.sizes())


def _toy(n: int = 200, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    z = (x @ rng.normal(size=d) + 0.1 * rng.normal(size=n)).astype(np.float32)
    return x, z


def test_paper_dnn_gradients_match_finite_differences():
    x, z = _toy(20, 4)
    settings = paper_dnn.DnnSettings(hidden=5)
    weights = [w.astype(np.float64) for w in paper_dnn.init_weights(4, settings, 0)]
    weights[1] += 0.1  # non-zero biases exercise their gradients
    _, grads = paper_dnn.loss_and_gradients(weights, x.astype(np.float64), z.astype(np.float64))
    eps = 1e-6
    for a, (w, g) in enumerate(zip(weights, grads, strict=True)):
        flat = w.reshape(-1)
        for i in range(0, flat.size, max(1, flat.size // 5)):
            old = flat[i]
            flat[i] = old + eps
            up, _ = paper_dnn.loss_and_gradients(weights, x, z)
            flat[i] = old - eps
            down, _ = paper_dnn.loss_and_gradients(weights, x, z)
            flat[i] = old
            numeric = (up - down) / (2 * eps)
            assert g.reshape(-1)[i] == pytest.approx(numeric, rel=1e-3, abs=1e-5), (a, i)


def test_paper_dnn_learns_a_linear_target():
    x, z = _toy()
    settings = paper_dnn.DnnSettings(epochs=30, batch_size=32, dropout=0.0)
    weights = paper_dnn.train(paper_dnn.init_weights(6, settings, 0), x, z, settings, 0)
    mse = float(np.mean((paper_dnn.predict(weights, x) - z) ** 2))
    assert mse < 0.1 * float(np.var(z))


def test_fedavg_of_one_client_is_that_clients_training():
    x, z = _toy()
    settings = paper_dnn.DnnSettings(epochs=1, batch_size=32)
    init = paper_dnn.init_weights(6, settings, 0)

    def local(weights, client, round_index):
        return paper_dnn.train(weights, client.x, client.z, settings, [round_index, 7])

    federated = run_rounds(init, [Client("only", x, z)], local, make_strategy("fedavg"), 3)
    central = init
    for r in range(3):
        central = paper_dnn.train(central, x, z, settings, [r, 7])
    for f, c in zip(federated, central, strict=True):
        np.testing.assert_allclose(f, c, rtol=1e-6, atol=1e-7)


def test_fedavg_rounds_weight_clients_by_samples():
    x, z = _toy(90)
    clients = [Client("big", x[:60], z[:60]), Client("small", x[60:], z[60:])]
    init = [np.zeros(2, np.float32)]

    def local(weights, client, round_index):
        return [np.full(2, float(client.num_examples), np.float32)]

    out = run_rounds(init, clients, local, make_strategy("fedavg"), 1)
    np.testing.assert_allclose(out[0], (60 * 60 + 30 * 30) / 90)


def test_personal_rows_are_not_averaged():
    from models.aggregate import ClientResult, fedavg

    a = [np.array([[1.0, 1.0], [0.0, 0.0], [5.0, 5.0]])]
    b = [np.array([[0.0, 0.0], [3.0, 3.0], [7.0, 7.0]])]
    results = [ClientResult("a", a, 1), ClientResult("b", b, 3)]
    personal = PersonalRows(0, {"a": np.array([0]), "b": np.array([1])})
    merged = merge_personal(fedavg(results), results, personal)[0]
    np.testing.assert_allclose(merged[0], [1.0, 1.0])  # a's own row
    np.testing.assert_allclose(merged[1], [3.0, 3.0])  # b's own row
    np.testing.assert_allclose(merged[2], [6.5, 6.5])  # shared row: weighted average


def test_row_usage_averages_each_row_over_its_users_only():
    from models.aggregate import ClientResult, fedavg

    current = [np.zeros((3, 2))]
    a = [np.array([[2.0, 2.0], [0.0, 0.0], [4.0, 4.0]])]  # a never uses row 1
    b = [np.array([[0.0, 0.0], [6.0, 6.0], [8.0, 8.0]])]  # b never uses row 0
    results = [ClientResult("a", a, 1), ClientResult("b", b, 3)]
    usage = RowUsage(0, {"a": np.array([1, 0, 1]), "b": np.array([0, 3, 1])})
    merged = fedavg(rescale_row_updates(current, results, usage))[0]
    np.testing.assert_allclose(merged[0], [2.0, 2.0])  # only a's update, not shrunk by 1/4
    np.testing.assert_allclose(merged[1], [6.0, 6.0])  # only b's
    np.testing.assert_allclose(merged[2], [6.0, 6.0])  # equal use: plain mean of 4 and 8
    plain = fedavg(results)[0]
    np.testing.assert_allclose(plain[0], [0.5, 0.5])  # what FedAvg alone would have done


def test_row_usage_counts_nonzero_inputs():
    x = np.array([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]], np.float32)
    usage = RowUsage.of(0, [Client("s", x, np.zeros(2, np.float32))])
    np.testing.assert_array_equal(usage.counts["s"], [2, 0, 1])


def test_rounds_with_client_sampling_train_only_the_drawn_clients():
    x, z = _toy(40)
    clients = [Client(f"c{i}", x[i * 10 : i * 10 + 10], z[i * 10 : i * 10 + 10]) for i in range(4)]
    seen: list[tuple[int, str]] = []

    def local(weights, client, round_index):
        seen.append((round_index, client.client_id))
        return weights

    run_rounds([np.zeros(1)], clients, local, make_strategy("fedavg"), 5, per_round=2, seed=1)
    assert len(seen) == 10
    assert all(sum(r == k for r, _ in seen) == 2 for k in range(5))
    assert len({c for _, c in seen}) > 2  # different clients are drawn in different rounds


def test_cosine_decay_runs_from_start_to_end():
    assert paper_dnn.cosine(0.01, 1e-4, 0, 20) == pytest.approx(0.01)
    assert paper_dnn.cosine(0.01, 1e-4, 19, 20) == pytest.approx(1e-4)
    rates = [paper_dnn.cosine(0.01, 1e-4, i, 20) for i in range(20)]
    assert all(a > b for a, b in itertools.pairwise(rates))


def test_hgb_on_rich_features_needs_the_rich_codes():
    from models.study.baselines import HGB_RICH, BaselineInputs, fit_predict

    x, z = _toy(50, 3)
    codes = np.abs(x * 3).astype(np.int64)
    with pytest.raises(ValueError, match="rich_codes"):
        fit_predict(HGB_RICH, BaselineInputs(x, z, x, codes, codes), 0, 100)
    rich = np.column_stack([codes, codes])
    pred = fit_predict(HGB_RICH, BaselineInputs(x, z, x, codes, codes, rich, rich), 0, 100)
    assert pred.shape == (50,) and np.isfinite(pred).all()


def test_hgb_with_vehicle_history_reads_the_history_columns():
    from models.study.baselines import HGB_VEHICLE, BaselineInputs, fit_predict

    x, z = _toy(200, 3)
    codes = np.abs(x * 3).astype(np.int64)
    rich = np.column_stack([codes, codes])
    with pytest.raises(ValueError, match="history"):
        fit_predict(HGB_VEHICLE, BaselineInputs(x, z, x, codes, codes, rich, rich), 0, 100)
    # the target is a function of the history column alone: only a model reading it fits it
    history = np.random.default_rng(1).normal(size=(200, 1))
    target = 3.0 * history[:, 0]
    inputs = BaselineInputs(x, target, x, codes, codes, rich, rich, history, history)
    pred = fit_predict(HGB_VEHICLE, inputs, 0, 100)
    assert np.corrcoef(pred, target)[0, 1] > 0.95


def test_iid_clients_partition_the_training_set():
    x, z = _toy(101)
    clients = iid_clients(x, z, 5, seed=0)
    assert sum(c.num_examples for c in clients) == 101
    assert sorted(np.concatenate([c.z for c in clients])) == sorted(z)


def test_update_bytes_are_the_wire_codecs():
    from proto.blob_codec import blob_to_weights, weights_to_blob

    weights = paper_dnn.init_weights(98, paper_dnn.DnnSettings(), 0)
    blob, chunks = weights_to_blob(weights)
    assert update_bytes(weights) == blob.ByteSize() + sum(c.ByteSize() for c in chunks)
    assert update_bytes(weights) < sum(w.nbytes for w in weights) * 1.1
    for got, want in zip(blob_to_weights(blob, chunks), weights, strict=True):
        np.testing.assert_array_equal(got, want)


def test_raw_upload_bytes_encode_session_batches(dundee):
    from models.datasets.record import iter_sessions
    from proto import sessions_pb2
    from proto.blob_codec import pack_blob, unpack_blob
    from proto.session_codec import session_to_proto

    some = dundee.sessions.iloc[:200]
    batch = sessions_pb2.SessionBatch(sessions=[session_to_proto(s) for s in iter_sessions(some)])
    blob, _ = pack_blob(batch.SerializeToString())
    assert raw_upload_bytes(some) == blob.ByteSize()
    decoded = sessions_pb2.SessionBatch.FromString(unpack_blob(blob))
    assert len(decoded.sessions) == 200
    assert raw_upload_bytes(some) < len(batch.SerializeToString())


def test_study_quick_runs_end_to_end(tmp_path):
    from models.study.dundee_study import ABLATION, METHODS

    out = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "evfl.cli", "study", "dundee", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,  # a guard against hangs, not a speed check (shared CI cores)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RMSE" in proc.stdout and "wall time" in proc.stdout
    (folder,) = out.iterdir()
    assert (folder / "dundee_study.png").stat().st_size > 0
    with (folder / "scores_so_far.csv").open() as f:
        raw = list(csv.DictReader(f))
    assert {r["method"] for r in raw if r["ablation"] == "0"} == set(METHODS)
    with (folder / "dundee_study.csv").open() as f:
        rows = [r for r in csv.reader(f) if r]
    results = {r[1]: r for r in rows if r[0] == "result"}
    assert set(results) == set(METHODS)
    for r in results.values():
        assert r[2:4] == ["random", "0.8"]
        assert all(math.isfinite(float(v)) for v in r[4:8])
        assert float(r[4]) > 0
    ablation = [r for r in rows if r[0] == "ablation"]
    assert [r[1] for r in ablation] == [v.label for v in ABLATION]
    communication = [r for r in rows if r[0] == "communication"]
    assert {r[1] for r in communication} == {"IID subsets (J=5)", "one client per station"}
    assert all(int(r[4]) > 0 and int(r[5]) > 0 for r in communication)


def test_evfl_inputs_add_the_vehicle_history_and_drop_the_month_on_the_time_split(dundee):
    from models.study.dundee_study import SplitData, Task, subsample
    from models.vehicle_history import HISTORY_COLUMNS

    sessions = subsample(dundee.sessions, 4_000)
    random = SplitData.make(sessions, Task("random", 0.8, 0))
    months = sum(n.startswith("month=") for n in random.rich_names)
    assert months == 12
    k = len(HISTORY_COLUMNS)
    assert random.ours_x.shape == (len(sessions), random.rich_x.shape[1] + k)
    np.testing.assert_array_equal(random.ours_x[:, : random.rich_x.shape[1]], random.rich_x)
    has = random.history[:, -1] > 0
    assert 0 < has.sum() < len(sessions)  # only June-September rows carry a vehicle id
    np.testing.assert_array_equal(random.ours_x[:, -1], has)
    timed = SplitData.make(sessions, Task("time", 0.8, 0))
    assert timed.ours_x.shape[1] == timed.rich_x.shape[1] - months + k


def test_claims_are_checked_against_the_runs_own_means():
    from models.study.baselines import HGB_RICH, HGB_VEHICLE
    from models.study.claims import check_claims
    from models.study.dundee_study import (
        EDL,
        EDL_VEHICLE,
        FEDL_CLUSTER,
        FEDL_IID,
        FEDL_STATION_FIXED,
        OURS_GLOBAL,
        OURS_PERSONAL,
        Summary,
    )

    def row(method, rmse, ratio=0.8, split="random"):
        return Summary(method, split, ratio, rmse, 0.01, rmse * 0.75, 0.01, 3, 1.0)

    rows = [
        row(EDL, 5.80), row(FEDL_IID, 5.85), row(EDL, 5.80, 0.5), row(FEDL_IID, 5.90, 0.5),
        row(FEDL_CLUSTER, 5.77), row(FEDL_STATION_FIXED, 5.90), row(HGB_RICH, 5.63),
        row(OURS_GLOBAL, 5.60), row(OURS_PERSONAL, 5.50), row(HGB_VEHICLE, 5.30),
        row(EDL_VEHICLE, 5.33), row(OURS_PERSONAL, 1.0, split="time"),  # other splits: ignored
    ]  # fmt: skip
    claims = {c.claim: c for c in check_claims(rows)}
    iid = claims["FEDL (IID) within 1% of EDL at every ratio"]
    assert iid.met is False and "50%: +1.72%" in iid.measured and "80%: +0.86%" in iid.measured
    assert claims["FEDL + clustering at 80% <= 5.76"].met is False
    assert claims["FEDL per station within 2% of EDL at 80%"].met is True  # +1.72%
    ours = claims["ours below every centralized baseline at 80%"]
    assert ours.met is True and ours.measured.startswith(f"{OURS_PERSONAL} 5.500 vs {HGB_RICH}")
    assert claims["ours at 80% <= 5.55 (aim)"].met is True
    ref = claims["reference at 80%: centralized models on ours' inputs"]
    assert ref.met is None and "5.300" in ref.measured  # shown, never a target


def test_scores_split_the_error_between_seen_and_new_stations():
    from models.study.dundee_study import Task, _score, summarize

    y = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.0, 2.0, 5.0, 7.0])  # errors 0, 0, 2, 3
    new = np.array([False, False, True, True])
    task = Task("time", 0.8, 0)
    s = _score("m", task, y, pred, 0.0, new)
    assert s.rmse == pytest.approx(np.sqrt(13 / 4))
    assert s.rmse_seen == 0.0 and s.rmse_new == pytest.approx(np.sqrt(13 / 2))
    none_new = _score("m", task, y, y, 0.0, np.zeros(4, bool))
    assert none_new.rmse_new is None
    (summary,) = summarize([s, _score("m", Task("time", 0.8, 1), y, y, 0.0, new)])
    assert summary.rmse_new == pytest.approx(np.sqrt(13 / 2) / 2)
