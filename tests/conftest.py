"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from datafiles import data_dir


@pytest.fixture(autouse=True)
def _data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configs in configs/ refer to ${BLOCKWISE_DATA}; make it point at the data."""
    monkeypatch.setenv("BLOCKWISE_DATA", str(data_dir()))


@pytest.fixture(scope="session")
def gala(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The gala crop with synthetic affinities (made once; copy it before changing it)."""
    from gala import synthesize

    return synthesize(tmp_path_factory.mktemp("gala") / "gala_synth.zarr")
