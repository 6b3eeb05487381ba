"""``evfl coordinator``: run federated tasks, and show what the registry holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from evfl.user_errors import reported

app = typer.Typer(help="The cloud coordinator.", no_args_is_help=True)
console = Console()


@app.command()
def run(
    task: Annotated[list[Path], typer.Option(help="Task file (repeatable): tasks/NAME.toml.")],
    config: Annotated[Path | None, typer.Option(help="coordinator.toml; env wins.")] = None,
    registry_dir: Annotated[Path | None, typer.Option(help="Where versions are kept.")] = None,
    kafka: Annotated[str | None, typer.Option(help="Kafka bootstrap servers.")] = None,
    cloud_listen: Annotated[str | None, typer.Option(help="host:port of CloudService.")] = None,
    log_format: Annotated[str, typer.Option(help="json or text.")] = "json",
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING.")] = "INFO",
) -> None:
    """Run federated rounds for the tasks until they end (Ctrl-C or SIGTERM stops cleanly)."""
    from evfl.log_setup import configure

    configure(log_format, log_level)
    with reported(console):
        from coordinator.config import load_config
        from coordinator.main import run as run_coordinator

        overrides: dict[str, object] = {"registry_dir": registry_dir, "cloud_listen": cloud_listen}
        if kafka:
            overrides["kafka"] = {"bootstrap_servers": kafka}
        settings = load_config(config, **overrides)
        code = run_coordinator(settings, list(task), exit_when_done=not settings.serve_after_end)
    raise typer.Exit(code)


@app.command()
def status(
    registry_dir: Annotated[Path, typer.Option(help="The coordinator's registry.")] = Path(
        "coordinator-state"
    ),
    task: Annotated[str | None, typer.Option(help="Only this task, with every version.")] = None,
) -> None:
    """Tasks, rounds and per-exit held-out metrics from the registry."""
    with reported(console):
        from coordinator.registry import Registry

        with Registry(registry_dir) as registry:
            infos = registry.tasks()
            overview = Table(title=f"tasks in {registry_dir}")
            for col in ("task", "status", "latest version", "open round", "refused updates"):
                overview.add_column(col)
            for info in infos:
                refused = registry.refusals(info.task_id)
                overview.add_row(
                    info.task_id,
                    info.status,
                    str(info.latest_version),
                    "-" if info.current_round is None else str(info.current_round),
                    ", ".join(f"{k} {v}" for k, v in sorted(refused.items())) or "0",
                )
            console.print(overview)
            for info in infos:
                if task is not None and info.task_id != task:
                    continue
                table = Table(title=f"{info.task_id}: held-out metrics per version")
                for col in (
                    "version",
                    "updates",
                    "edge MAE",
                    "fog MAE",
                    "cloud MAE",
                    "cloud RMSE",
                    "chain MAE",
                    "exit rates e/f/c",
                ):
                    table.add_column(col, justify="right")
                for v in registry.versions(info.task_id):
                    m = v.metrics
                    rates = m.get("exit_rates", {})
                    table.add_row(
                        str(v.version),
                        str(v.update_count),
                        *(f"{m[e]['mae']:.3f}" for e in ("edge", "fog", "cloud")),
                        f"{m['cloud']['rmse']:.3f}",
                        f"{m['chain']['mae']:.3f}",
                        "/".join(f"{rates.get(e, 0):.2f}" for e in ("edge", "fog", "cloud")),
                    )
                console.print(table)
