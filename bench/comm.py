"""Bytes on the wire per station per round, per update encoding, vs uploading the raw sessions.

Real Dundee data, the energy task (the FEDL paper's MLP, features and random 80/20 split).

Uplink: the ClientUpdate exactly as a station publishes it (``build_update`` then
``SerializeToString``, ids and per-exit scores included) for each encoding in
``proto.update_encoding``: full float32 weights (today), float16 / int8 (nearest or stochastic
rounding) deltas against the announced base, and top-k sparse int8 deltas with error feedback.
The deltas are real: every update comes from ``models.incremental.train_round`` on a real
station's sessions of one calendar month, from the round's global weights.

Downlink: the ModelAnnouncement a station receives each round (``build_announcement`` with the
task's real config, preprocessing, constraints and weights), reported separately: a station
that uploaded raw sessions instead would still download the model to serve its fog partition.

Baseline, same run: the station's raw sessions of that round, each a ``Session`` proto
(``proto.session_codec``) in one ``SessionBatch``, packed by the same blob codec (zstd level 3)
as the update, i.e. ``models.study.communication.raw_upload_bytes``. Rounds are calendar weeks
and months of every Dundee station's sessions (station-rounds with fewer than the task's
``min_samples`` sessions are left out: such a station would not train that round), and the
whole training split once (the FEDL paper's accounting: one update vs the data, 83.4% saved).

Accuracy: the same federated rounds run once per encoding (its own trajectory, same seeds):
the busiest stations train a month each round from the global weights; the coordinator
decodes the updates (``read_update`` against the base) and takes their FedAvg. Reported: every
exit's MAE / RMSE on the held-out test split after the last round, and the change vs float32.

Target (printed, never asserted): >= 90% fewer uplink bytes than the raw sessions. When missed,
the break-even sessions per round say why: sessions a station would need per round so that its
update were 10% of their raw bytes.

    python -m bench.comm [--quick] [--stations 6] [--rounds 4] [--topk 0.05,0.01]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
logging.getLogger("tensorflow").setLevel(logging.ERROR)

from proto.federation_codec import (  # noqa: E402
    ExitScore,
    build_announcement,
    build_update,
    read_update,
)
from proto.update_encoding import (  # noqa: E402
    FLOAT32,
    DeltaKind,
    UpdateEncoding,
    encode_delta,
    weights_sha256,
)

RESULTS = Path(__file__).parent / "results"
BYTES_TARGET = 0.90  # fraction of the raw-session bytes saved, from the issue
MIN_SAMPLES = 50  # coordinator.task_spec.TaskSpec.min_samples: new rows to take part
TRAIN_RATIO, SEED = 0.8, 0  # the energy use case's split (models.use_cases.UseCase)
FEDL_PAPER_REDUCTION = 0.834


def _table(title: str, columns: Sequence[str]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    return table


def _pct(x: float) -> str:
    return f"{x:.1%}"


def encodings(topk: Sequence[float]) -> list[UpdateEncoding]:
    return [
        FLOAT32,
        UpdateEncoding(DeltaKind.FLOAT16),
        UpdateEncoding(DeltaKind.INT8),
        UpdateEncoding(DeltaKind.INT8, stochastic=True),
        *(UpdateEncoding(DeltaKind.TOPK_INT8, f) for f in topk),
    ]


# --- data ---------------------------------------------------------------------------------


@dataclass
class Task:
    sessions: pd.DataFrame  # every cleaned Dundee session with a known energy target
    train_rows: np.ndarray  # positions in ``sessions`` of the training split
    config: Any  # models.model_config.ModelConfig
    preprocessing: Any  # models.preprocessing.Preprocessing
    x_train: np.ndarray
    y_train: np.ndarray
    station_train: np.ndarray
    test: tuple[np.ndarray, np.ndarray]


def load_task() -> Task:
    from models.datasets.catalog import load_dataset
    from models.features import target_values
    from models.preprocessing import preprocessing_from_prepared
    from models.splits import random_split
    from models.use_cases import UseCase, default_model_config, prepare

    use_case = UseCase.default("dundee", "energy")
    assert (use_case.train_ratio, use_case.seed, use_case.split) == (TRAIN_RATIO, SEED, "random")
    sessions = load_dataset("dundee").sessions
    prepared = prepare(sessions, use_case)
    known = ~np.isnan(target_values(sessions, "energy"))
    sessions = sessions[known].reset_index(drop=True)
    train, _ = random_split(len(sessions), TRAIN_RATIO, SEED)  # as prepare() splits
    pre = preprocessing_from_prepared(prepared)
    return Task(
        sessions=sessions,
        train_rows=np.sort(train),
        config=default_model_config(use_case, pre.input_shape),
        preprocessing=pre,
        x_train=prepared.x_train,
        y_train=prepared.y_train,
        station_train=prepared.station_train,
        test=(prepared.x_test, prepared.y_test),
    )


def _months(starts: pd.Series) -> np.ndarray:
    return starts.dt.tz_convert("UTC").dt.strftime("%Y-%m").to_numpy()


def _weeks(starts: pd.Series) -> np.ndarray:
    iso = starts.dt.tz_convert("UTC").dt.isocalendar()
    return (iso["year"].astype(str) + "-W" + iso["week"].astype(str).str.zfill(2)).to_numpy()


# --- raw sessions per round ---------------------------------------------------------------


@dataclass(frozen=True)
class RawRound:
    station: str
    window: str
    sessions: int
    raw_bytes: int  # zstd SessionBatch blob, as the update's blob is packed


def raw_rounds(sessions: pd.DataFrame, granularity: str) -> list[RawRound]:
    from models.study.communication import raw_upload_bytes

    keys = _weeks(sessions["start"]) if granularity == "week" else _months(sessions["start"])
    out = []
    frame = sessions.assign(_window=keys).sort_values("start")
    for (station, window), rows in frame.groupby(["station_id", "_window"], sort=True):
        rows = rows.drop(columns="_window")
        out.append(RawRound(str(station), str(window), len(rows), raw_upload_bytes(rows)))
    return out


# --- the federated rounds, one trajectory per encoding ------------------------------------


@dataclass
class Trajectory:
    encoding: UpdateEncoding
    weights: list[np.ndarray]
    residuals: dict[str, list[np.ndarray]] = field(default_factory=dict)
    update_bytes: list[int] = field(default_factory=list)
    blob_bytes: list[int] = field(default_factory=list)
    delta_error: list[float] = field(default_factory=list)  # |decoded - true| / |true delta|
    test_after_round: list[dict[str, dict[str, float]]] = field(default_factory=list)


def _test_metrics(task: Task, weights: list[np.ndarray]) -> dict[str, dict[str, float]]:
    from models.incremental import per_exit_metrics
    from models.model_config import PARTITIONS
    from models.partitioned import build_model, set_weights

    model = build_model(task.config)
    set_weights(model, weights)
    x, y = task.test
    metrics = per_exit_metrics(model, x, y, task.preprocessing.normalization)
    return {
        name: {"mae": m.mae, "rmse": m.rmse} for name, m in zip(PARTITIONS, metrics, strict=True)
    }


def global_start(task: Task, stations: Sequence[str], epochs: int) -> list[np.ndarray]:
    """Version 0: trained centrally on the other stations' training rows (a warm start)."""
    from models.partitioned import weights_of
    from models.training import TrainSettings, fit, new_model

    model = new_model(task.config, SEED)
    others = ~np.isin(task.station_train, list(stations))
    fit(
        model,
        task.x_train[others],
        task.y_train[others],
        task.preprocessing.normalization,
        TrainSettings(epochs=epochs, batch_size=256, seed=SEED),
    )
    return weights_of(model)


