"""Solvers: objects with ``accumulate(X, y)`` … ``step()`` driven by the trainer.

Each solver module registers its class with
:func:`~skkfac.solvers.spec.register_solver`; importing it here is what makes it
available as ``solver=<name>`` in the estimators. ``SOLVERS`` is that registry.
"""

# Registration order is the order users see: kfac, sgd, adam.
# isort: off
from skkfac.solvers.kfac import KFAC
from skkfac.solvers.sgd import NesterovSGD
from skkfac.solvers.adam import Adam
# isort: on
from skkfac.solvers.base import Solver, TorchOptimizerSolver
from skkfac.solvers.spec import SOLVERS, Hyperparameter, StepReport, get_solver, register_solver

__all__ = ["KFAC", "SOLVERS", "Adam", "Hyperparameter", "NesterovSGD", "Solver",
           "StepReport", "TorchOptimizerSolver", "get_solver", "register_solver"]
