"""The ``evfl`` command: one sub-command group per concern.

Heavy libraries (pandas, TensorFlow) are imported inside the commands that need them, so the
vehicle agent's light install can run ``evfl`` too.
"""

from __future__ import annotations

import os

import typer

from evfl import agent_cli, coordinator_cli, data_cli, demo_cli, fog_cli, model_cli, study_cli

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

app = typer.Typer(
    help="Federated, incremental learning of partitioned early-exit networks for EV charging.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data_cli.app, name="data")
app.add_typer(model_cli.app, name="model")
app.add_typer(fog_cli.app, name="fog")
app.add_typer(coordinator_cli.app, name="coordinator")
app.add_typer(agent_cli.app, name="agent")
app.add_typer(study_cli.app, name="study")
app.command("demo")(demo_cli.demo)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
