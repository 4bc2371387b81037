"""``defaults``: every solver at its defaults, the way a new user would try it.

``python -m benchmarks defaults [--cells ...] [--methods ...] [--seeds 3] [--splits 9]
[--threads 2]`` runs *cells* (one problem each); each cell runs every method with
``--seeds`` seeds (big cells) or ``--splits`` train/test splits, each with its own seed
(tabular cells):

* **big** cells, the study's problems (:mod:`benchmarks.problems`): ``mnist_ae`` for
  60 s, ``cifar10`` for 120 s, ``protein`` for 30 s and ``keggundirected`` (the
  ``regression`` problem on UCI keggundirected) for 30 s. Every registered skkfac solver
  with nothing set but the problem's architecture, ``max_time`` = the budget, stopping by
  time only (:data:`~benchmarks.problems.BENCH_ESTIMATOR_DEFAULTS`), ``random_state`` =
  seed and ``n_threads`` = ``--threads``; trained on all training rows, scored on the
  test set (MSE, lower is better; CIFAR-10: accuracy, with the cross-entropy as
  ``eval_loss``). The held-out loss is recorded every budget/12 training seconds
  (``history.csv``); ``max_eval_jump`` is the largest relative rise of the held-out loss
  between consecutive evaluations made after the first 20 training seconds (0 when it
  never rose, inf when it became non-finite).
* beside them, on the big cells, **the study's K-FAC** (method ``kfac_study``): its
  update rule and its table's hyperparameters (:mod:`skkfac.study`; protein and
  keggundirected get the CT-slice table, tuned on other data);
* **tabular** cells (:mod:`benchmarks.tabular`): small sets fitted as a user would, no
  time limit, against scikit-learn's MLP and histogram gradient boosting. They get more
  splits than the big cells get seeds because they are cheap and need them: a test split
  of 450 digits resolves accuracy only to 0.22 %, and over 30 splits K-FAC and Adam had
  the same median on digits (97.6 %) while the first three made K-FAC "behind"
  (``benchmarks/results/defaults_30splits/``).

The verdict of a cell compares K-FAC (``solver='kfac'``) with the best first-order skkfac
solver (best median score): **ahead** when K-FAC's median is better and its worst seed
is better than the other's median, **behind** in the reverse case, else **level**. On
tabular cells two bars are checked too: K-FAC's median test score within 0.01 of the
better median of skkfac-Adam and scikit-learn's MLP, and K-FAC's median fit time at most
3x the MLP's.

Outputs in ``--out`` (default ``benchmarks/results/defaults``): ``runs.csv`` (one row per
cell, method and seed: score, ``eval_loss``, ``fit_seconds`` (the whole ``fit`` call,
evaluations included), ``train_seconds`` (skkfac's training clock), ``updates``
(``n_updates_``, scikit-learn's ``n_iter_``), ``stop_reason``, ``max_eval_jump``, the
number of ConvergenceWarnings, which are not shown), ``history.csv`` (the big cells'
learning curves), ``table.md`` (with the command, CPU, threads, load average, commit and
date), ``verdict.json`` and ``scores.png``; a summary is printed at the end. Each
finished run is appended at once: running the command again skips the runs already in
``runs.csv``. A cell whose data files are missing is skipped with a note. ``--quick``
(smoke runs): 2 s budgets, learning curves on 1,000 test rows, only the bundled tabular
sets, one seed. The full run takes about 80 minutes on 2 idle cores (the estimate is
printed at the start).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.defaults_report import machine_header, write_results
from benchmarks.records import CsvLog, check_settings, log
from benchmarks.solvers import registered_solvers
from benchmarks.tabular import (
    BUNDLED_ROWS,
    BUNDLED_SETS,
    UCI_SETS,
    classification_scores,
    estimate_seconds,
    fit_tabular,
    load_tabular,
    method_label,
    tabular_methods,
    timed_fit,
)
from skkfac.study import STUDY_KFAC

RUN_COLUMNS = ["cell", "kind", "method", "seed", "score", "score_name", "higher_is_better",
               "eval_loss", "fit_seconds", "updates", "stop_reason", "max_eval_jump",
               "train_seconds", "convergence_warnings", "budget", "n_train", "n_test",
               "load_avg"]
HISTORY_COLUMNS = ["cell", "method", "seed", "time", "update", "eval_loss", "eval_score"]
#: Train/test splits per tabular cell (``--splits``); the big cells get ``--seeds`` (3).
TABULAR_SPLITS = 9
#: Held-out evaluations per big run (every budget/EVAL_POINTS training seconds).
EVAL_POINTS = 12
#: max_eval_jump looks at the evaluations made after this many training seconds.
JUMP_AFTER = 20.0
QUICK_BUDGET = 2.0
#: --quick evaluates the learning curves on this many test rows (a fixed sample; the
#: final score always uses the whole test set): evaluating CIFAR-10's 10,000 test images
#: 13 times would take ten times the 2 s budget.
QUICK_EVAL_ROWS = 1000
GROUPS = ("big", "tabular")
#: The study's K-FAC (:func:`skkfac.study.study_parameters`: its update rule and its
#: table's hyperparameters) beside the solvers at their defaults, on the big cells whose
#: problem the study tuned (protein and keggundirected get the CT-slice table).
STUDY_METHOD = "kfac_study"


@dataclass(frozen=True)
class Cell:
    """One problem of the benchmark.

    ``group`` is 'big' (a :mod:`benchmarks.problems` problem, trained for ``budget``
    seconds) or 'tabular' (a :mod:`benchmarks.tabular` set, no time limit). Only for
    the estimate of the running time: ``rows``, the data size, and ``eval_seconds``, one
    evaluation of the whole test set (big cells; 2 idle cores).
    """

    name: str
    group: str
    kind: str
    budget: float | None = None
    problem: str | None = None
    regression_data: str = "auto"
    rows: int = 1000
    eval_seconds: float = 0.0

    @property
    def bundled(self) -> bool:
        return self.name in BUNDLED_SETS

    def methods(self) -> tuple[str, ...]:
        if self.group != "big":
            return tabular_methods()
        from benchmarks.problems import get_problem

        study = (STUDY_METHOD,) if get_problem(self.problem).study else ()
        return (*registered_solvers(), *study)


BIG_CELLS = (Cell("mnist_ae", "big", "autoencoder", 60.0, "mnist_ae", eval_seconds=0.5),
             Cell("cifar10", "big", "classification", 120.0, "cifar10", eval_seconds=2.5),
             Cell("protein", "big", "regression", 30.0, "protein", eval_seconds=0.05),
             Cell("keggundirected", "big", "regression", 30.0, "regression",
                  "keggundirected", eval_seconds=0.05))
TABULAR_CELLS = (*(Cell(name, "tabular", kind, rows=BUNDLED_ROWS[name])
                   for name, (kind, _) in BUNDLED_SETS.items()),
                 *(Cell(name, "tabular", "regression", rows=rows)
                   for name, rows in UCI_SETS.items()))
CELLS = {cell.name: cell for cell in (*BIG_CELLS, *TABULAR_CELLS)}


def all_methods() -> tuple[str, ...]:
    return (*tabular_methods(), STUDY_METHOD)


def select_cells(names=None, *, quick: bool = False, budget: float | None = None
                 ) -> list[Cell]:
    """The cells to run: ``names`` (cell names or the groups 'big' and 'tabular'; default
    both groups). ``quick``: big budgets of 2 s and, in the groups, only the bundled
    tabular sets. ``budget`` overrides every big cell's budget."""
    chosen = []
    for name in names or GROUPS:
        if name in GROUPS:
            group = [c for c in CELLS.values() if c.group == name
                     and not (quick and name == "tabular" and not c.bundled)]
        elif name in CELLS:
            group = [CELLS[name]]
        else:
            raise ValueError(f"unknown cell {name!r}; choose from {[*GROUPS, *CELLS]}")
        chosen += [c for c in group if c not in chosen]
    big_budget = budget if budget is not None else QUICK_BUDGET if quick else None
    if big_budget is not None:
        chosen = [replace(c, budget=big_budget) if c.group == "big" else c for c in chosen]
    return chosen


