"""Loaders on the real files: counts the data's README documents, types, time zones, errors."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from models.datasets.catalog import load_dataset
from models.datasets.cleaning import DropReason
from models.datasets.errors import DatasetError
from models.datasets.record import SESSION_COLUMNS, Session, iter_sessions
from tests.conftest import PALO_ALTO_EXCERPT


def test_dundee_counts_match_the_publisher_files(dundee):
    report = dundee.report
    assert report.rows_read == 67_112  # all four files
    assert report.dropped[DropReason.TEST_SITE] == 464
    assert report.dropped[DropReason.ABSURD_ENERGY] == 1  # the 1,430 kWh session
    assert report.rows_kept == len(dundee.sessions)
    assert report.rows_kept + report.rows_dropped == report.rows_read


def test_dundee_kept_sessions_are_clean(dundee):
    s = dundee.sessions
    assert tuple(s.columns) == SESSION_COLUMNS
    assert s["session_id"].is_unique
    assert (s["energy_kwh"] > 0).all() and (s["energy_kwh"] <= 150).all()
    hours = (s["end"] - s["start"]).dt.total_seconds() / 3600
    assert (hours >= 0).all() and (hours <= 72).all()
    assert s["start"].is_monotonic_increasing
    assert s["station_id"].nunique() == 67
    # every station has coordinates: 47 from the publisher, 20 filled from the third-party file
    assert s["latitude"].notna().all()
    assert dundee.location_sources == {"publisher": 47, "third-party": 20}
    # only the June-September file carries user ids
    assert s["vehicle_id"].notna().sum() > 10_000


def test_dundee_autumn_dst_night_is_resolved_not_negative(dundee):
    s = dundee.sessions
    assert dundee.report.dst_resolved == 3
    night = s[(s["start"] >= "2017-10-29 00:00+01:00") & (s["start"] < "2017-10-29 03:00+00:00")]
    assert len(night) > 0
    assert ((night["end"] - night["start"]).dt.total_seconds() >= 0).all()


def test_times_are_aware_and_in_uk_local_time(dundee):
    first = next(iter_sessions(dundee.sessions.head(1)))
    assert isinstance(first, Session)
    assert first.start.tzinfo is not None
    # 01/09/2017 00:11 BST is 2017-08-31 23:11 UTC
    assert first.start.astimezone(UTC) == datetime(2017, 8, 31, 23, 11, tzinfo=UTC)
    assert first.plugin_duration_h > 0


def test_perth_counts(perth):
    assert perth.report.rows_read == 66_664
    assert perth.report.dropped[DropReason.TEST_SITE] == 21
    assert perth.report.dropped[DropReason.OPEN_SESSION] == 185
    # 01/01/1970 end dates are placeholders, not DST: counted as such
    assert perth.report.dropped[DropReason.PLACEHOLDER_DATE] == 5
    assert perth.sessions["station_id"].nunique() == 36
    assert perth.sessions["session_id"].is_unique


def test_palo_alto_excerpt_early_layout():
    data = load_dataset("paloalto", PALO_ALTO_EXCERPT)
    s = data.sessions
    assert len(s) == 52 and s["station_id"].nunique() == 2
    first = s.iloc[0]
    # "7/29/2011 20:17" PDT; charging time "1:54:03"; energy 6.249457 kWh
    assert first["start"].tz_convert("UTC") == pd.Timestamp("2011-07-30 03:17", tz="UTC")
    assert first["charging_time_h"] == pytest.approx(1 + 54 / 60 + 3 / 3600)
    assert first["energy_kwh"] == pytest.approx(6.249457)
    assert first["connector"] == "Level 2 J1772"
    assert first["latitude"] == pytest.approx(37.444572)
    # timestamps have minute resolution, charging time has seconds
    plugged_h = (s["end"] - s["start"]).dt.total_seconds() / 3600
    assert (s["charging_time_h"] <= plugged_h + 1 / 60).all()


def test_palo_alto_2011_2020_layout(tmp_path: Path):
    """The same real rows laid out as the 2011-2020 release: no Address 2 or minute columns,
    an added User ID column."""
    raw = pd.read_csv(PALO_ALTO_EXCERPT, dtype=str, keep_default_na=False)
    relaid = raw.drop(columns=["Address 2", "Park Duration (mins)", "Charge Duration (mins)"])
    relaid.insert(relaid.columns.get_loc("County"), "User ID", "")
    path = tmp_path / "ChargePoint Data CY20Q4.csv"
    relaid.to_csv(path, index=False)
    early = load_dataset("paloalto", PALO_ALTO_EXCERPT).sessions
    late = load_dataset("paloalto", path).sessions
    pd.testing.assert_frame_equal(early, late)


def test_palo_alto_needs_a_path():
    with pytest.raises(DatasetError, match="--path"):
        load_dataset("paloalto")


def test_missing_file_is_named(tmp_path: Path):
    with pytest.raises(DatasetError, match=r"cpdata\.csv\.gz: file not found"):
        load_dataset("dundee", tmp_path)


def test_unexpected_columns_are_named(tmp_path: Path):
    bad = tmp_path / "pa.csv"
    pd.read_csv(PALO_ALTO_EXCERPT, dtype=str).drop(columns=["Energy (kWh)"]).to_csv(
        bad, index=False
    )
    with pytest.raises(DatasetError, match=r"pa\.csv: missing column\(s\) 'Energy \(kWh\)'"):
        load_dataset("paloalto", bad)


def test_unknown_dataset():
    with pytest.raises(DatasetError, match="unknown"):
        load_dataset("oslo")
