"""Kronecker-factored curvature blocks: statistics, their running averages, inverses."""

from skkfac.curvature.block import KroneckerBlock
from skkfac.curvature.inverses import (
    DAMPING_SCHEMES,
    EigenTikhonov,
    FactoredTikhonov,
    MaxNormalised,
)
from skkfac.curvature.schedules import STAT_DECAY_SCHEDULES, stat_decay

__all__ = [
    "DAMPING_SCHEMES",
    "STAT_DECAY_SCHEDULES",
    "EigenTikhonov",
    "FactoredTikhonov",
    "KroneckerBlock",
    "MaxNormalised",
    "stat_decay",
]
