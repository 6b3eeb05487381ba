"""Read a raw CSV as text and check its columns, with one-line errors naming the file."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from models.datasets.errors import DatasetError


def read_raw_csv(path: Path, required: Iterable[str]) -> pd.DataFrame:
    """All cells as strings (blanks stay ''), header names stripped; checks required columns."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding_errors="replace")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, UnicodeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetError(f"{path}: cannot be read as CSV ({first_line})") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"found {', '.join(repr(c) for c in frame.columns[:12])}"
        )
    return frame


def parse_number(text: pd.Series) -> pd.Series:
    """Numbers as written by spreadsheets: blanks are NA and thousands separators are removed."""
    return pd.to_numeric(text.str.replace(",", "", regex=False).str.strip(), errors="coerce")


def blank_to_na(text: pd.Series) -> pd.Series:
    stripped = text.str.strip()
    return stripped.mask(stripped == "").astype("string")
