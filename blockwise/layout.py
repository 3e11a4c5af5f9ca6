"""Every path a run writes, named once.

A run directory holds the resolved config, one zarr container with every
array the run writes, the lookup tables, daisy's done markers, failure
records, worker logs and the reports. Nothing else in the package spells
out these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RESOLVED_CONFIG = "config.yaml"
OUTPUT_ZARR = "output.zarr"
FRAGMENTS_DATASET = "fragments"
#: the group of output.zarr holding one OME-Zarr image (pyramid) per volume a run writes
MULTISCALE_GROUP = "multiscale"
AFFINITIES_DATASET = "affinities"
SEGMENTATION_GROUP = "segmentation"


def threshold_name(threshold: float) -> str:
    """The dataset/file name used for one segmentation threshold."""
    return f"threshold_{threshold:.4f}"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory.

    Attributes:
        run_dir: the run directory (absolute).
    """

    run_dir: Path

    @property
    def config_path(self) -> Path:
        """The resolved config the driver writes and every worker reads."""
        return self.run_dir / RESOLVED_CONFIG

    @property
    def output_zarr(self) -> Path:
        """The zarr container of every array the run writes."""
        return self.run_dir / OUTPUT_ZARR

    @staticmethod
    def segmentation_dataset(threshold: float) -> str:
        """The dataset (inside :attr:`output_zarr`) of one threshold's segmentation."""
        return f"{SEGMENTATION_GROUP}/{threshold_name(threshold)}"

    @property
    def lut_dir(self) -> Path:
        """Where find_segments puts its fragment -> segment tables."""
        return self.run_dir / "luts"

    def lut_path(self, threshold: float) -> Path:
        """The lookup table file of one threshold."""
        return self.lut_dir / f"{threshold_name(threshold)}.npz"

    @property
    def hierarchy_dir(self) -> Path:
        """The hierarchical agglomeration's files (``segments.method: hierarchical``)."""
        return self.run_dir / "hierarchy"

    def leaf_path(self, block: int) -> Path:
        """A leaf block's fragments with their levels, written by agglomerate."""
        return self.hierarchy_dir / "leaves" / f"block_{block}.npz"

    def basin_path(self, block: int) -> Path:
        """An extract_fragments block's flood of its read ROI, for the cut-basin search."""
        return self.run_dir / "basins" / f"block_{block}.npz"

    def seam_dir(self, level: int) -> Path:
        """The edges whose lowest common ancestor lies on ``level``, one file per owning block."""
        return self.hierarchy_dir / "edges" / f"level_{level}"

    def seam_path(self, level: int, block: int) -> Path:
        """The edges of one block whose lowest common ancestor lies on ``level``."""
        return self.seam_dir(level) / f"block_{block}.npz"

    def task_path(self, level: int, node: int) -> Path:
        """The result (merge records, residual graph) of one octree task."""
        return self.hierarchy_dir / "tasks" / f"level_{level}" / f"node_{node}.npz"

    def tracking_dir(self, stage: str) -> Path:
        """daisy's done markers of one stage (what produced them: :attr:`run_state`)."""
        return self.run_dir / "tracking" / stage

    @property
    def run_state(self) -> Path:
        """Per stage, the hash and ingredients of what produced its finished blocks."""
        return self.run_dir / "run_state.json"

    @property
    def lock_path(self) -> Path:
        """The driver lock: one driver per run directory."""
        return self.run_dir / "driver.lock"

    @property
    def failures_dir(self) -> Path:
        """One JSON record per failed block."""
        return self.run_dir / "failures"

    @property
    def logs_dir(self) -> Path:
        """Per-worker logs."""
        return self.run_dir / "logs"

    @property
    def evaluation_json(self) -> Path:
        """The evaluation report."""
        return self.run_dir / "evaluation.json"

    @property
    def evaluation_png(self) -> Path:
        """The evaluation plot."""
        return self.run_dir / "evaluation.png"

    @property
    def default_store_uri(self) -> str:
        """The embedded graph store used when the config names none."""
        return f"sqlite:///{self.run_dir / 'graph.sqlite'}"
