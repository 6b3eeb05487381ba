"""``evfl study``: the FEDL paper's energy study on real data, printed, saved as CSV and PNG."""

from __future__ import annotations

import csv
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from evfl.user_errors import reported

if TYPE_CHECKING:
    from models.study.claims import Claim
    from models.study.communication import CommunicationCost
    from models.study.dundee_study import Score, StudyResult, Summary

app = typer.Typer(help="Reproduce and extend published studies.", no_args_is_help=True)
console = Console(width=160)

PAPER_RMSE = {  # Saputra et al., RMSE (kWh) at training ratios 80/70/60/50%
    "KNR": (7.18, 7.71, 7.57, 7.67),
    "MLPR": (6.57, 6.62, 6.90, 6.53),
    "SGDR": (6.55, 6.57, 6.54, 6.54),
    "DT": (6.47, 6.49, 6.47, 6.47),
    "SVR": (6.46, 6.50, 6.50, 6.53),
    "RF": (6.35, 6.66, 6.88, 6.80),
    "EDL": (5.86, 5.86, 5.86, 5.87),
    "FEDL (IID subsets)": (5.81, 5.82, 5.81, 5.84),
    "EDL + clustering": (5.77, 5.79, 5.85, 5.87),
    "FEDL + clustering (IID)": (5.76, 5.78, 5.78, 5.83),
}
PAPER_RATIOS = (0.8, 0.7, 0.6, 0.5)
PAPER_REDUCTION = 0.834


def _cell(mean: float, std: float, runs: int) -> str:
    return f"{mean:.3f} ± {std:.3f}" if runs > 1 else f"{mean:.3f}"


def _results_table(summaries: list[Summary], metric: str) -> Table:
    columns = sorted({(s.split, s.ratio) for s in summaries}, key=lambda c: (c[0], -c[1]))
    table = Table(title=f"Dundee energy per session: test {metric.upper()} (kWh), mean ± std")
    table.add_column("method")
    for split, ratio in columns:
        table.add_column(f"{split} {ratio:.0%}", justify="right")
    if metric == "rmse":
        table.add_column("paper 80/70/60/50", justify="right")
    by_key = {(s.method, s.split, s.ratio): s for s in summaries}
    for method in dict.fromkeys(s.method for s in summaries):
        cells = []
        for split, ratio in columns:
            s = by_key.get((method, split, ratio))
            if s is None:
                cells.append("")
            elif metric == "rmse":
                cells.append(_cell(s.rmse_mean, s.rmse_std, s.runs))
            else:
                cells.append(_cell(s.mae_mean, s.mae_std, s.runs))
        if metric == "rmse":
            paper = PAPER_RMSE.get(method)
            cells.append(" / ".join(f"{v:.2f}" for v in paper) if paper else "")
        table.add_row(method, *cells)
    return table


def _ablation_table(scores: list[Score], edl: float | None) -> Table:
    table = Table(title="Per-station FEDL of the paper's DNN: what closes the drift gap")
    for name in ("variant (random 80%, seed 0)", "RMSE", "MAE", "gap to EDL", "seconds"):
        table.add_column(name, justify="left" if name.startswith("variant") else "right")
    for s in scores:
        gap = f"{(s.rmse / edl - 1):+.1%}" if edl else ""
        table.add_row(s.method, f"{s.rmse:.3f}", f"{s.mae:.3f}", gap, f"{s.seconds:.1f}")
    return table


