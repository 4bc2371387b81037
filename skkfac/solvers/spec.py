"""One declaration per solver hyperparameter, the registry of solvers, and step reports.

Every solver class declares its hyperparameters once, as :class:`Hyperparameter`
entries in its ``hyperparameters`` class attribute, and registers itself with
:func:`register_solver`. The estimators' parameter constraints, the construction of a
solver from an estimator's parameters, the parameter documentation and the tests of the
estimators' signatures all read these declarations; adding a solver means writing one
module and registering it.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

import torch
from sklearn.utils._param_validation import Interval, StrOptions, make_constraint

#: Marker replaced by the parameter entries in a generated docstring.
PARAMETERS_MARKER = "    <parameters>\n"


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
    solver_doc : str or None
        The solver's own, longer description of it, for a solver docstring written by
        :func:`document_parameters` (``None``: ``doc``).
    """

    name: str
    default: Any
    constraints: list
    doc: str
    estimator_name: str | None = None
    solver_doc: str | None = None

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


class RegisteredSolver(StrOptions):
    """scikit-learn parameter constraint: the name of a solver registered *now*.

    Read at validation time, so that a solver registered after the estimators were
    imported is accepted as ``solver=<name>``.
    """

    def __init__(self):
        super().__init__(set(SOLVERS))

    def is_satisfied_by(self, val):
        return isinstance(val, str) and val in SOLVERS

    def __str__(self):
        return "the name of a registered solver (" + ", ".join(map(repr, SOLVERS)) + ")"


@dataclass
class EstimatorParameter:
    """An estimator parameter that one or several solvers declare.

    Attributes
    ----------
    name : str
        The estimators' name (:attr:`Hyperparameter.parameter`).
    default : object
        The common default of the declarations, or ``None`` when the solvers' defaults
        differ: ``None`` then means "the chosen solver's own default".
    constraints : list
        The declarations' constraints (shared by every solver that declares the
        parameter), plus ``None`` when the default is per solver.
    declarations : dict of str to Hyperparameter
        The declaration of each solver that takes the parameter, by solver name.
    """

    name: str
    default: Any
    constraints: list
    declarations: dict = field(default_factory=dict)

    @property
    def per_solver_default(self) -> bool:
        """Whether ``None`` stands for each solver's own default."""
        defaults = [h.default for h in self.declarations.values()]
        return any(d != defaults[0] for d in defaults)


def _constraint_key(constraint) -> tuple:
    """A comparable description of a scikit-learn constraint (StrOptions are sets)."""
    constraint = make_constraint(constraint)
    if isinstance(constraint, StrOptions):
        return ("options", tuple(sorted(constraint.options)))
    if isinstance(constraint, Interval):
        return ("interval", constraint.type.__name__, constraint.left, constraint.right,
                constraint.closed)
    return (type(constraint).__name__, str(constraint))


def estimator_parameters(solvers: Mapping[str, type] | None = None,
                         ) -> dict[str, EstimatorParameter]:
    """The estimator parameters declared by ``solvers`` (default: every registered one).

    A parameter declared by several solvers must carry the same constraints everywhere;
    when their defaults differ (the learning rate), the estimators' default is ``None``,
    which :func:`solver_arguments` turns into the chosen solver's default.

    Returns
    -------
    parameters : dict of str to EstimatorParameter
        In order of first declaration (solvers in registration order).
    """
    solvers = SOLVERS if solvers is None else solvers
    parameters: dict[str, EstimatorParameter] = {}
    for solver_name, cls in solvers.items():
        for hyper in cls.hyperparameters:
            entry = parameters.setdefault(
                hyper.parameter,
                EstimatorParameter(hyper.parameter, hyper.default, list(hyper.constraints)))
            keys = [_constraint_key(c) for c in hyper.constraints]
            if keys != [_constraint_key(c) for c in entry.constraints]:
                raise ValueError(f"Solvers declare {hyper.parameter!r} with different "
                                 f"constraints ({solver_name!r} differs).")
            entry.declarations[solver_name] = hyper
    for entry in parameters.values():
        if entry.per_solver_default:
            entry.default = None
            if None not in entry.constraints:
                entry.constraints = [None, *entry.constraints]
    return parameters


