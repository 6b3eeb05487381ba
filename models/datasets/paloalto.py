"""City of Palo Alto ChargePoint export: the early 35-column release and the 2011-2020 one.

Both have ``Start Date``/``End Date`` as m/d/yyyy H:MM with a zone abbreviation column
(PDT/PST), which resolves DST exactly. The 2011-2020 release adds ``User ID`` and drops
``Address 2`` and the ``Park/Charge Duration (mins)`` columns. Only the charging time is in
``Charging Time (hh:mm:ss)``; plug-in time is end - start.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from models.datasets.csv_source import blank_to_na, parse_number, read_raw_csv
from models.datasets.timezones import localize_with_abbreviation

TIMEZONE = "America/Los_Angeles"
REQUIRED = (
    "Station Name",
    "Start Date",
    "Start Time Zone",
    "End Date",
    "End Time Zone",
    "Charging Time (hh:mm:ss)",
    "Energy (kWh)",
    "Port Type",
    "Plug Type",
    "Latitude",
    "Longitude",
    "Plug In Event Id",
)
DATE_FORMATS = ("%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M")


def _naive(text: pd.Series) -> pd.Series:
    text = text.str.strip()
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns]")
    for fmt in DATE_FORMATS:
        todo = out.isna() & (text != "")
        if not todo.any():
            break
        out[todo] = pd.to_datetime(text[todo], format=fmt, errors="coerce")
    return out


def _hours(hhmmss: pd.Series) -> pd.Series:
    parts = hhmmss.str.strip().str.extract(r"^(\d+):(\d{1,2}):(\d{1,2})$").astype("float64")
    return parts[0] + parts[1] / 60.0 + parts[2] / 3600.0


def parse_paloalto(path: Path) -> tuple[pd.DataFrame, int]:
    raw = read_raw_csv(path, REQUIRED)
    start = localize_with_abbreviation(_naive(raw["Start Date"]), raw["Start Time Zone"], TIMEZONE)
    end = localize_with_abbreviation(_naive(raw["End Date"]), raw["End Time Zone"], TIMEZONE)
    station = blank_to_na(raw["Station Name"])
    # Plug In Event Id counts per station (it is not unique across stations).
    session_id = "pa:" + station.fillna("?") + ":" + raw["Plug In Event Id"].str.strip()
    session_id = session_id.where(
        ~session_id.duplicated(keep=False), session_id + "@" + raw.index.astype(str)
    )
    vehicle = blank_to_na(raw["User ID"]) if "User ID" in raw.columns else pd.NA
    model = blank_to_na(raw["Model Number"]) if "Model Number" in raw.columns else pd.NA
    connector = blank_to_na(raw["Port Type"] + " " + raw["Plug Type"])
    frame = pd.DataFrame(
        {
            "session_id": session_id,
            "station_id": station,
            "start": start,
            "end": end,
            "energy_kwh": parse_number(raw["Energy (kWh)"]),
            "vehicle_id": vehicle,
            "charging_time_h": _hours(raw["Charging Time (hh:mm:ss)"]),
            "connector": connector,
            "charger_model": model,
            "latitude": parse_number(raw["Latitude"]),
            "longitude": parse_number(raw["Longitude"]),
            "is_test_site": False,
        }
    )
    return frame, 0
