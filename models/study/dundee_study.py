"""The FEDL paper's energy study on Dundee, end to end and in process.

For each (split, training ratio, seed) it trains the paper's baselines (and HistGradientBoosting
and EDL on the rich features, the centralized bar for evfl's own model, and both again with the
car's own charging history added), EDL, FEDL (IID and one client per station), their clustered
variants, evfl's federated DNN per station on the rich features and the car's history (global and
locally fine-tuned) and evfl's federated early-exit model, and returns plain scores; the CLI
prints and saves them. Tasks are independent, so they run in a process pool (one BLAS/TensorFlow
thread each) to use both cores without oversubscription.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from multiprocessing import get_context

import numpy as np
import pandas as pd

from models.aggregate import Strategy, make_strategy
from models.features import TabularEncoder, category_strings
from models.splits import random_split, time_split
from models.study import paper_dnn
from models.study.baselines import BASELINES, BaselineInputs, fit_predict
from models.study.federation import (
    Client,
    PersonalRows,
    RowUsage,
    iid_clients,
    run_rounds,
    station_clients,
    station_rows,
)
from models.study.paper_dnn import DnnSettings, TargetScale
from models.study.station_clusters import cluster_stations, station_locations
from models.vehicle_history import HistoryScale, vehicle_history

EDL = "EDL"
FEDL_IID = "FEDL (IID subsets)"
FEDL_STATION_PLAIN = "FEDL per station: FedAvg"
FEDL_STATION_FIXED = "FEDL per station: row-wise FedAvgM + decaying rate"
EDL_CLUSTER = "EDL + clustering"
FEDL_CLUSTER = "FEDL + clustering (IID)"
EDL_RICH = "EDL, rich features"
EDL_VEHICLE = "EDL, rich + vehicle history"
OURS_GLOBAL = "Ours: federated DNN per station, rich + vehicle history"
OURS_PERSONAL = "Ours: federated DNN per station + local fine-tuning"
OURS_CLOUD = "Ours: early-exit per station, cloud exit"
OURS_EDGE = "Ours: early-exit per station, edge exit"
METHODS = (
    *BASELINES,
    EDL,
    EDL_RICH,
    EDL_VEHICLE,
    FEDL_IID,
    FEDL_STATION_PLAIN,
    FEDL_STATION_FIXED,
    EDL_CLUSTER,
    FEDL_CLUSTER,
    OURS_GLOBAL,
    OURS_PERSONAL,
    OURS_CLOUD,
    OURS_EDGE,
)


@dataclass(frozen=True)
class StationVariant:
    """One way of running per-station FEDL of the paper's DNN (an ablation row)."""

    label: str
    strategy: str = "fedavg"
    strategy_params: tuple[tuple[str, float], ...] = ()
    learning_rate: float = 0.01
    local_steps: int | None = None  # None: one local epoch
    personal_rows: bool = False
    row_usage: bool = False  # average each first-layer row over the stations that use it
    final_learning_rate: float | None = None  # cosine decay of the local rate over the rounds

    def make_strategy(self) -> Strategy:
        return make_strategy(self.strategy, **dict(self.strategy_params))


PLAIN = StationVariant("FedAvg, 1 local epoch, lr 0.01")
PERSONAL_FIXED = StationVariant(
    "personal station rows + 10 local steps, lr 0.003",
    learning_rate=0.003,
    local_steps=10,
    personal_rows=True,
)
# validation RMSE at 80%, seed 0 (EDL 5.748): 10 steps 5.792, 30 steps 5.782 at 3x the time
FIXED = StationVariant(
    "row-wise FedAvgM (momentum 0.9) + 10 local steps, lr 0.01 decaying to 1e-4",
    "fedavgm",
    (("server_lr", 1.0), ("momentum", 0.9)),
    local_steps=10,
    row_usage=True,
    final_learning_rate=1e-4,
)
ABLATION = (
    PLAIN,
    StationVariant("FedAvgM (momentum 0.9)", "fedavgm", (("server_lr", 1.0), ("momentum", 0.9))),
    StationVariant("FedAdam (server lr 0.01)", "fedadam", (("server_lr", 0.01),)),
    StationVariant("local lr 0.001", learning_rate=0.001),
    StationVariant("10 local steps, lr 0.003", learning_rate=0.003, local_steps=10),
    StationVariant("personal station rows", personal_rows=True),
    StationVariant(
        "personal rows + FedAvgM",
        "fedavgm",
        (("server_lr", 1.0), ("momentum", 0.9)),
        personal_rows=True,
    ),
    PERSONAL_FIXED,
    StationVariant("row-wise averaging", row_usage=True),
    FIXED,
)


