"""``evfl data``: what the real datasets hold and what cleaning kept."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from evfl.user_errors import reported

if TYPE_CHECKING:
    from models.datasets.catalog import Dataset

app = typer.Typer(
    help="Real EV charging datasets: loading, cleaning, summaries.", no_args_is_help=True
)
console = Console()


@app.command()
def summary(
    dataset: Annotated[
        list[str] | None, typer.Option(help="dundee, perth, paloalto (repeatable)")
    ] = None,
    paloalto: Annotated[
        Path | None, typer.Option(help="Palo Alto ChargePoint CSV (not shipped)")
    ] = None,
) -> None:
    """Rows read / kept / dropped by reason, stations, vehicles and date range per dataset."""
    from models.datasets.catalog import load_dataset
    from models.datasets.cleaning import DropReason

    names = dataset or (["dundee", "perth"] + (["paloalto"] if paloalto else []))
    with reported(console):
        loaded = [load_dataset(n, paloalto if n == "paloalto" else None) for n in names]
    table = Table(title="evfl data summary")
    table.add_column("", no_wrap=True)
    for d in loaded:
        table.add_column(d.name, justify="right")
    rows: list[tuple[str, list[str]]] = [
        ("files", [str(len(d.sources)) for d in loaded]),
        ("rows read", [f"{d.report.rows_read:,}" for d in loaded]),
        ("rows kept", [f"{d.report.rows_kept:,}" for d in loaded]),
        ("rows dropped", [f"{d.report.rows_dropped:,}" for d in loaded]),
    ]
    rows += [
        (f"  {reason.value}", [f"{d.report.dropped.get(reason, 0):,}" for d in loaded])
        for reason in DropReason
    ]
    rows += [
        ("DST-ambiguous ends fixed", [f"{d.report.dst_resolved:,}" for d in loaded]),
        ("stations", [f"{d.sessions['station_id'].nunique():,}" for d in loaded]),
        ("vehicles", [f"{d.sessions['vehicle_id'].nunique():,}" for d in loaded]),
        ("sessions with vehicle", [f"{d.sessions['vehicle_id'].notna().sum():,}" for d in loaded]),
        ("stations located", [_located(d) for d in loaded]),
        ("first plug-in", [f"{d.sessions['start'].min():%Y-%m-%d %H:%M %Z}" for d in loaded]),
        ("last plug-in", [f"{d.sessions['start'].max():%Y-%m-%d %H:%M %Z}" for d in loaded]),
        ("energy kWh (median)", [f"{d.sessions['energy_kwh'].median():.2f}" for d in loaded]),
    ]
    for label, values in rows:
        table.add_row(label, *values)
    console.print(table)


def _located(d: Dataset) -> str:
    sessions = d.sessions
    located = sessions.loc[sessions["latitude"].notna(), "station_id"].nunique()
    detail = ", ".join(f"{n} {src}" for src, n in d.location_sources.items())
    return f"{located}" + (f" ({detail})" if detail else "")
