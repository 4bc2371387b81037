"""Records of search trials and comparison runs, shared by the benchmark modules.

A leaf module (it imports no other benchmark module), so that ``tune``, ``compare``,
``plotting``, ``report`` and ``dask_search`` can all use it without importing each
other in a cycle.
"""

from __future__ import annotations

import math

#: Columns that identify one comparison run (a solver's trial retrained with one seed).
RUN_KEY = ["solver", "trial", "seed_index"]


def cast_to_dimension(dimension, value):
    """A value as the Python type of its search dimension (CSV round trip, numpy
    scalars)."""
    from skopt.space import Integer

    if isinstance(dimension, Integer):
        return round(float(value))
    return float(value)


def make_optimizer(space: dict, *, n_initial_points: int, random_state: int):
    """The optimiser ``BayesSearchCV`` would build: GP surrogate, ``gp_hedge``."""
    from skopt import Optimizer

    return Optimizer(list(space.values()), base_estimator="GP",
                     n_initial_points=n_initial_points, acq_func="gp_hedge",
                     random_state=random_state)


def short_value(value) -> str:
    """A parameter value for a progress line (floats to 4 significant digits)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def is_diverged(trial_row) -> bool:
    """Whether a trial diverged or failed (its loss is not finite or training said so)."""
    reason = str(trial_row.get("stop_reason", ""))
    loss = float(trial_row.get("val_loss", math.nan))
    return not math.isfinite(loss) or "diverged" in reason or "failed" in reason


def run_curves(histories, solver: str, trial: int) -> list:
    """The learning curves (one per seed, in time order) of a solver's trial."""
    chosen = histories[(histories["solver"] == solver) & (histories["trial"] == trial)]
    return [group.sort_values("time") for _, group in chosen.groupby("seed_index")]