@dataclass(frozen=True)
class StudySettings:
    """Budgets. The full study costs about 2,500 CPU-seconds (16 tasks; 1,248 s of wall time on
    2 cores); ``--ratios``, ``--seeds``, ``--no-time-split`` and ``--no-ablation`` run less."""

    ratios: tuple[float, ...] = (0.8, 0.7, 0.6, 0.5)
    seeds: int = 3
    time_split: bool = True
    # Cosine decay of Adam's rate to 1e-4 (validation RMSE at 80%, seed 0: 5.824 -> 5.745)
    edl: DnnSettings = field(
        default_factory=lambda: DnnSettings(epochs=20, batch_size=128, final_learning_rate=1e-4)
    )
    iid_clients: int = 5
    # the round's rate follows EDL's cosine, one step per round; validation (80%, seeds 0/1,
    # FEDL + clustering): 20 rounds 5.747/5.668, 30 rounds 5.739/5.668
    iid_rounds: int = 30
    iid_local_epochs: int = 4  # validation: 1 -> 5.798, 2 -> 5.760, 4 -> 5.741 (EDL 5.745)
    station_rounds: int = 60
    station_batch: int = 64
    clusters: int = 2
    cluster_slack: float = 0.1  # each cluster holds n/k ± 10% of the stations
    svr_rows: int = 5_000
    # evfl's federated DNN: rich features, one client per station (choices: validation split)
    ours: DnnSettings = field(
        default_factory=lambda: DnnSettings(
            learning_rate=0.01, final_learning_rate=1e-4, batch_size=64, steps=30
        )
    )
    ours_rounds: int = 60
    ours_strategy: tuple[str, tuple[tuple[str, float], ...]] = (
        "fedavgm",
        (("server_lr", 1.0), ("momentum", 0.9)),
    )
    # validation RMSE at 80%, seed 0: global 5.752; fine-tuned 20 steps 5.732, 50 steps 5.727,
    # 50 steps with dropout 0.3 5.711 (HGB on the same features: 5.632)
    finetune: DnnSettings = field(
        default_factory=lambda: DnnSettings(
            learning_rate=1e-3, batch_size=64, steps=50, dropout=0.3
        )
    )
    # validation at 80%, seed 0 (fog exit): 40 rounds 5.546, 20 rounds 5.648
    best_rounds: int = 40
    best_steps: int = 10
    # the early-exit model is the costliest task (~55 s); other ratios run the DNN rows only
    best_ratios: tuple[float, ...] = (0.8,)
    best_strategy: tuple[str, tuple[tuple[str, float], ...]] = (
        "fedavgm",
        (("server_lr", 1.0), ("momentum", 0.9)),
    )
    ablation: bool = True
    subsample: int | None = None  # use only this many sessions (quick runs)
    workers: int = 2

    @classmethod
    def quick(cls) -> StudySettings:
        return cls(
            ratios=(0.8,),
            seeds=1,
            time_split=False,
            edl=DnnSettings(epochs=3, batch_size=128, final_learning_rate=1e-4),
            iid_rounds=3,
            iid_local_epochs=1,
            station_rounds=3,
            svr_rows=1_000,
            ours=DnnSettings(learning_rate=0.01, final_learning_rate=1e-4, steps=3),
            ours_rounds=3,
            finetune=DnnSettings(learning_rate=1e-3, steps=3),
            best_rounds=2,
            best_steps=2,
            subsample=6_000,
            workers=1,
        )


@dataclass(frozen=True)
class Score:
    method: str
    split: str  # "random" or "time"
    ratio: float
    seed: int
    rmse: float
    mae: float
    seconds: float
    # RMSE on test sessions at stations with / without training sessions (None: no such rows);
    # the time split's test period has charge points that opened after the training period
    rmse_seen: float | None = None
    rmse_new: float | None = None


@dataclass(frozen=True)
class Task:
    split: str
    ratio: float
    seed: int
    ablation: bool = False