def estimate_run_seconds(cell: Cell, eval_rows: int | None = None) -> float:
    """Rough seconds of one run on ``cell`` (2 idle cores, 2 threads)."""
    if cell.group == "tabular":
        return estimate_seconds(cell.rows)
    # The budget (overshot by the last update), set-up, the curve's evaluations (the
    # clock is paused for them) and the final scoring on the whole test set.
    fraction = 1.0 if eval_rows is None else min(1.0, eval_rows / 10_000)
    return 1.05 * cell.budget + 2.0 + cell.eval_seconds * (1 + (EVAL_POINTS + 1) * fraction)


def max_eval_jump(history, after: float = JUMP_AFTER) -> float:
    """Largest relative rise ``(next - previous) / previous`` of ``eval_loss`` between
    consecutive evaluations made after ``after`` training seconds: 0 when it never rose,
    inf when a value is not finite, NaN with fewer than two such evaluations."""
    late = history.loc[history["time"] >= after, "eval_loss"].to_numpy(dtype=float)
    if len(late) < 2:
        return math.nan
    if not np.isfinite(late).all():
        return math.inf
    rises = (late[1:] - late[:-1]) / np.maximum(np.abs(late[:-1]), 1e-300)
    return float(max(0.0, rises.max()))


# -- one run ------------------------------------------------------------------------------
def load_cell(cell: Cell, data_home=None, layers=None):
    """The cell's data (``benchmarks.problems.Data`` or ``(X, y, kind)``) and problem.

    Raises :class:`skkfac.datasets.DatasetNotFoundError` when a data file is missing.
    ``layers`` maps cell names to other architectures (tests use tiny ones).
    """
    if cell.group == "tabular":
        return load_tabular(cell.name, data_home), None
    from benchmarks.problems import get_problem

    problem = get_problem(cell.problem)
    if layers and cell.name in layers:
        problem = replace(problem, layers=tuple(layers[cell.name]))
    return problem.load(data_home, regression_data=cell.regression_data), problem


