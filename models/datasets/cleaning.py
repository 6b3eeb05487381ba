"""Explicit cleaning rules, applied in a fixed order and counted per reason.

Each dropped row is attributed to the first rule it breaks, so the counts add up to the rows
dropped and a user can see exactly why the kept set is what it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import pandas as pd


class DropReason(StrEnum):
    TEST_SITE = "test site"
    MISSING_STATION = "no station id"
    OPEN_SESSION = "open session"
    PLACEHOLDER_DATE = "placeholder date"
    NON_POSITIVE_ENERGY = "non-positive energy"
    ABSURD_ENERGY = "absurd energy"
    NEGATIVE_DURATION = "negative duration"
    ABSURD_DURATION = "absurd duration"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class CleaningRules:
    """Thresholds: above ``max_energy_kwh`` no 2016-2020 car battery could take the charge;
    above ``max_duration_h`` the record is a parked car, not a charging session."""

    max_energy_kwh: float = 150.0
    max_duration_h: float = 72.0
    earliest_year: int = 2000


@dataclass(frozen=True)
class CleaningReport:
    dataset: str
    rows_read: int
    dropped: dict[DropReason, int] = field(default_factory=dict)
    dst_resolved: int = 0

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped.values())

    @property
    def rows_kept(self) -> int:
        return self.rows_read - self.rows_dropped


DUPLICATE_KEY = ("station_id", "connector", "start", "end", "energy_kwh")


def rule_masks(frame: pd.DataFrame, rules: CleaningRules) -> dict[DropReason, pd.Series]:
    """Boolean 'breaks this rule' masks, in the order they are applied."""
    duration_h = (frame["end"] - frame["start"]).dt.total_seconds() / 3600.0
    station = frame["station_id"].fillna("").str.strip()
    energy = frame["energy_kwh"]
    placeholder = (frame["start"].dt.year < rules.earliest_year) | (
        frame["end"].dt.year < rules.earliest_year
    )
    return {
        DropReason.TEST_SITE: frame["is_test_site"].fillna(False).astype(bool),
        DropReason.MISSING_STATION: station == "",
        DropReason.OPEN_SESSION: frame["start"].isna() | frame["end"].isna() | energy.isna(),
        DropReason.PLACEHOLDER_DATE: placeholder.fillna(False).astype(bool),
        DropReason.NON_POSITIVE_ENERGY: energy <= 0,
        DropReason.ABSURD_ENERGY: energy > rules.max_energy_kwh,
        DropReason.NEGATIVE_DURATION: duration_h < 0,
        DropReason.ABSURD_DURATION: duration_h > rules.max_duration_h,
    }


def clean(
    frame: pd.DataFrame, rules: CleaningRules, dataset: str, dst_resolved: int = 0
) -> tuple[pd.DataFrame, CleaningReport]:
    """Drop rows that break a rule (then exact duplicates); return kept rows and the counts.

    ``frame`` holds the session columns plus a boolean ``is_test_site`` column.
    """
    remaining = pd.Series(True, index=frame.index)
    dropped: dict[DropReason, int] = {}
    for reason, mask in rule_masks(frame, rules).items():
        hit = remaining & mask.fillna(False).astype(bool)
        dropped[reason] = int(hit.sum())
        remaining &= ~hit
    kept = frame[remaining]
    duplicate = kept.duplicated(subset=list(DUPLICATE_KEY), keep="first")
    dropped[DropReason.DUPLICATE] = int(duplicate.sum())
    kept = kept[~duplicate].drop(columns=["is_test_site"])
    kept = kept.sort_values(["start", "station_id"], kind="stable").reset_index(drop=True)
    report = CleaningReport(dataset, len(frame), dropped, dst_resolved)
    return kept, report
