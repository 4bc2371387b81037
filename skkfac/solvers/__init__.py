"""Solvers: objects with ``accumulate(X, y)`` … ``step()`` driven by the trainer."""

from skkfac.solvers.base import Solver
from skkfac.solvers.kfac import KFAC
from skkfac.solvers.sgd import NesterovSGD

SOLVERS = {"kfac": KFAC, "sgd": NesterovSGD}

__all__ = ["KFAC", "SOLVERS", "NesterovSGD", "Solver"]
