"""Shared fixtures: paths to the bundled demo data and to ../shared/data when it is present."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEMO = ROOT / "data" / "demo" / "traffic.jsonl"


@pytest.fixture
def shared_data() -> Path:
    """The real public routing data beside the checkout; tests using it skip, saying so, if absent."""
    if not SHARED.is_dir():
        pytest.skip(f"real routing data not found at {SHARED}")
    return SHARED
