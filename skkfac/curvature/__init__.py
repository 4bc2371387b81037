"""Kronecker-factored curvature blocks: statistics, their running averages, inverses."""

from skkfac.curvature.block import KroneckerBlock
from skkfac.curvature.ekfac import EigenvalueCorrectedTikhonov, EKFACStatistics
from skkfac.curvature.inverses import DAMPING_SCHEMES as _KRONECKER_SCHEMES
from skkfac.curvature.inverses import (
    EigenTikhonov,
    FactoredTikhonov,
    MaxNormalised,
)
from skkfac.curvature.schedules import STAT_DECAY_SCHEDULES, stat_decay

#: Damping scheme name -> class built from ``(A, G, damping)`` at each inverse refresh.
DAMPING_SCHEMES = {**_KRONECKER_SCHEMES, "ekfac": EigenvalueCorrectedTikhonov}

__all__ = [
    "DAMPING_SCHEMES",
    "STAT_DECAY_SCHEDULES",
    "EKFACStatistics",
    "EigenTikhonov",
    "EigenvalueCorrectedTikhonov",
    "FactoredTikhonov",
    "KroneckerBlock",
    "MaxNormalised",
    "stat_decay",
]
