"""The demo's results on disk: report.md, metrics (CSV/JSONL) and PNG plots.

Per-exit held-out MSE and MAE against the round come from the coordinator's registry (as in
the Kafka-ML paper's Fig. 4/5); latency per answering tier and exit rates come from the
vehicles' answers to held-out requests.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from evfl.demo import Demo
    from evfl.demo_plan import DemoPlan

EXITS = ("edge", "fog", "cloud")


def _versions(demo: Demo) -> list[dict]:
    from coordinator.registry import Registry

    with Registry(demo.run_dir / "coordinator" / "registry") as registry:
        return [
            {"version": v.version, "updates": v.update_count, "metrics": v.metrics}
            for v in registry.versions(demo.s.task_id)
        ]


def _plots(out: Path, versions: list[dict], answers: list[dict], unit: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    rounds = [v["version"] for v in versions]
    for key, label in (("mse", f"MSE ({unit}²)"), ("mae", f"MAE ({unit})")):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for exit_name in EXITS:
            ax.plot(rounds, [v["metrics"][exit_name][key] for v in versions], marker="o",
                    label=f"{exit_name} exit")
        ax.set_xlabel("round (global version)")
        ax.set_ylabel(f"held-out {label}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        name = f"per_exit_{key}.png"
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        names.append(name)
    ok = [a for a in answers if "tier" in a]
    if ok:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        data = [[a["latency_ms"] for a in ok if a["tier"] == t] for t in EXITS]
        present = [(t, d) for t, d in zip(EXITS, data, strict=True) if d]
        ax.boxplot([d for _, d in present], tick_labels=[f"{t} ({len(d)})" for t, d in present],
                   showfliers=False)
        ax.set_ylabel("answer latency at the vehicle (ms)")
        ax.set_xlabel("tier that answered (requests)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "latency_per_exit.png", dpi=120)
        plt.close(fig)
        names.append("latency_per_exit.png")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bottom = np.zeros(len(versions))
    for exit_name in EXITS:
        rates = np.array([v["metrics"].get("exit_rates", {}).get(exit_name, 0.0)
                          for v in versions])
        ax.bar(rounds, rates, bottom=bottom, label=f"{exit_name} exit")
        bottom += rates
    ax.set_xlabel("round (global version)")
    ax.set_ylabel("share of held-out answers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "exit_rates.png", dpi=120)
    plt.close(fig)
    names.append("exit_rates.png")
    return names


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def write_report(demo: Demo, plan: DemoPlan, elapsed_s: float) -> Path:
    out = demo.run_dir
    versions = _versions(demo)
    answers = demo.progress.answers
    unit = {"energy": "kWh"}.get(demo.s.target, "h")
    with open(out / "metrics.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["version", "updates", "exit", "mse", "mae", "rmse", "exit_rate"])
        for v in versions:
            for exit_name in (*EXITS, "chain"):
                m = v["metrics"][exit_name]
                rate = v["metrics"].get("exit_rates", {}).get(exit_name, "")
                writer.writerow([v["version"], v["updates"], exit_name, m["mse"], m["mae"],
                                 m["rmse"], rate])
    with open(out / "answers.jsonl", "w") as fh:
        for a in answers:
            fh.write(json.dumps(a) + "\n")
    plots = _plots(out, versions, answers, unit)
    ok = [a for a in answers if "tier" in a]
    first, last = versions[0]["metrics"], versions[-1]["metrics"]
    lines = [
        f"# evfl demo: {demo.s.task_id}",
        "",
        f"{len(plan.stations)} stations ({', '.join(plan.stations)}), "
        f"{len(plan.vehicles)} vehicle agents, {demo.s.rounds} rounds; "
        f"{plan.total_sessions} real sessions replayed from before the held-out period "
        f"(which starts {plan.cutoff:%Y-%m-%d}). "
        f"Wall time {elapsed_s:.0f} s.",
        "",
        "## Held-out error per exit and round",
        "",
        "| version | updates | edge MAE | fog MAE | cloud MAE | cloud RMSE | chain MAE |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in versions:
        m = v["metrics"]
        lines.append(
            f"| {v['version']} | {v['updates']} | "
            + " | ".join(f"{m[e]['mae']:.3f}" for e in EXITS)
            + f" | {m['cloud']['rmse']:.3f} | {m['chain']['mae']:.3f} |"
        )
    lines += [
        "",
        f"Cloud exit MAE: {first['cloud']['mae']:.3f} at version 0, "
        f"{last['cloud']['mae']:.3f} at version {versions[-1]['version']} ({unit}).",
        "",
        "## Vehicle answers (held-out requests, through the early-exit chain)",
        "",
        "| tier that answered | answers | share | p50 ms | p95 ms | MAE |",
        "|---|---|---|---|---|---|",
    ]
    for tier in EXITS:
        mine = [a for a in ok if a["tier"] == tier]
        if not mine:
            lines.append(f"| {tier} | 0 | 0% | | | |")
            continue
        lat = [a["latency_ms"] for a in mine]
        mae = float(np.mean([abs(a["prediction"] - a["truth"]) for a in mine]))
        lines.append(
            f"| {tier} | {len(mine)} | {len(mine) / len(ok):.0%} | {_percentile(lat, 50):.2f} "
            f"| {_percentile(lat, 95):.2f} | {mae:.3f} |"
        )
    degraded = sum(a.get("degraded", False) for a in ok)
    failed = len(answers) - len(ok)
    lines += [
        "",
        f"{degraded} answers degraded, {failed} requests failed.",
        "",
        "## Sessions and wires",
        "",
        "| station | sessions stored |",
        "|---|---|",
        *(f"| {s} | {n} |" for s, n in demo.station_counts.items()),
        "",
        f"Uploaded through the agents: {demo.progress.uploaded} sessions "
        f"({demo.progress.upload_bytes:,} bytes of session records).",
        "",
        "## Plots",
        "",
        *(f"![{p}]({p})" for p in plots),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    (out / "summary.json").write_text(json.dumps({
        "task": demo.s.task_id,
        "elapsed_s": elapsed_s,
        "versions": versions,
        "station_sessions": demo.station_counts,
        "agent_models": demo.agent_models,
        "uploaded": demo.progress.uploaded,
        "answers": len(answers),
        "failed": failed,
    }, indent=2, default=str))
    return out
