"""Which solvers the suite compares, their labels and colours, all from the registry.

The solver list is :data:`skkfac.solvers.SOLVERS` (every solver registered with
``register_solver``), so a newly registered solver appears in every ``tune`` /
``compare`` table and figure without a change here; only its label and colour may be
given below (a solver without one gets its registry name and a grey-green colour).
This module imports no scikit-optimize, so the GPU check can use it.
"""

from __future__ import annotations

#: Readable names of the known solvers (others show their registry name).
LABELS = {"kfac": "K-FAC", "sgd": "SGD-Nesterov", "adam": "Adam",
          "kfac_study": "K-FAC, the study's rule and table"}
#: Matplotlib colour maps of the known solvers: one hue per solver, shades per config.
COLORMAPS = {"kfac": "Reds", "sgd": "Blues", "adam": "Greens", "kfac_study": "Purples"}
#: Solvers that use curvature; every other registered solver counts as first-order
#: (time to target is measured against the best first-order solver, as in AlgoPerf).
CURVATURE_SOLVERS = ("kfac", "ekfac", "kfac_study")


def registered_solvers() -> tuple[str, ...]:
    """Every registered solver, K-FAC first, the others in registration order."""
    from skkfac.solvers import SOLVERS

    names = list(SOLVERS)
    return tuple(sorted(names, key=lambda name: (name != "kfac", names.index(name))))


def label(solver: str) -> str:
    """The solver's name in tables and figures."""
    return LABELS.get(solver, solver)


def is_first_order(solver: str) -> bool:
    return solver not in CURVATURE_SOLVERS


def colormap(solver: str) -> str:
    return COLORMAPS.get(solver, "Greys" if solver in CURVATURE_SOLVERS else "YlOrBr")
