"""Shared test helpers.

The conformance fixtures and OwlEval data live in a ``shared`` folder beside the clone (not in
the project). Tests that need them skip with a clear reason where that folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The default model of the tests (and of the commands they run) is the small, fast owl-tiny;
# the tests of owl-small name it.
os.environ.setdefault("OWLKIT_MODEL", "owl-tiny")
SHARED = Path(os.environ.get("OWLKIT_SHARED", REPO.parent / "shared"))


def _shared(sub: str) -> Path:
    path = SHARED / sub
    if not path.exists():
        pytest.skip(f"{path} not found: conformance data lives in a 'shared' folder beside the clone")
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return _shared("fixtures")


@pytest.fixture(scope="session")
def owleval_dir() -> Path:
    return _shared("data/owleval")


def fixture_folders() -> list[Path]:
    """Every conformance fixture folder (owl1_* and owl2_*), whatever its sizes."""
    root = SHARED / "fixtures"
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if (p / "model" / "config.json").exists())
