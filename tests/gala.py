"""The gala crop as the pipeline tests run it: configs/gala_ci.yaml on synthetic affinities.

The affinities (a test input derived from the labels, never a prediction) are
made once per session by the ``gala`` fixture in ``tests/conftest.py``; tests
that change an input copy it first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
import zarr

from datafiles import REPO, require_data


def synthesize(out: Path) -> Path:
    """Write the gala crop's synthetic affinities (and its labels) to the zarr ``out``."""
    from blockwise.synthetic import synthesize_affinities_file

    synthesize_affinities_file(require_data("gala_fib_train.h5"), "labels", out, seed=0)
    return out


def gala_data(gala: Path, run_dir: Path, **sections: Any) -> dict[str, Any]:
    """configs/gala_ci.yaml reading ``gala`` and writing ``run_dir``.

    Each keyword is a config section whose keys are set over the file's
    (``segments={"method": "global"}`` keeps the section's other keys).
    """
    data: dict[str, Any] = yaml.safe_load((REPO / "configs" / "gala_ci.yaml").read_text())
    data["run_dir"] = str(run_dir)
    data["inputs"]["affinities"]["file"] = str(gala)
    data["inputs"]["ground_truth"]["file"] = str(gala)
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return data


def nan_affinities(path: Path) -> Path:
    """A float zarr of affinities (3, 32, 32, 64), 8 nm, holding NaN in block 1 of 32^3 blocks."""
    affs = np.random.default_rng(0).random((3, 32, 32, 64)).astype(np.float32)
    affs[:, 3, 3, 40] = np.nan  # in block 1 of 2
    root = zarr.open_group(str(path), mode="w")
    root.create_dataset("affs", data=affs, chunks=(3, 16, 16, 16)).attrs["resolution"] = [8, 8, 8]
    return path


def write_config(data: dict[str, Any], path: Path) -> Path:
    """Write a config dict as YAML; returns ``path``."""
    path.write_text(yaml.safe_dump(data))
    return path


def outputs(run_dir: Path) -> dict[str, np.ndarray]:
    """The fragments and every segmentation a run wrote."""
    root = zarr.open_group(str(run_dir / "output.zarr"), mode="r")
    arrays = {"fragments": root["fragments"][:]}
    for name in root["segmentation"]:
        arrays[name] = root["segmentation"][name][:]
    return arrays


def assert_same_outputs(a: Path, b: Path) -> None:
    """The fragments and segmentations of two runs are equal, dtype and bytes."""
    left, right = outputs(a), outputs(b)
    assert left.keys() == right.keys()
    for name in left:
        assert left[name].dtype == right[name].dtype, name
        assert np.array_equal(left[name], right[name]), name
