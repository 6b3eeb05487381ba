"""``evfl fog``: run a station's fog service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from evfl.user_errors import reported

app = typer.Typer(help="The station's fog service.", no_args_is_help=True)
console = Console(stderr=True)


@app.command()
def serve(
    station_id: Annotated[str | None, typer.Option(help="Station id, e.g. dd:50911.")] = None,
    config: Annotated[Path | None, typer.Option(help="fog.toml; EVFL_FOG_* env wins.")] = None,
    listen: Annotated[str | None, typer.Option(help="host:port for gRPC (port 0: any).")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="Where the session store lives.")] = None,
    log_format: Annotated[str, typer.Option(help="json or text.")] = "json",
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING.")] = "INFO",
) -> None:
    """Store uploaded sessions, serve the fog partition, train on new global versions."""
    from evfl.log_setup import configure

    configure(log_format, log_level)
    with reported(console):
        from fog_node.config import load_config
        from fog_node.main import run

        cfg = load_config(config, station_id=station_id, listen=listen, state_dir=state_dir)
        run(cfg)
