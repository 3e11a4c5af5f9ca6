"""Where the shared real EM data lives, for tests (imported as a plain module)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The shared real-data folder (BLOCKWISE_DATA, default ../shared/data)."""
    return Path(os.environ.get("BLOCKWISE_DATA", REPO.parent / "shared" / "data")).resolve()


def require_data(name: str) -> Path:
    """Path of a shared data file; skip when missing, but fail under CI=true."""
    path = data_dir() / name
    if not path.exists():
        message = f"data file {path} is missing (set BLOCKWISE_DATA)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
