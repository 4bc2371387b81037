"""Budgets of every experiment, with defaults per problem sized for a 2-core CPU.

The study trained every candidate for 10 s on a GPU (5 s for regression) and ran about
150 Bayesian-optimisation trials per solver and problem. On a 2-core CPU one update of
the MNIST autoencoder costs 10-100x more, so the study's budgets leave the solvers far
from where they stop improving. :data:`PROBLEM_BUDGETS` therefore sets, per problem, a
comparison budget long enough for the best first-order run to flatten (the *budget
rule* that ``compare`` checks and the report shows: its held-out loss changes by less
than 2 % over the last quarter of the budget) and shorter search trials (the report
says so): MNIST autoencoder 60 s trials / 120 s comparison, regression 30 s / 60 s,
CIFAR-10 90 s / 240 s. :func:`problem_budget` gives a problem's budget; everything can
be changed on the command line (see ``python -m benchmarks <sub-command> --help``).

``QUICK`` is what ``python -m benchmarks quick`` uses on the small ``digits`` problem
(every experiment end to end in well under 3 minutes on 2 cores); ``--quick`` on any
other sub-command uses it too.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Budget:
    """Every size and time limit of the suite (seconds are *training* seconds).

    Attributes
    ----------
    tune_max_time : float
        ``max_time`` of every search trial (the study: 10 s; regression 5 s).
    n_trials : int
        Search trials per solver (the study: about 150).
    n_initial_points : int
        Random trials before the Gaussian process proposes (the study: 20).
    repeats : int
        Trainings per trial, averaged (the study: 2; regression 4).
    compare_max_time : float or None
        ``max_time`` of the ``compare`` runs; None: ``tune_max_time``.
    top_k : int
        Configurations per solver retrained by ``compare`` (the study: 4).
    seeds : int
        Seeds per retrained configuration in ``compare`` (medians and spreads over them).
    train_eval_rows : int or None
        Training rows evaluated at every ``compare`` evaluation for the training-loss
        curve (None: all of them); the final training loss always uses all of them.
    eval_points : int
        Test-set evaluations per ``compare`` run (``eval_interval = max_time /
        eval_points``); the evaluation time is excluded from the training clock.
    bs_max_time : float
        Time budget of the batch-size experiments (the study: 10 s).
    bs_updates : int
        Update budget of the batch-size experiments (the study: 50).
    bs_configs : int
        How many of the best K-FAC configurations the batch-size experiments use.
    bs_batch_sizes : tuple of int
        Batch sizes of Figure 2 and of Figure 3 right (capped to the data).
    bs_lr_factors : tuple of float
        Figure 3 left: multiples of the best configuration's learning rate.
    bs_lr_batch_sizes : tuple of int
        Figure 3 left: batch sizes.
    bs_real_batch : int
        Figure 4: the real (micro-)batch size (the study: 25).
    bs_artificial_sizes : tuple of int
        Figure 4: artificial batch sizes (samples per update).
    bs_artificial_updates : int
        Figure 4: update budget (smaller than ``bs_updates``: an artificial batch of
        several thousand samples made of batches of 25 is slow on a CPU).
    time_budget_max_time : float
        ``max_time`` checked by ``time-budget``.
    time_budget_runs : int
        Runs of the ``time-budget`` check.
    """

    tune_max_time: float = 20.0
    n_trials: int = 16
    n_initial_points: int = 6
    repeats: int = 1
    compare_max_time: float | None = None
    top_k: int = 2
    seeds: int = 3
    train_eval_rows: int | None = None
    eval_points: int = 20
    bs_max_time: float = 10.0
    bs_updates: int = 50
    bs_configs: int = 4
    bs_batch_sizes: tuple = (250, 500, 1000, 2500, 5000, 10000)
    bs_lr_factors: tuple = (0.25, 0.5, 1.0, 2.0)
    bs_lr_batch_sizes: tuple = (25, 50, 100, 250, 1000, 5000)
    bs_real_batch: int = 25
    bs_artificial_sizes: tuple = (25, 100, 250, 1000, 2500)
    bs_artificial_updates: int = 20
    time_budget_max_time: float = 2.0
    time_budget_runs: int = 5

    @property
    def compare_time(self) -> float:
        return self.tune_max_time if self.compare_max_time is None else self.compare_max_time

    def override(self, **changes) -> Budget:
        """A copy with the given fields changed (``None`` values are ignored)."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"unknown budget fields: {sorted(unknown)}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


#: The defaults of a problem without its own entry in :data:`PROBLEM_BUDGETS`.
DEFAULT = Budget()

#: Per-problem defaults (2-core CPU): search trials shorter than the comparison runs.
PROBLEM_BUDGETS = {
    "mnist_ae": DEFAULT.override(
        tune_max_time=60.0, compare_max_time=120.0, n_trials=24, n_initial_points=8,
        eval_points=16, bs_max_time=20.0, bs_updates=50, bs_configs=2,
        bs_batch_sizes=(25, 100, 250, 1000, 2500, 10000),
        bs_lr_factors=(0.25, 0.5, 1.0, 2.0), bs_lr_batch_sizes=(25, 100, 250, 1000, 5000),
        bs_real_batch=25, bs_artificial_sizes=(25, 100, 250, 1000, 2500),
        bs_artificial_updates=20),
    "regression": DEFAULT.override(tune_max_time=30.0, compare_max_time=60.0, n_trials=24,
                                   n_initial_points=8, eval_points=24),
    "protein": DEFAULT.override(tune_max_time=30.0, compare_max_time=60.0, n_trials=24,
                                n_initial_points=8, eval_points=24),
    "cifar10": DEFAULT.override(tune_max_time=90.0, compare_max_time=240.0, n_trials=12,
                                n_initial_points=5, top_k=1, eval_points=10,
                                train_eval_rows=5000),
}


def problem_budget(problem_name: str | None) -> Budget:
    """The default budget of a problem (:data:`DEFAULT` for one without an entry)."""
    return PROBLEM_BUDGETS.get(problem_name, DEFAULT)

#: ``python -m benchmarks quick`` on digits: every experiment in about a minute.
QUICK = Budget(
    tune_max_time=0.4, n_trials=8, n_initial_points=4, repeats=1, compare_max_time=1.0,
    top_k=2, seeds=2, eval_points=10, bs_max_time=0.3, bs_updates=30, bs_configs=2,
    bs_batch_sizes=(32, 64, 128, 256, 512, 1024), bs_lr_factors=(0.25, 1.0, 4.0),
    bs_lr_batch_sizes=(16, 64, 256, 1024), bs_real_batch=16,
    bs_artificial_sizes=(16, 64, 256), bs_artificial_updates=10,
    time_budget_max_time=2.0, time_budget_runs=3)

#: Even smaller, for the test suite's smoke test.
TINY = Budget(
    tune_max_time=0.1, n_trials=3, n_initial_points=2, repeats=1, compare_max_time=0.2,
    top_k=1, seeds=2, eval_points=4, bs_max_time=0.1, bs_updates=4, bs_configs=1,
    bs_batch_sizes=(64, 512), bs_lr_factors=(0.5, 1.0), bs_lr_batch_sizes=(32, 256),
    bs_real_batch=16, bs_artificial_sizes=(16, 64), bs_artificial_updates=3,
    time_budget_max_time=0.3, time_budget_runs=2)