def solver_arguments(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of solver ``cls`` taken from an estimator's parameter values.

    Each of ``cls.hyperparameters`` is read under its estimator name
    (:attr:`Hyperparameter.parameter`); a ``None`` that the declaration does not allow
    means "this solver's default" (``learning_rate_init=None``).
    """
    arguments = {}
    for hyper in cls.hyperparameters:
        value = values[hyper.parameter]
        if value is None and None not in hyper.constraints:
            value = hyper.default
        arguments[hyper.name] = value
    return arguments


def constraint_type(constraints) -> str:
    """The numpydoc type of a parameter from its scikit-learn constraints."""
    names = []
    for constraint in constraints:
        if constraint is None:
            continue  # written last, as numpydoc does
        constraint = make_constraint(constraint)
        if isinstance(constraint, StrOptions):
            names.append("{" + ", ".join(repr(o) for o in sorted(constraint.options)) + "}")
        elif isinstance(constraint, Interval):
            names.append("int" if constraint.type is Integral else
                         "float" if constraint.type is Real else constraint.type.__name__)
        elif type(constraint).__name__ == "_Booleans":  # the "boolean" constraint
            names.append("bool")
        else:
            names.append(str(constraint))
    if None in constraints:
        names.append("None")
    return " or ".join(names)


def numpydoc_entry(name: str, type_line: str, text: str) -> str:
    """One entry of a numpydoc ``Parameters`` section of a class docstring."""
    body = textwrap.fill(text, width=84, initial_indent=" " * 8, subsequent_indent=" " * 8,
                         break_on_hyphens=False)
    return f"    {name} : {type_line}\n{body}\n"


def document_parameters(others: Mapping[str, tuple[str, str]]):
    """Class decorator: write a solver's parameter entries at its docstring's
    :data:`PARAMETERS_MARKER`, in the order of its constructor's signature.

    A declared hyperparameter is described by its declaration (``solver_doc``, else
    ``doc``; the type from its constraints), any other parameter by
    ``others[name]``, a ``(type line, description)`` pair.
    """

    def decorator(cls):
        declared = {h.name: h for h in (*cls.hyperparameters, *cls.internal_hyperparameters)}
        entries = []
        for name in list(inspect.signature(cls.__init__).parameters)[1:]:
            if name in declared:
                hyper = declared[name]
                type_line = f"{constraint_type(hyper.constraints)}, default={hyper.default!r}"
                entries.append(numpydoc_entry(name, type_line, hyper.solver_doc or hyper.doc))
            else:
                entries.append(numpydoc_entry(name, *others[name]))
        if cls.__doc__ is not None:  # python -OO drops docstrings
            cls.__doc__ = cls.__doc__.replace(PARAMETERS_MARKER, "".join(entries))
        return cls

    return decorator


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

    def fetch(self, *extra: torch.Tensor) -> dict[str, Any]:
        """All fields as Python values (bool / float / None), with one device transfer.

        ``extra`` 0-d tensors (on the same device) are read in the same transfer and
        returned as a tuple of floats under the key ``'extra'``: the trainer reads a
        batch's loss together with the previous step's report.
        """
        values = {name: getattr(self, name) for name in self.FIELDS}
        tensors = {name: v for name, v in values.items() if isinstance(v, torch.Tensor)}
        tensors.update((("extra", i), t) for i, t in enumerate(extra))
        if tensors:
            stacked = torch.stack([v.detach().reshape(()).to(torch.float64)
                                   for v in tensors.values()]).cpu().tolist()
            values.update(zip(tensors, stacked))
        if extra:
            values["extra"] = tuple(values.pop(("extra", i)) for i in range(len(extra)))
        values["accepted"] = bool(values["accepted"])
        for name in self.FIELDS[1:]:
            if values[name] is not None:
                values[name] = float(values[name])
        return values
