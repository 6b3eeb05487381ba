"""Turn naive local wall-clock times into aware timestamps, resolving DST ambiguity.

The councils' files hold local time with no offset. In the autumn hour that occurs twice a
session that starts at 01:50 (BST) and ends at 01:10 (GMT) looks negative when read naively.
We read ambiguous starts as the first occurrence (daylight time) and ambiguous ends as the first
occurrence too, unless that makes the session end before it starts, in which case the second
(standard time) reading is the only consistent one. Times that do not exist (the spring-forward
hour) are shifted forward.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def localize_start(naive: pd.Series, tz: str) -> pd.Series:
    ambiguous = np.ones(len(naive), dtype=bool)
    return naive.dt.tz_localize(tz, ambiguous=ambiguous, nonexistent="shift_forward")


def localize_end(start: pd.Series, naive_end: pd.Series, tz: str) -> tuple[pd.Series, int]:
    """Return aware end times and how many sessions DST resolution made non-negative."""
    first = naive_end.dt.tz_localize(
        tz, ambiguous=np.ones(len(naive_end), dtype=bool), nonexistent="shift_forward"
    )
    second = naive_end.dt.tz_localize(
        tz, ambiguous=np.zeros(len(naive_end), dtype=bool), nonexistent="shift_forward"
    )
    use_second = (first < start) & (second >= start)
    end = first.where(~use_second, second)
    return end, int(use_second.sum())


def localize_with_abbreviation(naive: pd.Series, abbreviation: pd.Series, tz: str) -> pd.Series:
    """Localize using an explicit zone abbreviation column (PDT/PST/UTC) where present."""
    offsets = {"PDT": -7, "PST": -8, "UTC": 0, "GMT": 0}
    hours = abbreviation.str.strip().str.upper().map(offsets)
    known = hours.notna() & naive.notna()
    out = localize_start(naive, tz)
    if known.any():
        utc = (naive[known] - pd.to_timedelta(hours[known].astype(float), unit="h")).dt.tz_localize(
            "UTC"
        )
        out = out.astype(f"datetime64[ns, {tz}]")
        out[known] = utc.dt.tz_convert(tz).astype(f"datetime64[ns, {tz}]")
    return out
