"""One declaration per solver hyperparameter, the registry of solvers, and step reports.

Every solver class declares its hyperparameters once, as :class:`Hyperparameter`
entries in its ``hyperparameters`` class attribute, and registers itself with
:func:`register_solver`. The estimators' parameter constraints, the construction of a
solver from an estimator's parameters, the parameter documentation and the tests of the
estimators' signatures all read these declarations; adding a solver means writing one
module and registering it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Hyperparameter:
    """A solver's keyword argument, declared once.

    Parameters
    ----------
    name : str
        The keyword of the solver's constructor.
    default : object
        Its default value (the estimators use the same default).
    constraints : list
        scikit-learn ``_param_validation`` constraints (``Interval``, ``StrOptions``,
        ``"boolean"``, ``None``...).
    doc : str
        One sentence for the parameter documentation.
    estimator_name : str or None
        The estimators' name for it when it differs (scikit-learn's MLP names:
        ``lr`` is ``learning_rate_init``, ``nesterov`` is ``nesterovs_momentum``).
    """

    name: str
    default: Any
    constraints: list
    doc: str
    estimator_name: str | None = None

    @property
    def parameter(self) -> str:
        """The name the estimators give this hyperparameter."""
        return self.estimator_name or self.name


#: Registered solvers, by the name the estimators' ``solver`` parameter takes.
SOLVERS: dict[str, type] = {}


def register_solver(name: str):
    """Class decorator: make a solver available as ``solver=name`` in the estimators."""

    def decorator(cls):
        if name in SOLVERS and SOLVERS[name] is not cls:
            raise ValueError(f"A solver named {name!r} is already registered.")
        cls.name = name
        SOLVERS[name] = cls
        return cls

    return decorator


def get_solver(name: str) -> type:
    """The solver class registered as ``name``."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"Unknown solver {name!r}; expected one of {sorted(SOLVERS)}.") from None


@dataclass
class StepReport:
    """What one call of a solver's ``step()`` did.

    Values may be 0-d tensors on the solver's device, so that a step needs no host
    round trip; :meth:`fetch` reads them all in one transfer when the trainer records
    them. ``None`` means "not measured by this solver (or not this step)".

    Attributes
    ----------
    accepted : bool or Tensor
        False when the solver undid the update (the trainer counts it).
    loss_before, loss_after : float, Tensor or None
        The loss on the examples the solver checked the update on, before and after it.
    rho : float, Tensor or None
        Reduction ratio: actual loss change over the change predicted by the solver's
        quadratic model (Levenberg–Marquardt).
    damping : float, Tensor or None
        The (relative) damping in force after the step.
    step_size, momentum : float, Tensor or None
        Coefficients of the step: ``step_size`` times the new direction plus
        ``momentum`` times the previous step.
    """

    accepted: bool | torch.Tensor = True
    loss_before: float | torch.Tensor | None = None
    loss_after: float | torch.Tensor | None = None
    rho: float | torch.Tensor | None = None
    damping: float | torch.Tensor | None = None
    step_size: float | torch.Tensor | None = None
    momentum: float | torch.Tensor | None = None

    FIELDS = ("accepted", "loss_before", "loss_after", "rho", "damping", "step_size",
              "momentum")

    def fetch(self) -> dict[str, Any]:
        """All fields as Python values (bool / float / None), with one device transfer."""
        values = {name: getattr(self, name) for name in self.FIELDS}
        tensors = {name: v for name, v in values.items() if isinstance(v, torch.Tensor)}
        if tensors:
            stacked = torch.stack([v.detach().reshape(()).to(torch.float64)
                                   for v in tensors.values()]).cpu().tolist()
            values.update(zip(tensors, stacked))
        values["accepted"] = bool(values["accepted"])
        for name in self.FIELDS[1:]:
            if values[name] is not None:
                values[name] = float(values[name])
        return values
