"""``batch-size``: K-FAC's batch-size experiments (the study's section 7, Figures 2-4).

Uses the ``bs_configs`` best K-FAC configurations of the problem's search
(``tune_kfac.csv`` in the same folder; the estimator defaults when there is none) and
retrains them on the whole training set, scoring the final loss on the full test set:

``fig2_time`` / ``fig2_updates``
    final test loss against ``batch_size`` under a time budget (``bs_max_time``) and an
    update budget (``bs_updates``) — Figure 2; besides K-FAC's configurations, the best
    configuration of every other solver with search results in the folder (SGD-Nesterov,
    Adam, ...) at the same batch sizes.
``fig3_lr``
    the best configuration at ``bs_lr_factors`` x its learning rate against batch size,
    time budget — Figure 3 left. Figure 3 right (share of training time spent inverting,
    ``history_['time_inverse'] / history_['time']``) comes from the ``fig2_time`` runs.
``fig4_time`` / ``fig4_updates``
    real batch ``bs_real_batch`` with ``artificial_batch_size`` in
    ``bs_artificial_sizes``, time budget and update budget ``bs_artificial_updates``
    — Figure 4.

An update budget is met exactly through the public API: ``partial_fit`` makes one pass
over the chunk it is given, one update per ``artificial_batch_size or batch_size``
samples, so the training rows are fed in shuffled chunks of whole updates.

Points are appended to ``batch_size.csv`` as they finish; re-running skips them.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.records import CsvLog, check_settings, log
from benchmarks.solvers import registered_solvers
from benchmarks.tune import best_configs, params_of

POINT_COLUMNS = ["experiment", "solver", "config", "trial", "batch_size",
                 "artificial_batch_size", "params", "learning_rate_init", "momentum_rate",
                 "momentum_max", "damping",
                 "budget", "test_loss", "train_time", "n_updates", "time_inverse",
                 "inverse_fraction", "stop_reason", "wall_seconds", "load_avg"]
DEFAULT_KFAC = {"learning_rate_init": 0.3, "momentum_rate": 1.0, "momentum_max": 0.6,
                "damping": 1e-3}


def train_for_updates(estimator, X, y, n_updates: int, *, seed: int = 0):
    """Train ``estimator`` for exactly ``n_updates`` updates with ``partial_fit``.

    Each call gets a shuffled chunk holding a whole number of updates' worth of rows, so
    no partial batch carries over. Rejected (diverged) updates are not repeated.
    """
    update_size = estimator.artificial_batch_size or estimator.batch_size
    n = len(X)
    if update_size > n:
        raise ValueError(f"an update needs {update_size} rows but there are only {n}")
    per_pass = n // update_size
    rng = np.random.RandomState(seed)
    extra = {}
    if hasattr(estimator, "predict_proba"):
        extra["classes"] = np.unique(y)
    done = 0
    while done < n_updates:
        chunk = min(per_pass, n_updates - done)
        rows = rng.permutation(n)[:chunk * update_size]
        if y is None:
            estimator.partial_fit(X[rows])
        else:
            estimator.partial_fit(X[rows], y[rows], **extra)
        if getattr(estimator, "stop_reason_", "") == "diverged":
            break
        done += chunk
    return estimator


def _configs(out_dir, k: int, progress):
    configs = best_configs(out_dir, "kfac", k)
    if len(configs):
        return [(rank, int(row["trial"]), {**DEFAULT_KFAC, **params_of(row, "kfac")})
                for rank, row in enumerate(configs.to_dict("records"), start=1)]
    progress("batch-size: no K-FAC search results here; using the estimator defaults "
             f"{DEFAULT_KFAC}")
    return [(1, -1, dict(DEFAULT_KFAC))]


def _other_solvers(out_dir) -> list:
    """``(solver, trial, params)`` of the best trial of every other searched solver."""
    found = []
    for solver in registered_solvers():
        if solver == "kfac":
            continue
        configs = best_configs(out_dir, solver, 1)
        if len(configs):
            row = configs.to_dict("records")[0]
            found.append((solver, int(row["trial"]), params_of(row, solver)))
    return found


def plan_points(configs, budget, n_train: int, others=()) -> list[dict]:
    """Every point of the batch-size experiments (batch sizes capped to the data).

    ``configs``: K-FAC's ``(rank, trial, params)``; ``others``: ``(solver, trial,
    params)`` of other solvers, which join Figure 2.
    """
    fits = lambda b: b <= n_train  # noqa: E731
    sizes = [b for b in budget.bs_batch_sizes if fits(b)]
    points = []
    runs = [("kfac", rank, trial, params) for rank, trial, params in configs]
    runs += [(solver, 1, trial, params) for solver, trial, params in others]
    for solver, rank, trial, params in runs:
        for b in sizes:
            for experiment in ("fig2_time", "fig2_updates"):
                points.append({"experiment": experiment, "solver": solver, "config": rank,
                               "trial": trial, **params, "batch_size": b,
                               "artificial_batch_size": None})
    best_rank, best_trial, best = configs[0]
    for factor in budget.bs_lr_factors:
        for b in (b for b in budget.bs_lr_batch_sizes if fits(b)):
            points.append({"experiment": "fig3_lr", "solver": "kfac", "config": best_rank,
                           "trial": best_trial,
                           **best, "learning_rate_init": best["learning_rate_init"] * factor,
                           "batch_size": b, "artificial_batch_size": None})
    for rank, trial, params in configs:
        for a in (a for a in budget.bs_artificial_sizes if fits(a)):
            for experiment in ("fig4_time", "fig4_updates"):
                points.append({"experiment": experiment, "solver": "kfac", "config": rank,
                               "trial": trial, **params, "batch_size": budget.bs_real_batch,
                               "artificial_batch_size": max(a, budget.bs_real_batch)})
    return points


def _key(point) -> tuple:
    ab = point.get("artificial_batch_size")
    ab = None if ab is None or (isinstance(ab, float) and math.isnan(ab)) else int(ab)
    return (point["experiment"], point["solver"], int(point["config"]),
            int(point["batch_size"]), ab, round(float(point["learning_rate_init"]), 12))


def run_batch_size(problem, data, out_dir, budget, *, seed: int = 0, device: str = "auto",
                   fresh: bool = False, progress=log):
    """Run (or finish) every point, then draw Figures 2-4."""
    import pandas as pd

    out_dir = Path(out_dir)
    point_log = CsvLog(out_dir / "batch_size.csv", POINT_COLUMNS)
    if fresh:
        point_log.remove()
    configs = _configs(out_dir, budget.bs_configs, progress)
    settings = {"problem": problem.name, "dataset": data.dataset, "note": data.note,
                "max_time": budget.bs_max_time, "updates": budget.bs_updates,
                "artificial_updates": budget.bs_artificial_updates, "seed": seed,
                "n_train": len(data.X_full)}
    check_settings(out_dir / "batch_size.json", settings, fresh=fresh)
    X, y = data.X_full, data.y_full
    eval_X, eval_y = data.X_test, data.y_test
    points = plan_points(configs, budget, len(X), _other_solvers(out_dir))
    done = {_key(p) for p in point_log.read().to_dict("records")}
    todo = [p for p in points if _key(p) not in done]
    progress(f"batch-size {problem.name}: {len(points)} points, {len(points) - len(todo)} "
             f"already done; time budget {budget.bs_max_time:g} s, update budgets "
             f"{budget.bs_updates} / {budget.bs_artificial_updates}; {data.summary()}")
    start = time.time()
    for i, point in enumerate(todo):
        experiment = point["experiment"]
        by_updates = experiment.endswith("_updates")
        solver = point["solver"]
        known = set(params_of(point, solver)) | {"batch_size"}
        params = {k: v for k, v in point.items() if k in known}
        # One update per mini-batch unless the point says otherwise: the study measures
        # K-FAC at small batches too, below the size it accumulates to by default.
        params["artificial_batch_size"] = (point["artificial_batch_size"]
                                           or point["batch_size"])
        run_seed = seed + int(point["config"])
        wall = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            if by_updates:
                n_updates = (budget.bs_artificial_updates if experiment.startswith("fig4")
                             else budget.bs_updates)
                estimator = problem.make_estimator(solver, device=device,
                                                   random_state=run_seed, **params)
                train_for_updates(estimator, X, y, n_updates, seed=run_seed)
                budget_value = n_updates
            else:
                estimator = problem.make_estimator(solver, max_time=budget.bs_max_time,
                                                   device=device, random_state=run_seed,
                                                   **params)
                estimator.fit(X) if y is None else estimator.fit(X, y)
                budget_value = budget.bs_max_time
            loss = problem.loss(estimator, eval_X, eval_y)
        last = estimator.history_.iloc[-1]
        inverse = float(last.get("time_inverse", math.nan))
        row = {**{k: v for k, v in point.items() if k in POINT_COLUMNS},
               "params": json.dumps({k: v for k, v in params.items()
                                     if k != "artificial_batch_size"}, sort_keys=True),
               "budget": budget_value, "test_loss": loss,
               "train_time": estimator.train_time_, "n_updates": estimator.n_updates_,
               "time_inverse": inverse,
               "inverse_fraction": inverse / estimator.train_time_
               if estimator.train_time_ > 0 else math.nan,
               "stop_reason": estimator.stop_reason_,
               "wall_seconds": round(time.time() - wall, 2),
               "load_avg": round(os.getloadavg()[0], 2)}
        point_log.append(row)
        left = len(todo) - i - 1
        eta = (time.time() - start) / (i + 1) * left
        artificial = (f" artificial {point['artificial_batch_size']}"
                      if point["artificial_batch_size"] else "")
        inverting = (f", inverting {row['inverse_fraction']:.0%}"
                     if math.isfinite(row["inverse_fraction"]) else "")  # K-FAC only
        progress(f"batch-size {problem.name}: {experiment} {solver} #{point['config']} "
                 f"batch {point['batch_size']}{artificial} lr "
                 f"{point['learning_rate_init']:.3g} -> test loss {loss:.5g} "
                 f"({estimator.n_updates_} updates, {estimator.train_time_:.2f} s"
                 f"{inverting}); {left} left, ETA {eta / 60:.1f} min")
    table = point_log.read()
    from benchmarks.plotting import plot_batch_size

    figures = plot_batch_size(out_dir, problem, table, note=data.note,
                              time_budget=budget.bs_max_time, update_budget=budget.bs_updates,
                              artificial_updates=budget.bs_artificial_updates,
                              real_batch=budget.bs_real_batch)
    summary = (table.groupby(["experiment", "solver", "batch_size", "artificial_batch_size"],
                             dropna=False)["test_loss"].min().reset_index())
    summary.to_csv(out_dir / "batch_size_summary.csv", index=False)
    progress(f"batch-size {problem.name}: wrote {', '.join(p.name for p in figures)}")
    return pd.DataFrame(table)
