"""The region-merging kernel's scoring function, from a run's ``agglomerate.scoring``."""

from __future__ import annotations

from blockwise.config import ScoringConfig
from blockwise.kernels.region_merging import Scoring


def scoring_from_config(config: ScoringConfig) -> Scoring:
    """The kernel's scoring function described by ``config``."""
    return Scoring(
        kind=config.kind, quantile=config.quantile, k=config.k, init_with_max=config.init_with_max
    )