def _communication_table(groups: dict[str, list[CommunicationCost]]) -> Table:
    from models.study.communication import overall

    table = Table(title=f"Bytes sent: model updates vs raw sessions (paper: {PAPER_REDUCTION:.1%})")
    for name in (
        "clients",
        "n",
        "update (B)",
        "raw median (B)",
        "rounds",
        "reduction 1 round",
        "reduction all rounds",
        "clients saving (1 round)",
    ):
        table.add_column(name, justify="left" if name == "clients" else "right")
    for label, costs in groups.items():
        per_round, total = overall(costs)
        raws = sorted(c.raw_bytes for c in costs)
        saving = sum(c.reduction_per_round > 0 for c in costs)
        table.add_row(
            label,
            str(len(costs)),
            str(costs[0].update_bytes),
            str(raws[len(raws) // 2]),
            str(costs[0].rounds),
            f"{per_round:.1%}",
            f"{total:.1%}",
            f"{saving}/{len(costs)}",
        )
    return table


def _maybe(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _new_stations_table(summaries: list[Summary]) -> Table | None:
    """Where a split's test period has charge points without training sessions, the RMSE on
    them apart: a model can only guess a new station's level."""
    rows = [s for s in summaries if s.split == "time" and s.rmse_new is not None]
    if not rows:
        return None
    table = Table(title="Time split: test RMSE at stations seen in training vs opened later")
    for name in ("method", "split", "all", "seen stations", "new stations"):
        table.add_column(name, justify="left" if name in ("method", "split") else "right")
    for s in rows:
        split = f"{s.split} {s.ratio:.0%}"
        table.add_row(
            s.method, split, f"{s.rmse_mean:.3f}", _maybe(s.rmse_seen, 3), _maybe(s.rmse_new, 3)
        )
    return table


def _claims_table(claims: list[Claim]) -> Table:
    table = Table(title="What this run shows (random split, mean RMSE)")
    for name in ("claim", "measured", "met"):
        table.add_column(name)
    marks = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "[dim]reference[/dim]"}
    for c in claims:
        table.add_row(c.claim, c.measured, marks[c.met])
    return table


def _write_csv(
    path: Path,
    summaries: list[Summary],
    result: StudyResult,
    groups: dict[str, list[CommunicationCost]],
    claims: list[Claim],
) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "kind",
                "method",
                "split",
                "ratio",
                "rmse_mean",
                "rmse_std",
                "mae_mean",
                "mae_std",
                "runs",
                "seconds",
                "rmse_seen_stations",
                "rmse_new_stations",
            ]
        )
        for s in summaries:
            w.writerow(
                [
                    "result",
                    s.method,
                    s.split,
                    s.ratio,
                    f"{s.rmse_mean:.4f}",
                    f"{s.rmse_std:.4f}",
                    f"{s.mae_mean:.4f}",
                    f"{s.mae_std:.4f}",
                    s.runs,
                    f"{s.seconds:.2f}",
                    _maybe(s.rmse_seen),
                    _maybe(s.rmse_new),
                ]
            )
        for s in result.ablation:
            w.writerow(
                [
                    "ablation",
                    s.method,
                    s.split,
                    s.ratio,
                    f"{s.rmse:.4f}",
                    "0",
                    f"{s.mae:.4f}",
                    "0",
                    1,
                    f"{s.seconds:.2f}",
                ]
            )
        w.writerow([])
        w.writerow(
            [
                "kind",
                "clients",
                "client",
                "sessions",
                "raw_bytes",
                "update_bytes",
                "rounds",
                "reduction_per_round",
                "reduction_total",
            ]
        )
        for label, costs in groups.items():
            for c in costs:
                w.writerow(
                    [
                        "communication",
                        label,
                        c.client_id,
                        c.sessions,
                        c.raw_bytes,
                        c.update_bytes,
                        c.rounds,
                        f"{c.reduction_per_round:.4f}",
                        f"{c.reduction_total:.4f}",
                    ]
                )
        w.writerow([])
        w.writerow(["kind", "claim", "measured", "met"])
        for c in claims:
            w.writerow(["claim", c.claim, c.measured, "" if c.met is None else int(c.met)])


