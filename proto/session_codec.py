"""The :class:`~models.datasets.record.Session` record to and from its wire message.

Times cross the wire as unix milliseconds plus the station's IANA zone name, never as an
offset: local-time features (hour of day, weekday) need the zone's rules, and an offset alone
cannot say which side of a DST change a time falls on. No pandas here: the vehicle agent uses
this module and does not ship pandas.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from functools import cache
from pathlib import PurePath
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from models.datasets.record import Session
from proto import sessions_pb2
from proto.wire_errors import MalformedMessage

__all__ = ["from_unix_ms", "session_from_proto", "session_to_proto", "to_unix_ms", "zone_name"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_OPTIONAL_STRINGS = ("vehicle_id", "connector", "charger_model")
_OPTIONAL_FLOATS = ("charging_time_h", "latitude", "longitude")


@cache
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _zone_from_path(filename: str) -> str | None:
    """The longest trailing part of a zone file's path that is an IANA name.

    dateutil names a zone by its file (``/usr/share/zoneinfo/Europe/London``); longest first so
    ``Asia/Singapore`` is not shortened to its alias ``Singapore``.
    """
    parts = PurePath(filename).parts
    for i in range(len(parts)):
        candidate = "/".join(parts[i:])
        if candidate in _known_zones():
            return candidate
    return None


def zone_name(tz: tzinfo | None) -> str:
    """The IANA name of a zoneinfo, pytz or dateutil zone (or ``"UTC"`` for a fixed UTC zone).

    Raises :class:`MalformedMessage` for a naive time or a zone with no IANA name (a bare
    offset), since the receiver could not compute local time from it.
    """
    if tz is None:
        raise MalformedMessage("a naive datetime has no timezone to send")
    candidates = [
        getattr(tz, "key", None),  # zoneinfo.ZoneInfo
        getattr(tz, "zone", None),  # pytz
    ]
    filename = getattr(tz, "_filename", None)  # dateutil.tz.tzfile
    if isinstance(filename, str):
        candidates.append(_zone_from_path(filename))
    for name in candidates:
        if isinstance(name, str) and name in _known_zones():
            return name
    if tz.utcoffset(None) == timedelta(0) and tz.tzname(None) in ("UTC", "Z"):
        return "UTC"
    raise MalformedMessage(f"timezone {tz!r} has no IANA name")


def to_unix_ms(when: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime (sub-millisecond part truncated)."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise MalformedMessage(f"naive datetime {when.isoformat()} has no instant")
    return (when - _EPOCH) // _MS


def _zone(name: str) -> ZoneInfo:
    if not name:
        raise MalformedMessage("timezone is missing")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        # OSError: a name that is a directory of the zone database ("Europe") or unreadable.
        raise MalformedMessage(f"unknown timezone {name[:64]!r}") from exc


def from_unix_ms(unix_ms: int, zone: str) -> datetime:
    """The aware datetime in ``zone`` (an IANA name) for unix milliseconds."""
    tz = _zone(zone)
    try:
        return (_EPOCH + unix_ms * _MS).astimezone(tz)
    except OverflowError as exc:
        raise MalformedMessage(f"time {unix_ms} ms is out of range") from exc


def _require_ids(session_id: str | None, station_id: str | None) -> None:
    if not session_id:
        raise MalformedMessage("session_id is missing")
    if not station_id:
        raise MalformedMessage(f"session {session_id}: station_id is missing")


def session_to_proto(s: Session) -> sessions_pb2.Session:
    """Encode one session; the zone sent is the start time's zone."""
    _require_ids(s.session_id, s.station_id)
    try:
        zone = zone_name(s.start.tzinfo)
        start_ms, end_ms = to_unix_ms(s.start), to_unix_ms(s.end)
    except MalformedMessage as exc:
        raise MalformedMessage(f"session {s.session_id}: {exc}") from exc
    message = sessions_pb2.Session(
        session_id=str(s.session_id),
        station_id=str(s.station_id),
        start_unix_ms=start_ms,
        end_unix_ms=end_ms,
        timezone=zone,
        energy_kwh=float(s.energy_kwh),
    )
    for name in _OPTIONAL_STRINGS:
        value = getattr(s, name)
        if value is not None:
            setattr(message, name, str(value))
    for name in _OPTIONAL_FLOATS:
        value = getattr(s, name)
        if value is not None:
            setattr(message, name, float(value))
    return message


def session_from_proto(m: sessions_pb2.Session) -> Session:
    """Decode one session, with times in its IANA zone. Values are not range-checked here:
    that is :func:`models.datasets.validation.validate_session`'s job."""
    _require_ids(m.session_id, m.station_id)
    try:
        start = from_unix_ms(m.start_unix_ms, m.timezone)
        end = from_unix_ms(m.end_unix_ms, m.timezone)
    except MalformedMessage as exc:
        raise MalformedMessage(f"session {m.session_id}: {exc}") from exc
    optional = {
        name: getattr(m, name) if m.HasField(name) else None
        for name in (*_OPTIONAL_STRINGS, *_OPTIONAL_FLOATS)
    }
    return Session(
        session_id=m.session_id,
        station_id=m.station_id,
        start=start,
        end=end,
        energy_kwh=m.energy_kwh,
        **optional,
    )
