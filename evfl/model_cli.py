"""``evfl model``: central training on real data, per-exit metrics, and export of partitions."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from evfl.user_errors import reported

if TYPE_CHECKING:
    from models.metrics import ExitMetrics

app = typer.Typer(help="Train and export the partitioned early-exit model.", no_args_is_help=True)
console = Console()
PARITY_ROWS = 64
EXIT_NAMES = ("edge exit", "fog exit", "cloud exit")


def _parse_cuts(text: str) -> tuple[int, int]:
    from models.model_config import ModelConfigError

    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise ModelConfigError(f"cuts={text!r}: expected two layer indices like '1,2'")
    return int(parts[0]), int(parts[1])


def _metrics_table(title: str, unit: str, rows: list[tuple[str, ExitMetrics, str]]) -> Table:
    table = Table(title=title)
    for name in (
        "predictor",
        f"MSE ({unit}²)",
        f"MAE ({unit})",
        f"RMSE ({unit})",
        "90% cover",
        "answers",
    ):
        table.add_column(name, justify="left" if name == "predictor" else "right")
    for label, m, share in rows:
        cover = "" if m.coverage90 != m.coverage90 else f"{m.coverage90:.3f}"  # NaN: no std
        table.add_row(label, f"{m.mse:.3f}", f"{m.mae:.3f}", f"{m.rmse:.3f}", cover, share)
    return table


@app.command()
def train(
    dataset: Annotated[str, typer.Option(help="dundee, perth or paloalto")] = "dundee",
    target: Annotated[str, typer.Option(help="energy, occupancy or charging_time")] = "energy",
    path: Annotated[Path | None, typer.Option(help="data folder, or the Palo Alto CSV")] = None,
    model: Annotated[str | None, typer.Option(help="mlp or lstm (default by target)")] = None,
    features: Annotated[str | None, typer.Option(help="paper or rich (tabular MLP only)")] = None,
    split: Annotated[str | None, typer.Option(help="random or time")] = None,
    train_ratio: Annotated[float | None, typer.Option(help="share of sessions to train on")] = None,
    window: Annotated[int | None, typer.Option(help="past sessions per LSTM window")] = None,
    cuts: Annotated[str | None, typer.Option(help="layer indices 'c1,c2' where to cut")] = None,
    epochs: Annotated[int, typer.Option(help="upper bound; early stopping on validation")] = 60,
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path | None, typer.Option(help="where to save the trained model")] = None,
) -> None:
    """Train centrally on real data and print per-exit metrics against simple baselines."""
    from models.datasets.catalog import load_dataset
    from models.metrics import exit_metrics
    from models.use_cases import UseCase, default_model_config, prepare

    with reported(console):
        data = load_dataset(dataset, path)
        use_case = UseCase.default(
            dataset,
            target,
            model=model,
            features=features,
            split=split,
            train_ratio=train_ratio,
            window=window,
            seed=seed,
        )
        prepared = prepare(data.sessions, use_case)
        config = default_model_config(use_case, prepared.input_shape)
        if cuts is not None:
            config = replace(config, cuts=_parse_cuts(cuts))
    from models.bundle import save_bundle
    from models.training import TrainSettings, evaluate, fit, new_model

    console.print(
        f"[bold]{dataset} / {target}[/bold]: {use_case.model}, {use_case.split} split "
        f"{use_case.train_ratio:.0%}, {len(prepared.y_train):,} train / {len(prepared.y_val):,} "
        f"validation / {len(prepared.y_test):,} test rows, {len(prepared.feature_names)} features"
        + (f", window {use_case.window}" if use_case.model == "lstm" else "")
    )
    net = new_model(config, seed)
    with console.status("training all exits jointly..."):
        history = fit(
            net,
            prepared.x_train,
            prepared.y_train,
            prepared.normalization,
            TrainSettings(epochs=epochs, seed=seed),
            (prepared.x_val, prepared.y_val),
        )
    evaluation = evaluate(
        net,
        prepared.normalization,
        (prepared.x_val, prepared.y_val),
        (prepared.x_test, prepared.y_test),
    )
    unit = "kWh" if target == "energy" else "h"
    rows: list[tuple[str, ExitMetrics, str]] = [
        (name, m, "") for name, m in zip(EXIT_NAMES, evaluation.exits, strict=True)
    ]
    rates = ", ".join(
        f"{r:.0%} {n.split()[0]}" for n, r in zip(EXIT_NAMES, evaluation.exit_rates, strict=True)
    )
    rows.append(("early-exit chain", evaluation.chain, rates))
    rows += [
        (f"baseline: {n}", exit_metrics(prepared.y_test, p), "")
        for n, p in prepared.baselines.items()
    ]
    epochs_run = len(history.history["loss"])
    console.print(_metrics_table(f"test set, {epochs_run} epochs", unit, rows))
    thresholds = ", ".join(f"{t:.3g}" for t in evaluation.policy.thresholds)
    console.print(f"exit policy (std thresholds, {unit}, calibrated on validation): {thresholds}")
    target_dir = out or Path("runs") / "models" / f"{dataset}-{target}"
    metadata = {
        "use_case": use_case.__dict__,
        "feature_names": list(prepared.feature_names),
        "exit_policy": evaluation.policy.to_dict(),
        "test_metrics": [m.to_dict() for m in evaluation.exits],
        "exit_rates": list(evaluation.exit_rates),
        "epochs": epochs_run,
    }
    save_bundle(
        target_dir,
        net,
        config,
        prepared.normalization,
        prepared.encoder,
        metadata,
        prepared.x_test[:PARITY_ROWS],
    )
    console.print(f"model saved to {target_dir}")


@app.command()
def export(
    model_dir: Annotated[
        Path, typer.Option("--model", help="a directory written by 'evfl model train'")
    ],
    out: Annotated[Path, typer.Option(help="where to write the partitions and manifest.json")],
    quantize: Annotated[
        list[str] | None, typer.Option(help="float16 and/or int8 edge variants")
    ] = None,
    version: Annotated[int, typer.Option(help="model version recorded in the manifest")] = 0,
) -> None:
    """Write edge .tflite, fog and cloud partitions and a manifest; check parity on real rows."""
    from models.bundle import load_bundle
    from models.export import export_partitions

    with reported(console):
        bundle = load_bundle(model_dir)
        metadata = {
            "version": version,
            "normalization": bundle.normalization.to_dict(),
            "encoder": bundle.encoder,
            **bundle.metadata,
        }
        report = export_partitions(
            bundle.model,
            bundle.config,
            out,
            bundle.parity_inputs,
            quantize=tuple(quantize or ()),
            metadata=metadata,
        )
    table = Table(title=f"export to {out} (parity on {len(bundle.parity_inputs)} real test rows)")
    for name in ("partition", "format", "variant", "bytes", "max |diff|", "sha256"):
        table.add_column(name, justify="right" if name in ("bytes", "max |diff|") else "left")
    for f in report.files:
        table.add_row(
            f.partition,
            f.format,
            f.variant,
            f"{f.size_bytes:,}",
            f"{f.parity_max_abs_diff:.2e}",
            f.sha256[:16],
        )
    console.print(table)
    for s in report.skipped:
        console.print(f"skipped {s.partition} {s.format}: {s.reason}")
    console.print(json.dumps({"manifest": str(out / "manifest.json")}))