def curve_rows(n_test: int, eval_rows: int | None) -> np.ndarray:
    """Test rows of the learning curve: all, or a fixed sample of ``eval_rows``."""
    if eval_rows is None or eval_rows >= n_test:
        return np.arange(n_test)
    return np.sort(np.random.RandomState(0).choice(n_test, eval_rows, replace=False))


def fit_big(cell: Cell, problem, data, method: str, seed: int, threads: int, *,
            jump_after: float = JUMP_AFTER, eval_rows: int | None = None):
    """Train ``method`` at its defaults (:data:`STUDY_METHOD`: the study's K-FAC) for the
    cell's budget; ``(row values, history)``."""
    solver, params = method, {}
    if method == STUDY_METHOD:
        tuned = {k: v for k, v in problem.study["kfac"].items() if k != "loss"}
        solver, params = "kfac", {**STUDY_KFAC, **tuned}
    estimator = problem.make_estimator(solver, max_time=cell.budget, random_state=seed,
                                       eval_interval=cell.budget / EVAL_POINTS,
                                       n_threads=threads, **params)
    rows = curve_rows(len(data.X_test), eval_rows)
    if data.y_full is None:
        seconds, warned = timed_fit(estimator, data.X_full, eval_set=data.X_test[rows])
    else:
        seconds, warned = timed_fit(estimator, data.X_full, data.y_full,
                                    eval_set=(data.X_test[rows], data.y_test[rows]))
    if problem.is_classifier:
        score, eval_loss = classification_scores(estimator, data.X_test, data.y_test)
        score_name, higher = "test accuracy", True
    else:
        score = eval_loss = problem.loss(estimator, data.X_test, data.y_test)
        score_name, higher = "test MSE", False
    history = estimator.history_
    row = {"score": score, "score_name": score_name, "higher_is_better": higher,
           "eval_loss": eval_loss, "fit_seconds": seconds,
           "train_seconds": estimator.train_time_, "updates": estimator.n_updates_,
           "stop_reason": estimator.stop_reason_,
           "max_eval_jump": max_eval_jump(history, jump_after),
           "convergence_warnings": warned, "budget": cell.budget,
           "n_train": len(data.X_full), "n_test": len(data.X_test)}
    return row, history


