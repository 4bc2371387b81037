"""``tune``: Bayesian optimisation of each solver's hyper-parameters, resumable.

Every trial trains the problem's estimator for a fixed ``max_time`` on the training
split and scores it on the fixed validation split (:func:`run_trial`, one function per
trial, so that trials can be farmed out); ``repeats`` trainings with different seeds are
averaged, as the study did. The search space is :func:`skkfac.search.search_space`
(its ranges already widened where earlier searches' best trials sat at an edge); the
space is recorded with the trials.

Why an ask/tell loop and not ``BayesSearchCV``. ``skopt.BayesSearchCV`` works with
scikit-learn 1.9 and our estimators unchanged (``tests/test_benchmarks.py`` checks it),
but it can neither start from earlier results nor report a trial before the whole
search ends. We therefore drive the very optimiser ``BayesSearchCV`` builds
(``skopt.Optimizer`` with a Gaussian process and the ``gp_hedge`` acquisition) ourselves:
``ask()`` a point, train and score it, append the trial to ``tune_<solver>.csv`` at once
(flushed to disk), ``tell()`` the result. To resume, the CSV is *replayed*: for each
finished trial the optimiser is asked again and told the recorded point and value.
Asking again consumes the optimiser's random numbers exactly as the first run did, so a
resumed search proposes the same next points as an uninterrupted one (the GP's fits are
repeated, a second or so per trial). Only a trial that was running when the process
was stopped is lost.

Before the optimiser's first proposal, every search evaluates the solver's default
settings (:func:`run_default_trial`): a search must not report less than what a user
gets without one.

The optimiser sees ``log10`` of the mean validation loss (losses span decades); a
trial whose loss is not finite counts as ten times the loss of a constant predictor.
"""

from __future__ import annotations

import datetime
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.records import CsvLog, check_settings, log
from benchmarks.solvers import registered_solvers
from benchmarks.trials import cast_to_dimension, make_optimizer, short_value
from skkfac.search import search_space

RESULT_COLUMNS = ["val_loss", "val_loss_std", "val_losses", "val_accuracy", "objective",
                  "train_time", "n_updates", "stop_reason", "seeds", "wall_seconds",
                  "load_avg", "finished_at"]


def tune_csv(out_dir, solver) -> Path:
    return Path(out_dir) / f"tune_{solver}.csv"


def tune_columns(space: dict) -> list[str]:
    return ["trial", *space, *RESULT_COLUMNS]