@dataclass(frozen=True)
class SplitData:
    """One split's arrays; features are fitted on the training rows only."""

    sessions: pd.DataFrame
    train: np.ndarray
    test: np.ndarray
    x: np.ndarray  # paper one-hot features, every row, left unscaled (one-hot stays 0/1)
    names: tuple[str, ...]
    y: np.ndarray
    stations: np.ndarray
    codes: np.ndarray  # station, weekday, hour as integer codes
    rich_x: np.ndarray  # rich one-hot features (+ month, charger model, connector)
    rich_names: tuple[str, ...]
    rich_codes: np.ndarray  # the six rich features as integer codes (for HGB)
    history: np.ndarray  # the car's own past sessions, raw (models.vehicle_history)
    ours_x: np.ndarray  # evfl's inputs: rich one-hot + scaled history (no month: time split)

    @classmethod
    def make(cls, sessions: pd.DataFrame, task: Task) -> SplitData:
        if task.split == "time":
            times = sessions["start"].dt.tz_convert("UTC").to_numpy()
            train, test = time_split(times, task.ratio)
        else:
            train, test = random_split(len(sessions), task.ratio, task.seed)
        encoder = TabularEncoder.fit(sessions.iloc[train], "paper")
        x = encoder.transform(sessions)
        stations = category_strings(sessions["station_id"])
        lookup = {s: i for i, s in enumerate(encoder.stations)}
        start = sessions["start"]
        codes = np.column_stack(
            [
                [lookup.get(s, len(lookup)) for s in stations],
                start.dt.day_of_week.to_numpy(),
                start.dt.hour.to_numpy(),
            ]
        )
        rich = TabularEncoder.fit(sessions.iloc[train], "rich")
        rich_codes = np.column_stack(
            [
                codes,
                start.dt.month.to_numpy(),
                _codes(category_strings(sessions["charger_model"]), rich.charger_models),
                _codes(category_strings(sessions["connector"]), rich.connectors),
            ]
        )
        y = sessions["energy_kwh"].to_numpy(np.float64)
        history = vehicle_history(sessions)
        rich_x = rich.transform(sessions)
        ours_x = np.concatenate([rich_x, HistoryScale.fit(history[train]).transform(history)], 1)
        if task.split == "time":
            # A month is seen once in a year of data: the time split's test months have no
            # training rows of their own year, so evfl's model drops the month there.
            months = np.array([n.startswith("month=") for n in rich.names])
            ours_x = ours_x[:, np.concatenate([~months, np.ones(history.shape[1], bool)])]
        return cls(
            sessions,
            train,
            test,
            x,
            encoder.names,
            y,
            stations,
            codes,
            rich_x,
            rich.names,
            rich_codes,
            history,
            ours_x,
        )


def _codes(values: np.ndarray, vocabulary: tuple[str, ...]) -> np.ndarray:
    """Integer codes of a training-fitted vocabulary; unseen values get their own code."""
    lookup = {v: i for i, v in enumerate(vocabulary)}
    return np.array([lookup.get(v, len(lookup)) for v in values], dtype=np.int64)


FINETUNE_ROUND = 1_000_000  # seeds local fine-tuning apart from every federated round


def _client_seed(seed: int, round_index: int, client_id: str) -> list[int]:
    return [seed, round_index, zlib.crc32(client_id.encode())]


def _dnn_trainer(
    settings: DnnSettings, seed: int, rounds: int = 1
) -> Callable[[list, Client, int], list]:
    """Local training; with ``settings.final_learning_rate`` the rate decays over the rounds
    (cosine, constant within a round), so federated runs follow EDL's schedule."""
    start, end = settings.learning_rate, settings.final_learning_rate
    local_settings = replace(settings, final_learning_rate=None)

    def local(weights: list, client: Client, round_index: int) -> list:
        rng_seed = _client_seed(seed, round_index, client.client_id)
        rate = start if end is None else paper_dnn.cosine(start, end, round_index, rounds)
        return paper_dnn.train(
            weights, client.x, client.z, replace(local_settings, learning_rate=rate), rng_seed
        )

    return local


def train_edl(x: np.ndarray, y: np.ndarray, settings: DnnSettings, seed: int) -> Predictor:
    scale = TargetScale.fit(y)
    init = paper_dnn.init_weights(x.shape[1], settings, seed)
    weights = paper_dnn.train(init, x, scale.forward(y), settings, seed)
    return Predictor(weights, scale)


