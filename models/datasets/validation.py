"""The batch cleaning rules applied to one session, for sessions that arrive on a wire.

A station must refuse what :func:`models.datasets.cleaning.clean` would have dropped, or the
federated model trains on rows the offline study never saw. The thresholds come from
:class:`~models.datasets.cleaning.CleaningRules`; rules are checked in the batch order, so a
session is refused for the first rule it breaks, and the reason is a short code a station can
count and send back to the vehicle.

Unlike a frame, a wire can carry NaN or infinity in any number; those are refused too.
Durations are measured between instants, not wall-clock times, so a session across the
autumn DST change is judged by how long it really lasted.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import TypeGuard

from models.datasets.cleaning import CleaningRules
from models.datasets.record import Session

__all__ = ["REASONS", "InvalidSession", "validate_session"]

REASONS = (
    "missing_session_id",
    "missing_station_id",
    "naive_time",
    "placeholder_date",
    "non_finite_energy",
    "negative_energy",
    "absurd_energy",
    "end_before_start",
    "absurd_duration",
    "bad_charging_time",
    "bad_coordinates",
)

DEFAULT_RULES = CleaningRules()  # frozen, so one shared default is safe


class InvalidSession(ValueError):
    """A session breaks a cleaning rule; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def _finite(value: object) -> TypeGuard[float]:
    """A real number that is not NaN or infinite (a bool is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _aware(when: object) -> bool:
    return isinstance(when, datetime) and when.utcoffset() is not None


def _check_times(s: Session, rules: CleaningRules) -> None:
    if not (_aware(s.start) and _aware(s.end)):
        raise InvalidSession("naive_time", "start and end must be timezone-aware datetimes")
    if s.start.year < rules.earliest_year or s.end.year < rules.earliest_year:
        raise InvalidSession("placeholder_date", f"before {rules.earliest_year}")


def _check_energy(s: Session, rules: CleaningRules) -> None:
    # Batch cleaning drops energy <= 0 ("non-positive energy"): a session that delivered
    # nothing tells the model nothing about demand.
    if not _finite(s.energy_kwh):
        raise InvalidSession("non_finite_energy", f"energy_kwh={s.energy_kwh!r}")
    if s.energy_kwh <= 0:
        raise InvalidSession("negative_energy", f"energy_kwh={s.energy_kwh} is not positive")
    if s.energy_kwh > rules.max_energy_kwh:
        raise InvalidSession("absurd_energy", f"energy_kwh={s.energy_kwh} > {rules.max_energy_kwh}")


def _check_duration(s: Session, rules: CleaningRules) -> None:
    # Instants, not ``end - start``: subtracting two times in the same zone ignores DST.
    duration_h = (s.end.timestamp() - s.start.timestamp()) / 3600.0
    if duration_h < 0:
        raise InvalidSession("end_before_start", f"duration {duration_h:.3f} h")
    if duration_h > rules.max_duration_h:
        raise InvalidSession("absurd_duration", f"duration {duration_h:.1f} h")


def _check_optional_numbers(s: Session) -> None:
    if s.charging_time_h is not None and not (
        _finite(s.charging_time_h) and s.charging_time_h >= 0
    ):
        raise InvalidSession("bad_charging_time", f"charging_time_h={s.charging_time_h!r}")
    lat, lon = s.latitude, s.longitude
    if (lat is None) != (lon is None):
        raise InvalidSession("bad_coordinates", "latitude and longitude come together")
    if lat is not None and not (
        _finite(lat) and _finite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180
    ):
        raise InvalidSession("bad_coordinates", f"latitude={lat!r} longitude={lon!r}")


def validate_session(s: Session, rules: CleaningRules = DEFAULT_RULES) -> None:
    """Raise :class:`InvalidSession` for the first rule ``s`` breaks; return if it is clean."""
    if not (isinstance(s.session_id, str) and s.session_id.strip()):
        raise InvalidSession("missing_session_id")
    if not (isinstance(s.station_id, str) and s.station_id.strip()):
        raise InvalidSession("missing_station_id", f"session {s.session_id}")
    _check_times(s, rules)
    _check_energy(s, rules)
    _check_duration(s, rules)
    _check_optional_numbers(s)