def run_search(space: dict, evaluate, csv_log: CsvLog, *, n_trials: int,
               n_initial_points: int, random_state: int, label: str = "search",
               progress=log):
    """Minimise ``evaluate`` over ``space``, resuming from ``csv_log``.

    Parameters
    ----------
    space : dict of str to skopt.space.Dimension
    evaluate : callable
        ``evaluate(params, trial) -> dict`` with at least ``'objective'`` (minimised)
        and ``'val_loss'``; its keys must be columns of ``csv_log``. Trials are numbered
        from 1.
    csv_log : CsvLog
        Columns ``tune_columns(space)``; finished trials found in it are replayed.
    n_trials : int
        Total number of trials wanted (finished ones included).

    Returns
    -------
    optimizer : skopt.Optimizer
        Told every trial.
    trials : pandas.DataFrame
        The CSV's rows.
    """
    names = list(space)
    dimensions = list(space.values())
    optimizer = make_optimizer(space, n_initial_points=n_initial_points,
                               random_state=random_state)
    done = csv_log.read()
    if len(done) >= n_trials:  # nothing to run: no need to repeat the optimiser's proposals
        if len(done):
            xs = [[cast_to_dimension(d, row[n]) for d, n in zip(dimensions, names)]
                  for row in done.to_dict("records")]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optimizer.tell(xs, done["objective"].astype(float).tolist())
        progress(f"{label}: all {n_trials} trials already in {csv_log.path}")
        return optimizer, done
    if len(done):
        diverged = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for row in done.itertuples(index=False):
                row = row._asdict()
                x = [cast_to_dimension(d, row[n]) for d, n in zip(dimensions, names)]
                asked = [cast_to_dimension(d, v) for d, v in zip(dimensions, optimizer.ask())]
                diverged += asked != x
                optimizer.tell(x, float(row["objective"]))
        # On a first run the one finished trial is the defaults trial just evaluated.
        progress(f"{label}: the optimiser was told the {len(done)} finished trial(s) in "
                 f"{csv_log.path}" + (f" ({diverged} of them not its own proposals: the "
                                       "defaults trial, or trials made with other settings "
                                       "or versions)" if diverged else ""))
    best = done["val_loss"].min() if len(done) else math.inf
    start = time.time()
    for trial in range(len(done) + 1, n_trials + 1):  # numbered from 1, as shown everywhere
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = [cast_to_dimension(d, v) for d, v in zip(dimensions, optimizer.ask())]
        params = dict(zip(names, x))
        phase = "random" if trial <= n_initial_points else "GP"
        trial_start = time.time()
        result = evaluate(params, trial)
        row = {"trial": trial, **params, **result}
        csv_log.append(row)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimizer.tell(x, float(result["objective"]))
        loss = float(result["val_loss"])
        best = min(best, loss) if math.isfinite(loss) else best
        left = n_trials - trial
        eta = (time.time() - start) / (trial - len(done)) * left
        shown = " ".join(f"{k}={short_value(v)}" for k, v in params.items())
        progress(f"{label}: trial {trial}/{n_trials} ({phase}) {shown} -> val loss "
                 f"{loss:.5g} (best {best:.5g}); {short_value(result.get('n_updates'))} updates, "
                 f"{time.time() - trial_start:.1f} s wall; {left} left, ETA "
                 f"{eta / 60:.1f} min")
    return optimizer, csv_log.read()