def station_frames(task: Task, stations: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Each station's training-split sessions in time order, with the store's ``seq``."""
    train = task.sessions.iloc[task.train_rows]
    frames = {}
    for station in stations:
        frame = train[train["station_id"] == station].sort_values("start").reset_index(drop=True)
        frame["seq"] = np.arange(1, len(frame) + 1, dtype=np.int64)
        frame["_month"] = _months(frame["start"])
        frames[station] = frame
    return frames


def run_rounds(
    task: Task,
    frames: dict[str, pd.DataFrame],
    months: Sequence[str],
    base0: list[np.ndarray],
    chosen: Sequence[UpdateEncoding],
    epochs: int,
    console: Console,
) -> list[Trajectory]:
    from models.aggregate import ClientResult, fedavg
    from models.incremental import IncrementalSettings, NotEnoughData, train_round
    from models.model_config import PARTITIONS

    trajectories = [Trajectory(e, [w.copy() for w in base0]) for e in chosen]
    for r, month in enumerate(months, start=1):
        for traj in trajectories:
            base = traj.weights
            sha = weights_sha256(base)
            results = []
            for station, frame in frames.items():
                upto = frame[frame["_month"] <= month]
                before = frame[frame["_month"] < month]
                watermark = int(before["seq"].max()) if len(before) else 0
                settings = IncrementalSettings(epochs=epochs, seed=SEED + r)
                try:
                    result = train_round(
                        task.config,
                        task.preprocessing,
                        base,
                        upto.drop(columns="_month"),
                        watermark,
                        settings,
                    )
                except NotEnoughData:
                    continue
                scores = [
                    ExitScore(n, m.n, m.mse, m.mae, m.rmse)
                    for n, m in zip(PARTITIONS, result.metrics_after, strict=True)
                ]
                update_id = f"{station}:dundee-energy:v{r - 1}"
                enc = traj.encoding
                if enc.kind is DeltaKind.TOPK_INT8:  # error feedback: the station's residual
                    encoded = encode_delta(
                        result.weights, base, enc, residual=traj.residuals.get(station), seed=r
                    )
                    assert encoded.residual is not None
                    traj.residuals[station] = encoded.residual
                    payload: Any = encoded.update
                else:
                    payload = result.weights
                message, chunks = build_update(
                    "dundee-energy",
                    station,
                    r - 1,
                    r,
                    update_id,
                    result.sample_count,
                    scores,
                    payload,
                    result.train_seconds,
                    base_weights=base,
                    encoding=enc,
                    seed=r,
                )
                assert not chunks, "a small model's update travels inline"
                data = message.SerializeToString()
                read = read_update(data, base_weights=base, base_sha256=sha)
                traj.update_bytes.append(len(data))
                traj.blob_bytes.append(message.weights.ByteSize())
                true = np.concatenate(
                    [(w - b).ravel() for w, b in zip(result.weights, base, strict=True)]
                )
                got = np.concatenate(
                    [(w - b).ravel() for w, b in zip(read.weights, base, strict=True)]
                )
                traj.delta_error.append(
                    float(np.linalg.norm(got - true)) / max(float(np.linalg.norm(true)), 1e-30)
                )
                results.append(ClientResult(station, read.weights, result.sample_count))
            if results:
                traj.weights = [np.asarray(w, np.float32) for w in fedavg(results)]
            traj.test_after_round.append(_test_metrics(task, traj.weights))
            console.log(
                f"round {r} ({month}) {traj.encoding}: {len(results)} updates, cloud MAE "
                f"{traj.test_after_round[-1]['cloud']['mae']:.4f}"
            )
    return trajectories


# --- main ---------------------------------------------------------------------------------


def _summary(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    return {
        "mean": float(a.mean()),
        "median": float(np.median(a)),
        "p10": float(np.percentile(a, 10)),
        "p90": float(np.percentile(a, 90)),
        "max": float(a.max()),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 stations, 1 round, 1 epoch")
    parser.add_argument("--stations", type=int, default=6, help="busiest stations that train")
    parser.add_argument("--rounds", type=int, default=4, help="monthly rounds trained")
    parser.add_argument("--epochs", type=int, default=5, help="local epochs per round")
    parser.add_argument("--warm-epochs", type=int, default=5, help="central epochs for v0")
    parser.add_argument("--topk", default="0.05,0.01", help="top-k fractions to measure")
    parser.add_argument("--out", type=Path, default=RESULTS / "comm.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.stations, args.rounds, args.epochs, args.warm_epochs = 2, 1, 1, 1
    topk = [float(f) for f in args.topk.split(",") if f.strip()]
    chosen = encodings(topk)
    console = Console(width=max(Console().width, 150))
    started = time.perf_counter()

    with console.status("loading Dundee (energy task: preprocessing, model, splits)…"):
        task = load_task()
    sessions = task.sessions
    by_count = sessions["station_id"].value_counts()
    stations = [str(s) for s in by_count.index[: args.stations]]
    frames = station_frames(task, stations)
    months = sorted(set().union(*(set(f["_month"]) for f in frames.values())))
    # The last rounds: every trained station has history before them (replay, warm start).
    months = months[-args.rounds - 1 : -1] if len(months) > args.rounds else months

    # --- downlink: the announcement ---------------------------------------------------------
    from models.constraints import constraints_for
    from proto.constraints_codec import constraints_to_proto

    with console.status("training version 0 centrally on the other stations…"):
        base0 = global_start(task, stations, args.warm_epochs)
    n_params = sum(int(w.size) for w in base0)
    announce = {}
    for enc in (None, chosen[2]):
        message, chunks = build_announcement(
            "dundee-energy",
            0,
            1,
            task.config.to_dict(),
            task.preprocessing.to_dict(),
            base0,
            constraints_to_proto(constraints_for(task.preprocessing, MIN_SAMPLES)),
            (0.5, 0.5),
            int(time.time() * 1000) + 120_000,
            int(time.time() * 1000),
            update_encoding=enc,
        )
        announce["request " + ("none" if enc is None else str(enc))] = len(
            message.SerializeToString()
        ) + sum(c.ByteSize() for c in chunks)
    announce_parts = {
        "weights (zstd blob)": message.weights.ByteSize(),
        "preprocessing JSON": len(message.preprocessing_json),
        "model config JSON": len(message.model_config_json),
        "update_encoding request": message.update_encoding.ByteSize(),
    }
    downlink = announce["request " + str(chosen[2])]

    # --- the federated rounds ---------------------------------------------------------------
    with console.status(
        f"{args.rounds} monthly rounds × {len(stations)} stations × {len(chosen)} encodings…"
    ):
        trajectories = run_rounds(task, frames, months, base0, chosen, args.epochs, console)
    test0 = _test_metrics(task, base0)
    uplink = {str(t.encoding): float(np.mean(t.update_bytes)) for t in trajectories}

    # --- raw sessions per round -------------------------------------------------------------
    with console.status("encoding every Dundee station's sessions per week and month…"):
        raw = {g: raw_rounds(sessions, g) for g in ("week", "month")}
        train = sessions.iloc[task.train_rows]
        from models.study.communication import raw_upload_bytes

        whole = {
            str(s): (len(rows), raw_upload_bytes(rows))
            for s, rows in train.groupby("station_id", sort=True)
        }
    all_sessions = sum(r.sessions for r in raw["month"])
    per_session = sum(r.raw_bytes for r in raw["month"]) / all_sessions

    # --- table 1: uplink per encoding --------------------------------------------------------
    t1 = _table(
        f"1. uplink: one ClientUpdate as published, Dundee energy MLP ({n_params:,} parameters, "
        f"{4 * n_params:,} B as raw float32); real deltas, {len(trajectories[0].update_bytes)} "
        f"updates per encoding",
        (
            "encoding",
            "update B (mean)",
            "weights blob B",
            "× float32",
            "bits/param",
            "decoded delta error",
            f"break-even sess./round for {BYTES_TARGET:.0%}",
        ),
    )
    f32 = uplink[str(FLOAT32)]
    for t in trajectories:
        name = str(t.encoding)
        err = "exact" if t.encoding is FLOAT32 else f"{np.mean(t.delta_error):.2%}"
        t1.add_row(
            name,
            f"{uplink[name]:,.0f}",
            f"{np.mean(t.blob_bytes):,.0f}",
            f"{uplink[name] / f32:.3f}",
            f"{8 * np.mean(t.blob_bytes) / n_params:.2f}",
            err,
            f"{uplink[name] / (1 - BYTES_TARGET) / per_session:,.0f}",
        )
    console.print(t1)
    console.print(
        f"raw sessions: {per_session:.1f} B per session (zstd SessionBatch blob, all Dundee "
        f"month-rounds); break-even = update B / {1 - BYTES_TARGET:.0%} / B per session"
    )

    # --- table 2: against the raw sessions, per round granularity ---------------------------
    t2 = _table(
        f"2. uplink vs the station's raw sessions of the same round (all {by_count.size} Dundee "
        f"stations; station-rounds with ≥ {MIN_SAMPLES} sessions, i.e. that would train)",
        (
            "round",
            "station-rounds",
            "sess./round median (p90)",
            "raw B median (p90)",
            "encoding",
            "update B",
            "saved: all bytes",
            "saved: median round",
            f"rounds ≥ {BYTES_TARGET:.0%} saved",
            "target",
        ),
    )
    accounting: dict[str, Any] = {}
    for granularity, rounds_ in raw.items():
        taking_part = [r for r in rounds_ if r.sessions >= MIN_SAMPLES]
        counts = [r.sessions for r in taking_part]
        raws = np.asarray([r.raw_bytes for r in taking_part], np.float64)
        rows_out = {}
        for i, t in enumerate(trajectories):
            name = str(t.encoding)
            up = uplink[name]
            saved_each = 1 - up / raws
            saved_all = 1 - up * len(raws) / raws.sum()
            share = float(np.mean(saved_each >= BYTES_TARGET))
            met = bool(saved_all >= BYTES_TARGET)
            t2.add_row(
                granularity if i == 0 else "",
                f"{len(raws):,}" if i == 0 else "",
                f"{np.median(counts):,.0f} ({np.percentile(counts, 90):,.0f})" if i == 0 else "",
                f"{np.median(raws):,.0f} ({np.percentile(raws, 90):,.0f})" if i == 0 else "",
                name,
                f"{up:,.0f}",
                _pct(saved_all),
                _pct(float(np.median(saved_each))),
                _pct(share),
                "met" if met else "MISSED",
                end_section=i == len(trajectories) - 1,
            )
            rows_out[name] = {
                "update_bytes": up,
                "saved_all_bytes": saved_all,
                "saved_median_round": float(np.median(saved_each)),
                "share_of_rounds_meeting_target": share,
                "target_met": met,
            }
        accounting[granularity] = {
            "station_rounds": len(raws),
            "station_rounds_below_min_samples": len(rounds_) - len(taking_part),
            "sessions_per_round": _summary(counts),
            "raw_bytes_per_round": _summary(raws.tolist()),
            "encodings": rows_out,
        }
    console.print(t2)

    # --- table 3: the FEDL paper's accounting ------------------------------------------------
    t3 = _table(
        f"3. the FEDL paper's accounting: one update per station vs its whole training split "
        f"uploaded once ({len(whole)} stations, {sum(n for n, _ in whole.values()):,} sessions, "
        f"{sum(b for _, b in whole.values()):,} raw B); the paper reports "
        f"{FEDL_PAPER_REDUCTION:.1%}",
        (
            "encoding",
            "saved: 1 update/station",
            f"saved: {len(months)} rounds",
            "stations ≥ 90% (1 update)",
            "target",
        ),
    )
    raw_total = sum(b for _, b in whole.values())
    fedl = {}
    for t in trajectories:
        name = str(t.encoding)
        up = uplink[name]
        once = 1 - up * len(whole) / raw_total
        rounds_total = 1 - up * len(whole) * len(months) / raw_total
        share = float(np.mean([1 - up / b >= BYTES_TARGET for _, b in whole.values()]))
        t3.add_row(
            name,
            _pct(once),
            _pct(rounds_total),
            _pct(share),
            "met" if once >= BYTES_TARGET else "MISSED",
        )
        fedl[name] = {
            "saved_one_update": once,
            "saved_rounds": rounds_total,
            "share_stations_meeting_target": share,
            "target_met": bool(once >= BYTES_TARGET),
        }
    console.print(t3)

    # --- table 4: downlink ------------------------------------------------------------------
    t4 = _table(
        "4. downlink: the ModelAnnouncement a station receives each round (full float32 "
        "weights; not encoded), and what it holds",
        ("part", "bytes", "vs the median month's raw sessions"),
    )
    med_month = float(np.median([r.raw_bytes for r in raw["month"] if r.sessions >= MIN_SAMPLES]))
    for part, size in {**announce, **announce_parts}.items():
        t4.add_row(part, f"{size:,}", f"{size / med_month:.1f}×")
    console.print(t4)

    # --- table 5: accuracy ------------------------------------------------------------------
    t5 = _table(
        f"5. accuracy cost: {len(months)} monthly rounds ({months[0]}..{months[-1]}), "
        f"{len(stations)} busiest stations, FedAvg of the decoded updates, each encoding its "
        f"own trajectory from the same v0 (test MAE {test0['cloud']['mae']:.4f} kWh cloud); "
        f"held-out test split ({len(task.test[1]):,} sessions), kWh",
        (
            "encoding",
            "edge MAE",
            "fog MAE",
            "cloud MAE",
            "cloud RMSE",
            "Δ cloud MAE vs f32",
            "Δ cloud RMSE vs f32",
            "max |Δ| any exit",
        ),
    )
    ref = trajectories[0].test_after_round[-1]
    accuracy = {}
    for t in trajectories:
        m = t.test_after_round[-1]
        worst = max(abs(m[e][k] - ref[e][k]) for e in m for k in ("mae", "rmse"))
        t5.add_row(
            str(t.encoding),
            f"{m['edge']['mae']:.4f}",
            f"{m['fog']['mae']:.4f}",
            f"{m['cloud']['mae']:.4f}",
            f"{m['cloud']['rmse']:.4f}",
            f"{m['cloud']['mae'] - ref['cloud']['mae']:+.4f}",
            f"{m['cloud']['rmse'] - ref['cloud']['rmse']:+.4f}",
            f"{worst:.4f}",
        )
        accuracy[str(t.encoding)] = {
            "per_round": t.test_after_round,
            "delta_error_mean": float(np.mean(t.delta_error)) if t.delta_error else None,
        }
    console.print(t5)

    best = min(uplink, key=lambda k: uplink[k])
    month_acc = accounting["month"]["encodings"]
    console.print(
        f"target ≥ {BYTES_TARGET:.0%} fewer uplink bytes than raw sessions (monthly rounds, all "
        f"bytes): best {best} saves {_pct(month_acc[best]['saved_all_bytes'])} — "
        + ("met" if month_acc[best]["target_met"] else "MISSED")
        + f"; float32 saves {_pct(month_acc[str(FLOAT32)]['saved_all_bytes'])}."
    )

    results: dict[str, Any] = {
        "task": "dundee-energy",
        "quick": args.quick,
        "parameters": n_params,
        "trained_stations": stations,
        "months": months,
        "local_epochs": args.epochs,
        "warm_epochs": args.warm_epochs,
        "min_samples": MIN_SAMPLES,
        "raw_bytes_per_session": per_session,
        "uplink_update_bytes": uplink,
        "uplink_blob_bytes": {str(t.encoding): float(np.mean(t.blob_bytes)) for t in trajectories},
        "downlink_announcement_bytes": announce,
        "downlink_parts": announce_parts,
        "downlink_bytes": downlink,
        "rounds": accounting,
        "fedl_whole_training_split": fedl,
        "fedl_paper_reduction": FEDL_PAPER_REDUCTION,
        "test_v0": test0,
        "accuracy": accuracy,
        "target": BYTES_TARGET,
        "break_even_sessions_per_round": {
            k: v / (1 - BYTES_TARGET) / per_session for k, v in uplink.items()
        },
    }
    results["total_seconds"] = time.perf_counter() - started
    console.print(f"total {results['total_seconds']:.0f} s on {os.cpu_count()} CPUs")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