# -- the benchmark ----------------------------------------------------------------------------
def run_defaults(out, *, cells=None, methods=None, seeds: int = 3,
                 splits: int = TABULAR_SPLITS, threads: int = 2,
                 data_home=None, quick: bool = False, fresh: bool = False,
                 budget: float | None = None, layers=None, argv=None,
                 progress=log) -> dict:
    """Run the planned cells (resuming), then write table.md, verdict.json, scores.png.

    ``cells``: names or groups (see :func:`select_cells`); ``methods``: a subset of
    :func:`all_methods`; ``seeds`` per big cell, ``splits`` per tabular cell; ``budget``
    and ``layers`` override the big cells' budgets and
    architectures (for tests). Returns the verdict (see :mod:`benchmarks.defaults_report`).
    """
    from skkfac.datasets import DatasetNotFoundError

    out = Path(out)
    load_start = os.getloadavg()
    jump_after = min(JUMP_AFTER, budget / 4) if budget is not None else (
        QUICK_BUDGET / 4 if quick else JUMP_AFTER)
    eval_rows = QUICK_EVAL_ROWS if quick else None
    plan = select_cells(cells, quick=quick, budget=budget)
    wanted = set(methods or all_methods())
    unknown = wanted - set(all_methods())
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {all_methods()}")
    run_log = CsvLog(out / "runs.csv", RUN_COLUMNS)
    history_log = CsvLog(out / "history.csv", HISTORY_COLUMNS)
    if fresh:
        run_log.remove()
        history_log.remove()
    check_settings(out / "settings.json",
                   {"threads": threads, "eval_points": EVAL_POINTS, "jump_after": jump_after,
                    "eval_rows": eval_rows,
                    "layers": layers or {}, "big_budgets": {
                        c.name: c.budget for c in select_cells(["big"], quick=quick,
                                                               budget=budget)}},
                   fresh=fresh)
    done = {(r["cell"], r["method"], int(r["seed"]))
            for r in run_log.read().to_dict("records")}
    planned = [(cell, seed, m) for cell in plan
               for seed in range(seeds if cell.group == "big" else splits)
               for m in cell.methods() if m in wanted]
    todo = [(cell, seed, m) for cell, seed, m in planned if (cell.name, m, seed) not in done]
    estimate = sum(estimate_run_seconds(cell, eval_rows) for cell, _, _ in todo)
    progress(f"defaults: {len(plan)} cells ({', '.join(c.name for c in plan)}), {seeds} "
             f"seed(s) per big cell, {splits} split(s) per tabular cell, {threads} "
             f"thread(s); {len(todo)} runs to do, "
             f"{len(planned) - len(todo)} already done; estimated "
             f"{estimate / 60:.1f} min on 2 idle cores with --threads 2")
    skipped, start, finished, left = {}, time.time(), 0, estimate
    for cell in plan:
        runs = [(seed, m) for c, seed, m in todo if c is cell]
        if not runs:
            continue
        try:
            data, problem = load_cell(cell, data_home, layers)
        except DatasetNotFoundError as error:
            skipped[cell.name] = str(error).splitlines()[0]
            progress(f"defaults: skipping cell {cell.name}: data missing "
                     f"({skipped[cell.name]})")
            finished += len(runs)
            left -= len(runs) * estimate_run_seconds(cell, eval_rows)
            continue
        for seed, method in runs:
            if problem is None:
                values, history = fit_tabular(*data, method, seed, threads), None
            else:
                values, history = fit_big(cell, problem, data, method, seed, threads,
                                          jump_after=jump_after, eval_rows=eval_rows)
            row = {"cell": cell.name, "kind": cell.kind, "method": method, "seed": seed,
                   **values, "load_avg": round(os.getloadavg()[0], 2)}
            run_log.append(row)
            for record in ([] if history is None else history.to_dict("records")):
                history_log.append({"cell": cell.name, "method": method, "seed": seed,
                                    **{k: record.get(k) for k in HISTORY_COLUMNS[3:]}})
            finished += 1
            left -= estimate_run_seconds(cell, eval_rows)
            progress(f"defaults {cell.name}: {method_label(method)} seed {seed}: "
                     f"{row['score_name']} {row['score']:.5g}, {row['updates']:.0f} "
                     f"updates, fit {row['fit_seconds']:.1f} s"
                     + (f", stop {row['stop_reason']}" if row["stop_reason"] else "")
                     + f"; {finished}/{len(todo)} done, ~{max(left, 0) / 60:.1f} min left "
                     f"(elapsed {(time.time() - start) / 60:.1f} min)")
    header = machine_header(argv, threads, load_start)
    return write_results(out, run_log.read(), header, cell_order=list(CELLS),
                         skipped=skipped, history=history_log.read(), progress=progress)
