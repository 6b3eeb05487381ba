"""``evfl agent``: run the vehicle agent, and talk to a running one through its local API."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from evfl.user_errors import reported

app = typer.Typer(help="The vehicle agent.", no_args_is_help=True)
console = Console()
API = "unix:agent-state/agent.sock"


def _stub(api: str):  # type: ignore[no-untyped-def]
    from proto import agent_pb2_grpc
    from proto.grpc_channel import open_channel

    return agent_pb2_grpc.VehicleAgentStub(open_channel(api))


@app.command()
def run(
    config: Annotated[Path | None, typer.Option(help="agent.toml; EVFL_AGENT_* env wins.")] = None,
    vehicle_id: Annotated[str | None, typer.Option(help="This vehicle's id.")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="Queue and models.")] = None,
    listen: Annotated[str | None, typer.Option(help="Local API: unix:PATH or host:port.")] = None,
    log_format: Annotated[str, typer.Option(help="json or text.")] = "json",
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING.")] = "INFO",
) -> None:
    """Serve predictions, upload sessions when plugged in, take signed model updates."""
    from evfl.log_setup import configure

    configure(log_format, log_level)
    with reported(console):
        from agent.config import load_config
        from agent.main import run as run_agent

        run_agent(load_config(config, vehicle_id=vehicle_id, state_dir=state_dir, listen=listen))


@app.command()
def predict(
    task: Annotated[str, typer.Option(help="Task id, e.g. dundee-energy.")],
    features: Annotated[str, typer.Option(help="Encoded features, comma-separated.")],
    api: Annotated[str, typer.Option(help="The agent's local API address.")] = API,
    timeout_ms: Annotated[float, typer.Option(help="Deadline for the answer.")] = 0.0,
) -> None:
    """Ask a running agent for a prediction; shows which tier answered and each hop's time."""
    import grpc
    import numpy as np

    from proto import agent_pb2, inference_pb2
    from proto.tensor_codec import encode_tensor

    values = np.array([[float(v) for v in features.split(",")]], np.float32)
    request = agent_pb2.PredictRequest(
        task_id=task,
        request_id=uuid.uuid4().hex,
        features=encode_tensor(values, "features"),
        timeout_ms=timeout_ms,
    )
    try:
        reply = _stub(api).Predict(request, timeout=10)
    except grpc.RpcError as exc:
        console.print(f"[red]error:[/red] {exc.code().name}: {exc.details()}")
        raise typer.Exit(2) from None
    tier = inference_pb2.Tier.Name(reply.tier).lower()
    degraded = " [yellow]degraded[/yellow]" if reply.degraded else ""
    console.print(
        f"prediction {reply.prediction:.3f} ± {reply.uncertainty:.3f} from the {tier} exit "
        f"(model version {reply.model_version}){degraded}"
    )
    table = Table("tier", "compute ms", "total ms")
    for hop in reply.hops:
        table.add_row(
            inference_pb2.Tier.Name(hop.tier).lower(),
            f"{hop.compute_ms:.3f}",
            f"{hop.total_ms:.3f}",
        )
    console.print(table)


@app.command()
def status(api: Annotated[str, typer.Option(help="The agent's local API address.")] = API) -> None:
    """Models, queue and plug state of a running agent."""
    from proto import agent_pb2

    s = _stub(api).Status(agent_pb2.AgentStatusRequest(), timeout=5)
    console.print(
        f"vehicle {s.vehicle_id}: {'plugged in at ' + s.station_target if s.plugged else 'driving'}"
        f"; {s.queue_length} sessions queued, {s.uploaded} uploaded, "
        f"{s.refused_partitions} partition updates refused"
    )
    table = Table("task", "version", "sha256", "rollback to")
    for m in s.models:
        table.add_row(m.task_id, str(m.version), m.sha256[:12], str(m.previous_version))
    console.print(table)


@app.command()
def plug(
    station: Annotated[str | None, typer.Option(help="Station host:port; omit to unplug.")] = None,
    api: Annotated[str, typer.Option(help="The agent's local API address.")] = API,
) -> None:
    """Tell the agent it is plugged in at a station (uploads start), or unplugged."""
    from proto import agent_pb2

    s = _stub(api).SetPlugState(
        agent_pb2.PlugState(plugged=station is not None, station_target=station or ""), timeout=5
    )
    console.print(f"plugged: {s.plugged} {s.station_target}; {s.queue_length} sessions queued")