def _plot(path: Path, summaries: list[Summary]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [s for s in summaries if s.split == "random"]
    ratios = sorted({s.ratio for s in rows}, reverse=True)
    methods = list(dict.fromkeys(s.method for s in rows))
    fig, ax = plt.subplots(figsize=(11, 6))
    width = 0.8 / max(len(ratios), 1)
    for i, ratio in enumerate(ratios):
        by_method = {s.method: s for s in rows if s.ratio == ratio}
        xs = [m + i * width for m in range(len(methods))]
        means = [by_method[m].rmse_mean if m in by_method else float("nan") for m in methods]
        stds = [by_method[m].rmse_std if m in by_method else 0.0 for m in methods]
        ax.bar(xs, means, width, yerr=stds, label=f"train {ratio:.0%}", capsize=2)
    ax.set_xticks([m + 0.4 - width / 2 for m in range(len(methods))])
    ax.set_xticklabels(methods, rotation=60, ha="right", fontsize=8)
    finite = [s.rmse_mean for s in rows]
    ax.set_ylim(min(finite) - 0.3, max(finite) + 0.3)
    ax.set_ylabel("test RMSE (kWh)")
    ax.set_title("Dundee: energy per charging session (mean ± std over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _communication(sessions, settings):
    """Per-station and per-IID-subset bytes on the random split of the first ratio, seed 0.

    The update size does not depend on training, so fresh weights of the paper's DNN serve.
    """
    import numpy as np

    from models.splits import by_station
    from models.study import paper_dnn
    from models.study.communication import communication_costs
    from models.study.dundee_study import SplitData, Task, subsample

    sessions = subsample(sessions, settings.subsample)
    data = SplitData.make(sessions, Task("random", settings.ratios[0], 0))
    weights = paper_dnn.init_weights(data.x.shape[1], settings.edl, 0)
    train_sessions = sessions.iloc[data.train].reset_index(drop=True)
    stations = by_station(data.stations[data.train], np.arange(len(data.train)))
    order = np.random.default_rng(0).permutation(len(data.train))
    parts = np.array_split(order, settings.iid_clients)
    subsets = {f"subset-{i}": np.sort(p) for i, p in enumerate(parts)}
    return {
        f"IID subsets (J={settings.iid_clients})": communication_costs(
            train_sessions, subsets, weights, settings.iid_rounds
        ),
        "one client per station": communication_costs(
            train_sessions, stations, weights, settings.station_rounds
        ),
    }


@app.command()
def dundee(
    quick: Annotated[bool, typer.Option(help="1 seed, 80% only, tiny budgets (tests)")] = False,
    seeds: Annotated[int, typer.Option(help="seeds per training ratio")] = 3,
    out: Annotated[Path, typer.Option(help="runs folder; a timestamped subfolder is made")] = Path(
        "runs"
    ),
    workers: Annotated[int, typer.Option(help="parallel processes")] = 2,
    ratios: Annotated[
        str | None, typer.Option(help="training ratios to run, e.g. 0.8 or 0.8,0.5")
    ] = None,
    time_split: Annotated[
        bool | None, typer.Option(help="also run the time-ordered 80% split")
    ] = None,
    ablation: Annotated[
        bool | None, typer.Option(help="run the per-station FEDL ablation (random 80%, seed 0)")
    ] = None,
) -> None:
    """EDL, FEDL, clustering and baselines on Dundee, as in Saputra et al., plus evfl's model."""
    from dataclasses import replace

    from models.datasets.catalog import load_dataset
    from models.study.claims import check_claims
    from models.study.dundee_study import EDL, StudySettings, run_study, summarize

    started = time.time()
    with reported(console):
        data = load_dataset("dundee")
        settings = StudySettings.quick() if quick else replace(StudySettings(), seeds=seeds)
        if not quick:
            settings = replace(settings, workers=workers)
        if ratios is not None:
            settings = replace(settings, ratios=_parse_ratios(ratios))
        if time_split is not None:
            settings = replace(settings, time_split=time_split)
        if ablation is not None:
            settings = replace(settings, ablation=ablation)
        _print_locations(data, settings)

        folder = out / datetime.now().strftime("%Y%m%d-%H%M%S")
        folder.mkdir(parents=True, exist_ok=True)

        def progress(task, scores) -> None:
            _append_scores(folder / "scores_so_far.csv", task, scores)
            kind = "ablation" if task.ablation else f"{task.split} {task.ratio:.0%}"
            console.print(
                f"[dim]done: {kind} seed {task.seed} ({time.time() - started:.0f}s elapsed)[/dim]"
            )

        result = run_study(data.sessions, settings, progress)
        summaries = summarize(result.scores)
        groups = _communication(data.sessions, settings)
        console.print(_results_table(summaries, "rmse"))
        console.print(_results_table(summaries, "mae"))
        edl = next(
            (
                s.rmse
                for s in result.scores
                if s.method == EDL
                and s.seed == 0
                and s.split == "random"
                and s.ratio == settings.ratios[0]
            ),
            None,
        )
        if result.ablation:
            console.print(_ablation_table(result.ablation, edl))
        console.print(_communication_table(groups))
        if (new_stations := _new_stations_table(summaries)) is not None:
            console.print(new_stations)
        claims = check_claims(summaries)
        console.print(_claims_table(claims))
        _write_csv(folder / "dundee_study.csv", summaries, result, groups, claims)
        _plot(folder / "dundee_study.png", summaries)
        console.print(
            f"{result.sessions} sessions, {result.tasks} tasks; study {result.seconds:.0f}s, "
            f"wall time {time.time() - started:.0f}s; wrote {folder / 'dundee_study.csv'} and "
            f"{folder / 'dundee_study.png'}"
        )


def _append_scores(path: Path, task, scores: list[Score]) -> None:
    """Every finished task's raw scores, so a long run that is stopped still leaves them."""
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["ablation", "method", "split", "ratio", "seed", "rmse", "mae", "seconds"])
        for s in scores:
            w.writerow(
                [
                    int(task.ablation),
                    s.method,
                    s.split,
                    s.ratio,
                    s.seed,
                    f"{s.rmse:.4f}",
                    f"{s.mae:.4f}",
                    f"{s.seconds:.2f}",
                ]
            )


def _parse_ratios(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"--ratios {text!r}: expected numbers like 0.8,0.5") from None
    if not values or not all(0.0 < v < 1.0 for v in values):
        raise typer.BadParameter(f"--ratios {text!r}: each ratio must be between 0 and 1")
    return values


def _print_locations(data, settings) -> None:
    """Which coordinates the clustering uses, and what happens to stations without any."""
    from models.datasets.catalog import DUNDEE_LOCATIONS, RAW_DIR
    from models.datasets.locations import load_locations
    from models.study.station_clusters import cluster_stations, station_locations

    located = station_locations(data.sessions)
    publisher = load_locations(RAW_DIR / "dundee" / DUNDEE_LOCATIONS[0], None).table
    only_publisher = located.copy()
    unknown = ~only_publisher.index.isin(publisher.index)
    only_publisher.loc[unknown, ["latitude", "longitude"]] = float("nan")
    sessions_unknown = int(data.sessions["station_id"].isin(only_publisher.index[unknown]).sum())
    with_enriched = cluster_stations(located, settings.clusters, settings.cluster_slack)
    with_publisher = cluster_stations(only_publisher, settings.clusters, settings.cluster_slack)
    console.print(
        f"Coordinates: {data.location_sources}. Publisher-only would leave "
        f"{int(unknown.sum())} stations ({sessions_unknown} sessions) without coordinates; "
        "the study uses the enriched third-party file for them, because they include the "
        "busiest hubs. Stations still without coordinates: "
        f"{len(with_enriched.without_coordinates)}. Cluster sizes (stations, bounds "
        f"{with_enriched.size_min}-{with_enriched.size_max}): {with_enriched.sizes()}; "
        f"publisher-only: {with_publisher.sizes()} with "
        f"{len(with_publisher.without_coordinates)} placed in the smallest cluster."
    )