def train_fedl_iid(x: np.ndarray, y: np.ndarray, settings: StudySettings, seed: int) -> Predictor:
    """The paper's FEDL: J random equal subsets, FedAvg, a few local epochs per round."""
    scale = TargetScale.fit(y)  # in deployment: a first round of sums and counts
    local = replace(settings.edl, epochs=settings.iid_local_epochs)
    clients = iid_clients(x, scale.forward(y), settings.iid_clients, seed)
    init = paper_dnn.init_weights(x.shape[1], local, seed)
    rounds = settings.iid_rounds
    weights = run_rounds(
        init, clients, _dnn_trainer(local, seed, rounds), make_strategy("fedavg"), rounds
    )
    return Predictor(weights, scale)


def train_fedl_station(
    x: np.ndarray,
    y: np.ndarray,
    stations: np.ndarray,
    names: Sequence[str],
    variant: StationVariant,
    settings: StudySettings,
    seed: int,
) -> Predictor:
    scale = TargetScale.fit(y)
    local = DnnSettings(
        learning_rate=variant.learning_rate,
        batch_size=settings.station_batch,
        epochs=1,
        steps=variant.local_steps,
        final_learning_rate=variant.final_learning_rate,
    )
    clients = station_clients(x, scale.forward(y), stations)
    personal = PersonalRows(0, station_rows(clients, names)) if variant.personal_rows else None
    init = paper_dnn.init_weights(x.shape[1], local, seed)
    rounds = settings.station_rounds
    weights = run_rounds(
        init,
        clients,
        _dnn_trainer(local, seed, rounds),
        variant.make_strategy(),
        rounds,
        personal,
        row_usage=RowUsage.of(0, clients) if variant.row_usage else None,
    )
    return Predictor(weights, scale)


@dataclass(frozen=True)
class Predictor:
    weights: list
    scale: TargetScale

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.scale.inverse(paper_dnn.predict(self.weights, x))


def _rmse(err: np.ndarray) -> float | None:
    return float(np.sqrt(np.mean(err**2))) if len(err) else None


def _score(
    method: str, task: Task, y: np.ndarray, pred: np.ndarray, started: float, new: np.ndarray
) -> Score:
    """``new`` marks test rows whose station has no training rows."""
    err = np.asarray(pred, np.float64) - y
    return Score(
        method,
        task.split,
        task.ratio,
        task.seed,
        float(np.sqrt(np.mean(err**2))),
        float(np.mean(np.abs(err))),
        time.time() - started,
        _rmse(err[~new]),
        _rmse(err[new]),
    )


def clustered(
    data: SplitData, settings: StudySettings, seed: int, train_one: Callable
) -> np.ndarray:
    """Test predictions of one model per station cluster, merged back in test order."""
    locations = station_locations(data.sessions.iloc[data.train])
    clusters = cluster_stations(locations, settings.clusters, settings.cluster_slack, seed)
    train_label = clusters.of(data.stations[data.train])
    test_label = clusters.of(data.stations[data.test])
    pred = np.full(len(data.test), float(np.mean(data.y[data.train])))  # unseen station: mean
    for k in range(settings.clusters):
        rows = data.train[train_label == k]
        mine = test_label == k
        if len(rows) and mine.any():
            model = train_one(data.x[rows], data.y[rows])
            pred[mine] = model(data.x[data.test[mine]])
    return pred


