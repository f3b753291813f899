"""Fixtures of the unit tier."""

from pathlib import Path

import pytest

from barge.storage import LocalStore


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    """A bucket store in a temporary directory."""
    return LocalStore(tmp_path / "store")
