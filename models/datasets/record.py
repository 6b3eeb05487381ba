"""The one session record every dataset maps to, and its column schema.

Loaders return a :class:`pandas.DataFrame` whose columns are exactly :data:`SESSION_COLUMNS`
(vectorised work on 100k rows needs a frame); :func:`iter_sessions` turns rows into the typed
:class:`Session` record when code wants one session at a time (the agent's upload queue, the
station's store).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Session:
    """One charging session. Times are timezone-aware; unknown values are None."""

    session_id: str
    station_id: str
    start: datetime
    end: datetime
    energy_kwh: float
    vehicle_id: str | None = None
    charging_time_h: float | None = None
    connector: str | None = None
    charger_model: str | None = None
    latitude: float | None = None
    longitude: float | None = None

    @property
    def plugin_duration_h(self) -> float:
        return (self.end - self.start).total_seconds() / 3600.0


SESSION_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Session))
STRING_COLUMNS = ("session_id", "station_id", "vehicle_id", "connector", "charger_model")
FLOAT_COLUMNS = ("energy_kwh", "charging_time_h", "latitude", "longitude")
TIME_COLUMNS = ("start", "end")


def to_session_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Select and type the schema columns (missing optional ones become all-NA)."""
    import pandas as pd

    out = pd.DataFrame(index=frame.index)
    for name in SESSION_COLUMNS:
        col = frame[name] if name in frame.columns else None
        if name in STRING_COLUMNS:
            out[name] = col if col is not None else pd.NA
            out[name] = out[name].astype("string")
        elif name in FLOAT_COLUMNS:
            out[name] = pd.to_numeric(col, errors="coerce") if col is not None else float("nan")
            out[name] = out[name].astype("float64")
        else:
            if col is None:
                raise KeyError(f"session frame needs column {name!r}")
            out[name] = col
    return out.reset_index(drop=True)


def iter_sessions(frame: pd.DataFrame) -> Iterator[Session]:
    """Yield typed records from a session frame (NA becomes None)."""
    import pandas as pd

    for row in frame[list(SESSION_COLUMNS)].itertuples(index=False):
        values = {}
        for name, value in zip(SESSION_COLUMNS, row, strict=True):
            if value is pd.NA or (isinstance(value, float) and value != value):
                value = None
            elif name in TIME_COLUMNS:
                value = value.to_pydatetime()
            values[name] = value
        yield Session(**values)