def federated_personalized(
    data: SplitData, settings: StudySettings, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """evfl's federated DNN on the rich features and the car's own charging history (what the
    vehicle agent knows at plug-in): one client per station, FedAvgM with each
    first-layer row averaged over the stations that use it (so a station's own row stays its
    own), the rate decaying over the rounds; then every station fine-tunes the global model on
    its own training rows and serves its own sessions with it. Returns test predictions (kWh)
    of the global and the fine-tuned models."""
    x, train, test = data.ours_x, data.train, data.test
    scale = TargetScale.fit(data.y[train])
    clients = station_clients(x[train], scale.forward(data.y[train]), data.stations[train])
    init = paper_dnn.init_weights(x.shape[1], settings.ours, seed)
    name, params = settings.ours_strategy
    weights = run_rounds(
        init,
        clients,
        _dnn_trainer(settings.ours, seed, settings.ours_rounds),
        make_strategy(name, **dict(params)),
        settings.ours_rounds,
        row_usage=RowUsage.of(0, clients),
    )
    global_pred = scale.inverse(paper_dnn.predict(weights, x[test]))
    personal = global_pred.copy()
    test_stations = data.stations[test]
    for c in clients:
        mine = test_stations == c.client_id
        if mine.any():
            local = paper_dnn.train(
                weights,
                c.x,
                c.z,
                settings.finetune,
                _client_seed(seed, FINETUNE_ROUND, c.client_id),
            )
            personal[mine] = scale.inverse(paper_dnn.predict(local, x[test[mine]]))
    return global_pred, personal


def best_federated(data: SplitData, settings: StudySettings, seed: int) -> np.ndarray:
    """evfl's model: the partitioned early-exit network, one client per station, federated
    on evfl's inputs (rich features + the car's history), with what closed the drift gap
    (fixed local steps, each first-layer row averaged over the stations that use it, server
    momentum). Returns test predictions (kWh) per exit, (n_test, 3)."""
    from models.study.early_exit_federated import EarlyExitTrainer
    from models.use_cases import UseCase, default_model_config

    x, train = data.ours_x, data.train
    scale = TargetScale.fit(data.y[train])
    config = default_model_config(UseCase("dundee", "energy"), (x.shape[1],))
    trainer = EarlyExitTrainer(config, seed, settings.best_steps, settings.station_batch)
    clients = station_clients(x[train], scale.forward(data.y[train]), data.stations[train])
    name, params = settings.best_strategy
    weights = run_rounds(
        trainer.initial_weights(),
        clients,
        trainer,
        make_strategy(name, **dict(params)),
        settings.best_rounds,
        row_usage=RowUsage.of(trainer.kernel_index(), clients),
    )
    return scale.inverse(trainer.predict_means(weights, x[data.test]))


def run_task(sessions: pd.DataFrame, task: Task, settings: StudySettings) -> list[Score]:
    """Every method on one split, or the per-station ablation when ``task.ablation``."""
    data = SplitData.make(sessions, task)
    x_tr, y_tr = data.x[data.train], data.y[data.train]
    x_te, y_te = data.x[data.test], data.y[data.test]
    st_tr, seed = data.stations[data.train], task.seed
    new = ~np.isin(data.stations[data.test], np.unique(st_tr))
    scores: list[Score] = []

    def timed(method: str, make: Callable[[], np.ndarray]) -> None:
        started = time.time()
        scores.append(_score(method, task, y_te, make(), started, new))

    if task.ablation:
        for v in ABLATION:
            timed(
                v.label,
                lambda v=v: train_fedl_station(x_tr, y_tr, st_tr, data.names, v, settings, seed)(
                    x_te
                ),
            )
        return scores

    inputs = BaselineInputs(
        x_tr,
        y_tr,
        x_te,
        data.codes[data.train],
        data.codes[data.test],
        data.rich_codes[data.train],
        data.rich_codes[data.test],
        data.history[data.train],
        data.history[data.test],
    )
    for name in BASELINES:
        timed(name, lambda name=name: fit_predict(name, inputs, seed, settings.svr_rows))
    timed(EDL, lambda: train_edl(x_tr, y_tr, settings.edl, seed)(x_te))
    rich_tr, rich_te = data.rich_x[data.train], data.rich_x[data.test]
    timed(EDL_RICH, lambda: train_edl(rich_tr, y_tr, settings.edl, seed)(rich_te))
    ours_tr, ours_te = data.ours_x[data.train], data.ours_x[data.test]
    timed(EDL_VEHICLE, lambda: train_edl(ours_tr, y_tr, settings.edl, seed)(ours_te))
    timed(FEDL_IID, lambda: train_fedl_iid(x_tr, y_tr, settings, seed)(x_te))
    for method, variant in ((FEDL_STATION_PLAIN, PLAIN), (FEDL_STATION_FIXED, FIXED)):
        timed(
            method,
            lambda v=variant: train_fedl_station(x_tr, y_tr, st_tr, data.names, v, settings, seed)(
                x_te
            ),
        )
    timed(
        EDL_CLUSTER,
        lambda: clustered(data, settings, seed, lambda x, y: train_edl(x, y, settings.edl, seed)),
    )
    timed(
        FEDL_CLUSTER,
        lambda: clustered(data, settings, seed, lambda x, y: train_fedl_iid(x, y, settings, seed)),
    )
    started = time.time()
    global_pred, personal_pred = federated_personalized(data, settings, seed)
    scores.append(_score(OURS_GLOBAL, task, y_te, global_pred, started, new))
    scores.append(_score(OURS_PERSONAL, task, y_te, personal_pred, started, new))
    if task.split == "time" or task.ratio in settings.best_ratios:
        started = time.time()
        exits = best_federated(data, settings, seed)
        scores.append(_score(OURS_CLOUD, task, y_te, exits[:, 2], started, new))
        scores.append(_score(OURS_EDGE, task, y_te, exits[:, 0], started, new))
    return scores


def _run_in_worker(sessions: pd.DataFrame, task: Task, settings: StudySettings) -> list[Score]:
    """One BLAS and one TensorFlow thread per worker: the pool supplies the parallelism."""
    from threadpoolctl import threadpool_limits

    if settings.workers > 1:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        with threadpool_limits(1):
            return run_task(sessions, task, settings)
    return run_task(sessions, task, settings)


def tasks_for(settings: StudySettings) -> list[Task]:
    """Ablation first (it is the longest single task), then every split."""
    tasks = [Task("random", settings.ratios[0], 0, ablation=True)] if settings.ablation else []
    splits = [("random", r) for r in settings.ratios]
    if settings.time_split:
        splits.append(("time", 0.8))
    tasks += [Task(s, r, seed) for s, r in splits for seed in range(settings.seeds)]
    return tasks


@dataclass(frozen=True)
class StudyResult:
    scores: list[Score]
    ablation: list[Score]
    seconds: float
    sessions: int
    tasks: int = 0
    notes: dict[str, str] = field(default_factory=dict)


def subsample(sessions: pd.DataFrame, rows: int | None, seed: int = 0) -> pd.DataFrame:
    if rows is None or rows >= len(sessions):
        return sessions
    keep = np.sort(np.random.default_rng(seed).choice(len(sessions), rows, replace=False))
    return sessions.iloc[keep].reset_index(drop=True)


def run_study(
    sessions: pd.DataFrame,
    settings: StudySettings,
    progress: Callable[[Task, list[Score]], None] | None = None,
) -> StudyResult:
    started = time.time()
    sessions = subsample(sessions, settings.subsample)
    tasks = tasks_for(settings)
    done: list[tuple[Task, list[Score]]] = []
    if settings.workers <= 1:
        for task in tasks:
            done.append((task, run_task(sessions, task, settings)))
            if progress:
                progress(*done[-1])
    else:
        context = get_context("spawn")
        with ProcessPoolExecutor(settings.workers, mp_context=context) as pool:
            futures = {pool.submit(_run_in_worker, sessions, t, settings): t for t in tasks}
            for future in as_completed(futures):
                done.append((futures[future], future.result()))
                if progress:
                    progress(*done[-1])
    scores = [s for t, result in done if not t.ablation for s in result]
    ablation = [s for t, result in done if t.ablation for s in result]
    return StudyResult(scores, ablation, time.time() - started, len(sessions), len(tasks))


@dataclass(frozen=True)
class Summary:
    method: str
    split: str
    ratio: float
    rmse_mean: float
    rmse_std: float
    mae_mean: float
    mae_std: float
    runs: int
    seconds: float  # mean wall time of one run
    rmse_seen: float | None = None  # mean over runs, at stations with training sessions
    rmse_new: float | None = None  # ... and at stations without (opened later)


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def summarize(scores: Sequence[Score]) -> list[Summary]:
    """Mean ± sample std over seeds, per (method, split, ratio), in METHODS order."""
    groups: dict[tuple[str, str, float], list[Score]] = {}
    for s in scores:
        groups.setdefault((s.method, s.split, s.ratio), []).append(s)
    order = {m: i for i, m in enumerate(METHODS)}
    out = []
    for (method, split, ratio), group in groups.items():
        rmse = np.array([g.rmse for g in group])
        mae = np.array([g.mae for g in group])
        ddof = 1 if len(group) > 1 else 0
        out.append(
            Summary(
                method,
                split,
                ratio,
                float(rmse.mean()),
                float(rmse.std(ddof=ddof)),
                float(mae.mean()),
                float(mae.std(ddof=ddof)),
                len(group),
                float(np.mean([g.seconds for g in group])),
                _mean_or_none([g.rmse_seen for g in group]),
                _mean_or_none([g.rmse_new for g in group]),
            )
        )
    return sorted(out, key=lambda s: (order.get(s.method, len(order)), s.split, -s.ratio))
