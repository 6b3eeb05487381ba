"""Parser for ChargePlace Scotland exports (Dundee and Perth & Kinross share the layout).

Columns: CP ID, Connector, Start Date, Start Time, End Date, End Time, Total kWh, Site, Model;
Dundee adds ``Charging event`` (a unique id) and, in its last file, ``User ID``. Dates are
dd/mm/yyyy and times HH:MM in UK local time.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from models.datasets.csv_source import blank_to_na, parse_number, read_raw_csv
from models.datasets.timezones import localize_end, localize_start

TIMEZONE = "Europe/London"
REQUIRED = (
    "CP ID",
    "Connector",
    "Start Date",
    "Start Time",
    "End Date",
    "End Time",
    "Total kWh",
    "Site",
    "Model",
)
TEST_SITE_MARKER = "TEST SITE"


def _naive(date: pd.Series, time: pd.Series) -> pd.Series:
    return pd.to_datetime(
        date.str.strip() + " " + time.str.strip(), format="%d/%m/%Y %H:%M", errors="coerce"
    )


def parse_chargeplace(path: Path, id_prefix: str) -> tuple[pd.DataFrame, int]:
    """One file -> session columns + ``is_test_site``; also the count of DST-resolved ends."""
    raw = read_raw_csv(path, REQUIRED)
    start = localize_start(_naive(raw["Start Date"], raw["Start Time"]), TIMEZONE)
    end, dst_resolved = localize_end(start, _naive(raw["End Date"], raw["End Time"]), TIMEZONE)
    if "Charging event" in raw.columns:
        session_id = id_prefix + raw["Charging event"].str.strip()
    else:  # Perth has no event id: file and row number are stable because files are byte-exact
        session_id = id_prefix + path.name.split(".")[0] + ":" + raw.index.astype(str)
    vehicle = blank_to_na(raw["User ID"]) if "User ID" in raw.columns else pd.NA
    frame = pd.DataFrame(
        {
            "session_id": session_id,
            "station_id": blank_to_na(raw["CP ID"]),
            "start": start,
            "end": end,
            "energy_kwh": parse_number(raw["Total kWh"]),
            "vehicle_id": vehicle,
            "charging_time_h": float("nan"),
            "connector": blank_to_na(raw["Connector"]),
            "charger_model": blank_to_na(raw["Model"]),
            "is_test_site": raw["Site"].str.upper().str.contains(TEST_SITE_MARKER, regex=False),
        }
    )
    return frame, dst_resolved
