"""Shared fixtures. Data beside the repository (../shared) is read-only input."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOUSE_FACELIFT_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def mammal_dir() -> Path:
    d = Path(os.environ.get("MAMMAL_MOUSE_DIR", SHARED / "mammal_mouse"))
    assert (d / "vertices.txt").exists(), f"MAMMAL mouse text files not found in {d}"
    return d


@pytest.fixture(scope="session")
def dannce_dir() -> Path:
    d = SHARED / "dannce"
    assert d.exists(), f"DANNCE calibration data not found in {d}"
    return d
