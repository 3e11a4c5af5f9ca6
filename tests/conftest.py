"""Shared fixtures."""

from __future__ import annotations

import pytest

from datafiles import data_dir


@pytest.fixture(autouse=True)
def _data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configs in configs/ refer to ${BLOCKWISE_DATA}; make it point at the data."""
    monkeypatch.setenv("BLOCKWISE_DATA", str(data_dir()))