def run_trial(problem, data, solver: str, params: dict, trial: int, *, max_time: float,
              repeats: int = 1, seed: int = 0, device: str = "auto") -> dict:
    """Run one search trial: train ``repeats`` times on the training split, score on the
    validation split.

    Everything the trial needs comes in through its arguments, so trials can run in
    any order or in parallel (seeds depend on ``trial`` and the repeat only).

    Returns
    -------
    dict
        The result columns of ``tune_<solver>.csv`` (:data:`RESULT_COLUMNS`).
    """
    cap = 10.0 * problem.baseline_loss(data)
    losses, accuracies, times, updates, reasons, seeds = [], [], [], [], [], []
    wall = time.time()
    for repeat in range(repeats):
        run_seed = seed + 1000 * trial + repeat
        estimator = problem.make_estimator(solver, max_time=max_time, device=device,
                                           random_state=run_seed, **params)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # divergence: stop_reason
                warnings.simplefilter("ignore", UserWarning)
                if data.y_train is None:
                    estimator.fit(data.X_train)
                else:
                    estimator.fit(data.X_train, data.y_train)
            losses.append(problem.loss(estimator, data.X_val, data.y_val))
            accuracies.append(problem.accuracy(estimator, data.X_val, data.y_val))
            reasons.append(estimator.stop_reason_)
        except (ValueError, RuntimeError, FloatingPointError) as error:
            # e.g. NaN predictions refused by a metric: a failed trial, not a failed search
            losses.append(math.nan)
            accuracies.append(math.nan)
            reasons.append(f"failed ({type(error).__name__})")
        times.append(getattr(estimator, "train_time_", math.nan))
        updates.append(getattr(estimator, "n_updates_", 0))
        seeds.append(run_seed)
    finite = [v for v in losses if math.isfinite(v)]
    mean = float(np.mean(losses)) if len(finite) == len(losses) else math.inf
    return {
        "val_loss": mean,
        "val_loss_std": float(np.std(finite)) if finite else math.nan,
        "val_losses": ";".join(f"{v:.6g}" for v in losses),
        "val_accuracy": float(np.mean(accuracies)),
        "objective": math.log10(min(mean, cap)) if mean > 0 else math.log10(cap),
        "train_time": float(np.mean(times)),
        "n_updates": float(np.mean(updates)),
        "stop_reason": ";".join(sorted(set(reasons))),
        "seeds": ";".join(map(str, seeds)),
        "wall_seconds": round(time.time() - wall, 2),
        # 1-minute load average: above the core count, timings were disturbed
        "load_avg": round(os.getloadavg()[0], 2),
        "finished_at": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def make_trial_evaluator(problem, data, solver: str, *, max_time: float, repeats: int,
                         seed: int, device: str = "auto"):
    """``evaluate(params, trial)``: :func:`run_trial` with the search's fixed settings."""
    def evaluate(params: dict, trial: int) -> dict:
        return run_trial(problem, data, solver, params, trial, max_time=max_time,
                         repeats=repeats, seed=seed, device=device)

    return evaluate


def run_tune(problem, data, out_dir, budget, *, solvers=None, seed: int = 0,
             device: str = "auto", fresh: bool = False, progress=log,
             scheduler: str | None = None, n_workers: int | None = None) -> dict:
    """Search each solver's space on ``problem``; results in ``<out_dir>/tune_<solver>.csv``.

    ``solvers`` defaults to every registered solver. ``scheduler`` (a Dask scheduler
    address, or ``'local'`` for a local cluster of ``n_workers`` processes) runs the
    trials in parallel: see :mod:`benchmarks.dask_search`. Returns ``{solver: DataFrame
    of trials}``.
    """
    from benchmarks.dask_search import search_backend

    with search_backend(scheduler, n_workers=n_workers, sequential=run_search) as backend:
        return _run_tune(problem, data, out_dir, budget, solvers=solvers, seed=seed,
                         device=device, fresh=fresh, progress=progress, backend=backend)


def _run_tune(problem, data, out_dir, budget, *, solvers, seed, device, fresh, progress,
              backend) -> dict:
    solvers = registered_solvers() if solvers is None else tuple(solvers)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    every = registered_solvers()
    for solver in solvers:
        # The optimiser's seed depends on the solver, not on which solvers run together.
        index = every.index(solver) if solver in every else len(every)
        space = search_space(solver, n_samples=len(data.X_train))
        csv_log = CsvLog(tune_csv(out_dir, solver), backend.columns(tune_columns(space)))
        if fresh:
            csv_log.remove()
        settings = {"problem": problem.name, "dataset": data.dataset, "note": data.note,
                    "solver": solver, "max_time": budget.tune_max_time,
                    "repeats": budget.repeats, "n_initial_points": budget.n_initial_points,
                    "seed": seed, "n_train": len(data.X_train), "n_val": len(data.X_val),
                    "space": {k: repr(v) for k, v in space.items()}}
        check_settings(out_dir / f"tune_{solver}.json", settings, fresh=fresh)
        label = f"tune {problem.name}/{solver}"
        progress(f"{label}: {budget.n_trials} trials of {budget.tune_max_time:g} s x "
                 f"{budget.repeats} repeat(s) on {data.summary()}")
        evaluate = make_trial_evaluator(problem, data, solver,
                                        max_time=budget.tune_max_time,
                                        repeats=budget.repeats, seed=seed, device=device)
        run_default_trial(problem, data, solver, space, evaluate, csv_log, label=label,
                          progress=progress)
        _, trials = backend.run_search(space, evaluate, csv_log, n_trials=budget.n_trials,
                                       n_initial_points=budget.n_initial_points,
                                       random_state=seed + 7 * index, label=label,
                                       progress=progress)
        results[solver] = trials
        best = trials.nsmallest(min(4, len(trials)), "val_loss")
        progress(f"{label}: best validation losses "
                 + ", ".join(f"{v:.5g}" for v in best["val_loss"]))
    try:
        from benchmarks.plotting import plot_tune_losses

        plot_tune_losses(out_dir, problem)
    except Exception as error:  # a figure must never lose the search results
        progress(f"could not draw the search figure: {error!r}")
    return results


def default_point(problem, data, solver: str, space: dict) -> dict:
    """The estimator's default settings of ``solver`` as a point of ``space``.

    A ``None`` that stands for the solver's own default is replaced by it;
    ``batch_size='auto'`` is resolved the way a fit resolves it (one short fit on a few
    hundred rows builds the solver that decides); a default outside the space's range is
    clipped to it.
    """
    from skkfac.solvers.spec import get_solver, solver_arguments

    estimator = problem.make_estimator(solver)
    defaults = estimator.get_params()
    cls = get_solver(solver)  # None means "the solver's default" (learning_rate_init)
    arguments = solver_arguments(cls, defaults)
    defaults.update({hyper.parameter: arguments[hyper.name] for hyper in cls.hyperparameters})
    if defaults.get("batch_size") == "auto" and "batch_size" in space:
        rows = slice(0, min(len(data.X_train), 300))
        estimator.set_params(max_iter=1, max_time=None, early_stopping=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if data.y_train is None:
                estimator.fit(data.X_train[rows])
            else:
                estimator.fit(data.X_train[rows], data.y_train[rows])
        defaults["batch_size"] = estimator._effective_batch_size(len(data.X_train))
    point = {}
    for name, dimension in space.items():
        value = min(max(float(defaults[name]), dimension.low), dimension.high)
        point[name] = cast_to_dimension(dimension, value)
    return point


def _is_point(row, point: dict) -> bool:
    return all(math.isclose(float(row[name]), float(value), rel_tol=1e-9)
               for name, value in point.items())


def run_default_trial(problem, data, solver: str, space: dict, evaluate, csv_log, *,
                      label: str, progress=log) -> None:
    """Evaluate the solver's defaults (:func:`default_point`) as the search's next trial
    unless a trial already has them; it counts towards ``n_trials``.

    A search must not report less than what a user gets without one. On the MNIST
    autoencoder Adam's default learning rate 1e-3 lies in a narrow band between a plateau
    (held-out MSE ~0.018 below 3e-4) and a collapse (0.12 above 2e-3); 24 trials of
    random and GP proposals missed it, while the defaults reach 0.0162 in 60 s. The
    optimiser is told this trial like any other when the search replays the CSV, so
    resuming stays deterministic.
    """
    done = csv_log.read()
    point = default_point(problem, data, solver, space)
    if any(_is_point(row, point) for row in done.to_dict("records")):
        return
    trial = len(done) + 1
    result = evaluate(point, trial)
    csv_log.append({"trial": trial, **point, **result})
    shown = " ".join(f"{k}={short_value(v)}" for k, v in point.items())
    progress(f"{label}: trial {trial} (the defaults) {shown} -> val loss "
             f"{float(result['val_loss']):.5g}; {short_value(result.get('n_updates'))} updates")


def best_configs(out_dir, solver: str, k: int):
    """The ``k`` trials of ``tune_<solver>.csv`` with the lowest validation loss.

    Returns a DataFrame (``trial`` and the parameter columns among others), best first;
    empty when there is no search result.
    """
    import pandas as pd

    path = tune_csv(out_dir, solver)
    if not path.is_file():
        return pd.DataFrame()
    trials = pd.read_csv(path, on_bad_lines="skip")
    trials = trials[np.isfinite(trials["val_loss"].astype(float))]
    return trials.nsmallest(k, "val_loss").reset_index(drop=True)


def params_of(row, solver: str) -> dict:
    """The estimator parameters of a trial row (the search space's keys)."""
    space = search_space(solver)
    out = {}
    for name, dimension in space.items():
        if name in row and not (isinstance(row[name], float) and math.isnan(row[name])):
            out[name] = cast_to_dimension(dimension, row[name])
    return out
