"""The session wire codec: real Dundee sessions survive the wire, bad messages are refused."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.datasets.record import Session, iter_sessions
from proto import sessions_pb2
from proto.session_codec import (
    from_unix_ms,
    session_from_proto,
    session_to_proto,
    to_unix_ms,
    zone_name,
)
from proto.wire_errors import MalformedMessage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def around_dst(dundee) -> list[Session]:
    """Real sessions from the week of the 29 October 2017 clock change, plus the first 200."""
    frame = dundee.sessions
    week = frame[(frame["start"] >= "2017-10-26") & (frame["start"] < "2017-11-01")]
    return list(iter_sessions(frame.iloc[:200])) + list(iter_sessions(week))


def _wire(s: Session) -> Session:
    data = session_to_proto(s).SerializeToString()
    return session_from_proto(sessions_pb2.Session.FromString(data))


def _same_instant_and_offset(a: datetime, b: datetime) -> bool:
    # ``==`` between two times in one zone compares wall clocks and ignores DST fold.
    return a.timestamp() == b.timestamp() and a.utcoffset() == b.utcoffset()


def test_real_sessions_round_trip_across_the_dst_change(around_dst):
    crossing = [s for s in around_dst if s.start.utcoffset() != s.end.utcoffset()]
    assert crossing, "the slice must hold sessions that span the clock change"
    for s in around_dst:
        back = _wire(s)
        assert back == s
        assert _same_instant_and_offset(back.start, s.start)
        assert _same_instant_and_offset(back.end, s.end)
        assert back.start.tzinfo == ZoneInfo("Europe/London")


def test_optional_fields_unset_stay_none(around_dst):
    no_vehicle = next(s for s in around_dst if s.vehicle_id is None)
    message = session_to_proto(no_vehicle)
    assert not message.HasField("vehicle_id")
    assert not message.HasField("charging_time_h")
    assert session_from_proto(message).vehicle_id is None


def test_ambiguous_hour_keeps_which_occurrence(around_dst):
    """01:30 on 29 Oct 2017 happens twice in London; the wire must not merge the two."""
    s = around_dst[0]
    london = ZoneInfo("Europe/London")
    first = datetime(2017, 10, 29, 1, 30, tzinfo=london)
    second = first.replace(fold=1)
    moved = dataclasses.replace(s, start=first, end=second)  # bad-input style: edited times
    back = _wire(moved)
    assert back.start.utcoffset() == timedelta(hours=1)
    assert back.end.utcoffset() == timedelta(0)
    assert back.end.timestamp() - back.start.timestamp() == 3600


def test_zone_names_from_dateutil_pandas_frames(dundee):
    frame = dundee.sessions.iloc[:3].copy()
    for column in ("start", "end"):
        frame[column] = frame[column].dt.tz_convert("dateutil/Europe/London")
    sessions = list(iter_sessions(frame))
    assert type(sessions[0].start.tzinfo).__module__.startswith("dateutil")
    assert zone_name(sessions[0].start.tzinfo) == "Europe/London"
    assert _wire(sessions[0]).start.timestamp() == sessions[0].start.timestamp()


def test_zone_names_from_zoneinfo_and_utc(around_dst):
    assert zone_name(around_dst[0].start.tzinfo) == "Europe/London"
    assert zone_name(ZoneInfo("Asia/Singapore")) == "Asia/Singapore"
    assert zone_name(UTC) == "UTC"


def test_zone_names_from_pytz_style_zones():
    class PytzStandIn(tzinfo):
        """Not pytz (not a dependency): a zone that, like pytz's, names itself in ``zone``."""

        zone = "Europe/London"

        def utcoffset(self, dt):
            return None

    assert zone_name(PytzStandIn()) == "Europe/London"


def test_zone_names_from_pytz():
    pytz = pytest.importorskip("pytz")
    assert zone_name(pytz.timezone("America/Los_Angeles")) == "America/Los_Angeles"
    assert zone_name(pytz.utc) == "UTC"


def test_unknown_timezone_is_malformed(around_dst):
    message = session_to_proto(around_dst[0])
    message.timezone = "Europe/Atlantis"
    with pytest.raises(MalformedMessage, match="unknown timezone"):
        session_from_proto(message)
    message.timezone = ""
    with pytest.raises(MalformedMessage, match="timezone is missing"):
        session_from_proto(message)


@pytest.mark.parametrize("field", ["session_id", "station_id"])
def test_missing_ids_are_malformed(around_dst, field):
    message = session_to_proto(around_dst[0])
    message.ClearField(field)
    with pytest.raises(MalformedMessage, match=field):
        session_from_proto(message)
    with pytest.raises(MalformedMessage, match=field):
        session_to_proto(dataclasses.replace(around_dst[0], **{field: ""}))


def test_times_without_an_iana_zone_cannot_be_sent(around_dst):
    s = around_dst[0]
    naive = dataclasses.replace(s, start=s.start.replace(tzinfo=None))
    with pytest.raises(MalformedMessage, match="naive"):
        session_to_proto(naive)
    offset_only = dataclasses.replace(s, start=s.start.astimezone(timezone(timedelta(hours=1))))
    with pytest.raises(MalformedMessage, match="no IANA name"):
        session_to_proto(offset_only)


def test_out_of_range_time_is_malformed(around_dst):
    message = session_to_proto(around_dst[0])
    message.end_unix_ms = 2**62
    with pytest.raises(MalformedMessage, match="out of range"):
        session_from_proto(message)


@given(
    unix_ms=st.integers(min_value=-(2**40), max_value=2**42),
    zone=st.sampled_from(["Europe/London", "America/Los_Angeles", "Australia/Lord_Howe", "UTC"]),
)
def test_unix_ms_round_trip_property(unix_ms, zone):
    when = from_unix_ms(unix_ms, zone)
    assert zone_name(when.tzinfo) == zone
    assert to_unix_ms(when) == unix_ms


def test_codec_imports_without_pandas():
    code = "import sys, proto.session_codec; sys.exit('pandas' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
