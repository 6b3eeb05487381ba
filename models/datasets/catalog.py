"""The datasets evfl knows, where their files are, and one call that loads and cleans any of them.

Dundee and Perth & Kinross ship with the package (``models/datasets/raw``, byte-exact copies
under the Open Government Licence v3.0, see ``raw/NOTICE.md``). Palo Alto is not
redistributable here: the user passes the path of the full file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from models.datasets.chargeplace import parse_chargeplace
from models.datasets.cleaning import CleaningReport, CleaningRules, clean
from models.datasets.errors import DatasetError
from models.datasets.locations import attach, load_locations
from models.datasets.paloalto import parse_paloalto
from models.datasets.record import to_session_frame

RAW_DIR = Path(__file__).resolve().parent / "raw"

DUNDEE_FILES = (
    "cpdata.csv.gz",
    "cp-data-dec-mar-2018.csv.gz",
    "cp-data-mar-may-2018.csv.gz",
    "charge-sessions-june-sept.csv.gz",
)
DUNDEE_LOCATIONS = ("cp-locations.csv.gz", "cp-locations_enriched.csv.gz")
PERTH_FILES = (
    "electricvehiclechargecorrected.csv.gz",
    "sept17toaug18standardisedcorrected.csv.gz",
    "sept18toaug19standardisedcorrected.csv.gz",
)
DATASETS = ("dundee", "perth", "paloalto")
TIMEZONES = {"dundee": "Europe/London", "perth": "Europe/London", "paloalto": "America/Los_Angeles"}


@dataclass(frozen=True)
class Dataset:
    name: str
    sessions: pd.DataFrame  # columns: models.datasets.record.SESSION_COLUMNS, sorted by start
    report: CleaningReport
    sources: tuple[Path, ...]
    location_sources: dict[str, int]

    @property
    def timezone(self) -> str:
        return TIMEZONES[self.name]


def _concat(parts: list[tuple[pd.DataFrame, int]]) -> tuple[pd.DataFrame, int]:
    return pd.concat([p for p, _ in parts], ignore_index=True), sum(n for _, n in parts)


def load_dataset(
    name: str, path: Path | None = None, rules: CleaningRules | None = None
) -> Dataset:
    """Load and clean one dataset. ``path``: a folder for dundee/perth, the CSV for paloalto."""
    rules = rules or CleaningRules()
    location_sources: dict[str, int] = {}
    if name == "dundee":
        folder = path or RAW_DIR / "dundee"
        sources = tuple(folder / f for f in DUNDEE_FILES)
        raw, dst = _concat([parse_chargeplace(p, "dd:") for p in sources])
        locations = load_locations(folder / DUNDEE_LOCATIONS[0], folder / DUNDEE_LOCATIONS[1])
        raw = attach(raw, locations)
        used = locations.table.loc[locations.table.index.isin(raw["station_id"].dropna())]
        location_sources = {str(k): int(v) for k, v in used["source"].value_counts().items()}
    elif name == "perth":
        folder = path or RAW_DIR / "perth_kinross"
        sources = tuple(folder / f for f in PERTH_FILES)
        raw, dst = _concat([parse_chargeplace(p, "pk:") for p in sources])
    elif name == "paloalto":
        if path is None:
            raise DatasetError(
                "paloalto: pass the path of the City of Palo Alto ChargePoint CSV (--path); "
                "it is not shipped with evfl"
            )
        sources = (path,)
        raw, dst = parse_paloalto(path)
    else:
        raise DatasetError(f"dataset {name!r} is unknown; choose one of {', '.join(DATASETS)}")
    kept, report = clean(raw, rules, name, dst)
    return Dataset(name, to_session_frame(kept), report, sources, location_sources)
