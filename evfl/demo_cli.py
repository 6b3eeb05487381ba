"""``evfl demo``: the end-to-end run on embedded brokers (the README's first command)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from evfl.user_errors import reported

console = Console()


def demo(
    dataset: Annotated[str, typer.Option(help="dundee, perth or paloalto.")] = "dundee",
    target: Annotated[str, typer.Option(help="energy, occupancy or charging_time.")] = "energy",
    paloalto: Annotated[Path | None, typer.Option(help="Palo Alto CSV (charging time).")] = None,
    stations: Annotated[int | None, typer.Option(help="Busiest stations to run.")] = None,
    vehicles: Annotated[int | None, typer.Option(help="Vehicle agents (+ a fleet agent).")] = None,
    rounds: Annotated[int | None, typer.Option(help="Federated rounds.")] = None,
    quick: Annotated[bool, typer.Option(help="A small run (CI): 3 stations, 3 rounds.")] = False,
    kafka: Annotated[str | None, typer.Option(help="Existing Kafka bootstrap servers.")] = None,
    mqtt: Annotated[str | None, typer.Option(help="Existing MQTT broker host:port.")] = None,
    out: Annotated[Path, typer.Option(help="Where runs/<timestamp>/ goes.")] = Path("runs"),
) -> None:
    """Run the whole system on real data: brokers, coordinator, stations, vehicles."""
    import logging

    from evfl.demo import Demo, DemoSettings

    logging.basicConfig(level=logging.WARNING)
    if dataset == "paloalto" and paloalto is None:
        console.print("[red]error:[/red] --dataset paloalto needs --paloalto FILE")
        raise typer.Exit(2)
    overrides = {
        "dataset": dataset,
        "target": target,
        "dataset_path": paloalto,
        "stations": stations,
        "vehicles": vehicles,
        "rounds": rounds,
        "kafka": kafka,
        "mqtt": mqtt,
        "out": out,
    }
    settings = (
        DemoSettings.quick(**overrides)
        if quick
        else DemoSettings(**{k: v for k, v in overrides.items() if v is not None})
    )
    with reported(console):
        try:
            run_dir = Demo(settings, console).run()
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: every process stopped[/yellow]")
            raise typer.Exit(130) from None
    console.print((run_dir / "report.md").read_text(), markup=False, highlight=False)
    console.print(f"\nresults in {run_dir}/: report.md, metrics.csv, answers.jsonl, *.png")
    console.print(f"report: {run_dir / 'report.md'}", soft_wrap=True, highlight=False)
