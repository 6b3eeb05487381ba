"""One-session validation agrees with batch cleaning and names why a session is refused.

Bad sessions are real Dundee sessions with one field edited (``dataclasses.replace``).
"""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from models.datasets.cleaning import CleaningRules
from models.datasets.record import Session, iter_sessions
from models.datasets.validation import REASONS, InvalidSession, validate_session

RULES = CleaningRules()
LONDON = ZoneInfo("Europe/London")


@pytest.fixture(scope="module")
def real(dundee) -> Session:
    return next(iter_sessions(dundee.sessions.iloc[:1]))


def test_every_cleaned_dundee_session_is_valid(dundee):
    """Everything batch cleaning kept, including the sessions DST resolution fixed, passes."""
    for s in iter_sessions(dundee.sessions):
        validate_session(s)


def _reason(s: Session, rules: CleaningRules = RULES) -> str:
    with pytest.raises(InvalidSession) as info:
        validate_session(s, rules)
    assert info.value.reason in REASONS
    assert isinstance(info.value, ValueError)
    return info.value.reason


def _lasting(s: Session, hours: float) -> Session:
    return dataclasses.replace(s, end=s.start + timedelta(hours=hours))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"session_id": ""}, "missing_session_id"),
        ({"station_id": "  "}, "missing_station_id"),
        ({"station_id": None}, "missing_station_id"),
        ({"energy_kwh": math.nan}, "non_finite_energy"),
        ({"energy_kwh": math.inf}, "non_finite_energy"),
        ({"energy_kwh": None}, "non_finite_energy"),
        ({"energy_kwh": -3.0}, "negative_energy"),
        ({"energy_kwh": 0.0}, "negative_energy"),
        ({"energy_kwh": RULES.max_energy_kwh + 0.01}, "absurd_energy"),
        ({"charging_time_h": math.nan}, "bad_charging_time"),
        ({"charging_time_h": -1.0}, "bad_charging_time"),
        ({"latitude": math.inf}, "bad_coordinates"),
        ({"longitude": math.nan}, "bad_coordinates"),
        ({"latitude": 91.0}, "bad_coordinates"),
        ({"longitude": -180.5}, "bad_coordinates"),
        ({"latitude": None}, "bad_coordinates"),
    ],
)
def test_bad_field_is_refused_with_its_reason(real, changes, reason):
    assert _reason(dataclasses.replace(real, **changes)) == reason


def test_time_rules(real):
    assert _reason(_lasting(real, -0.5)) == "end_before_start"
    assert _reason(_lasting(real, RULES.max_duration_h + 0.1)) == "absurd_duration"
    naive = dataclasses.replace(real, end=real.end.replace(tzinfo=None))
    assert _reason(naive) == "naive_time"
    placeholder = dataclasses.replace(real, start=real.start.replace(year=1970))
    assert _reason(placeholder) == "placeholder_date"


def test_limits_are_inclusive_like_batch_cleaning(real):
    validate_session(dataclasses.replace(real, energy_kwh=RULES.max_energy_kwh))
    validate_session(_lasting(real, RULES.max_duration_h))
    validate_session(_lasting(real, 0))


def test_duration_is_measured_between_instants_across_dst(real):
    """01:50 BST to 01:10 GMT on 29 Oct 2017 is 20 minutes, though the wall clock went back."""
    start = datetime(2017, 10, 29, 1, 50, tzinfo=LONDON)
    end = datetime(2017, 10, 29, 1, 10, fold=1, tzinfo=LONDON)
    validate_session(dataclasses.replace(real, start=start, end=end))
    # Wall clocks 71h30 apart across the autumn change are 72h30 apart in real time.
    start = datetime(2017, 10, 27, 3, 0, tzinfo=LONDON)
    late = dataclasses.replace(real, start=start, end=start.replace(day=30, hour=2, minute=30))
    assert _reason(late) == "absurd_duration"


def test_the_rules_passed_are_the_rules_applied(real):
    assert _reason(real, CleaningRules(max_energy_kwh=real.energy_kwh / 2)) == "absurd_energy"
    validate_session(_lasting(real, 90), CleaningRules(max_duration_h=100.0))


def test_first_broken_rule_wins_in_batch_order(real):
    both = dataclasses.replace(_lasting(real, -1), energy_kwh=-1.0)
    assert _reason(both) == "negative_energy"
