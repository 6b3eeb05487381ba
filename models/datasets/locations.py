"""Charge-point coordinates for Dundee.

The publisher's file lacks 20 of the 67 session CP IDs (including the two busiest hubs). A
third-party file (``cp-locations_enriched``, same rows plus 20) fills them; we use the
publisher's coordinates wherever they exist and the enriched ones only for the gaps, and say
which stations came from where so a user can decide whether to trust them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from models.datasets.csv_source import parse_number, read_raw_csv

REQUIRED = ("Latitude", "Longitude", "CP ID")


@dataclass(frozen=True)
class StationLocations:
    table: pd.DataFrame  # index station_id; columns latitude, longitude, source

    def count_by_source(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.table["source"].value_counts().items()}


def _read(path: Path, source: str) -> pd.DataFrame:
    raw = read_raw_csv(path, REQUIRED)
    table = pd.DataFrame(
        {
            "station_id": raw["CP ID"].str.strip(),
            "latitude": parse_number(raw["Latitude"]),
            "longitude": parse_number(raw["Longitude"]),
        }
    )
    ok = (table["station_id"] != "") & table["latitude"].notna() & table["longitude"].notna()
    table = table[ok].drop_duplicates("station_id", keep="first").set_index("station_id")
    table["source"] = source
    return table


def load_locations(publisher: Path, enriched: Path | None) -> StationLocations:
    table = _read(publisher, "publisher")
    if enriched is not None:
        extra = _read(enriched, "third-party")
        table = pd.concat([table, extra[~extra.index.isin(table.index)]])
    return StationLocations(table)


def attach(frame: pd.DataFrame, locations: StationLocations) -> pd.DataFrame:
    out = frame.copy()
    ids = out["station_id"].astype(object)
    out["latitude"] = ids.map(locations.table["latitude"]).astype("float64")
    out["longitude"] = ids.map(locations.table["longitude"]).astype("float64")
    return out
