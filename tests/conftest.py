"""Shared fixtures: the real datasets, loaded once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DATA = Path(__file__).parent / "data"
PALO_ALTO_EXCERPT = DATA / "palo-alto-2011-excerpt.csv"


@pytest.fixture(scope="session")
def dundee():
    from models.datasets.catalog import load_dataset

    return load_dataset("dundee")


@pytest.fixture(scope="session")
def perth():
    from models.datasets.catalog import load_dataset

    return load_dataset("perth")
