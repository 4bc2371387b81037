"""``compare``: retrain the best configurations of each solver, learning curves, verdict.

The ``top_k`` trials of each solver's search (lowest validation loss) are retrained on
the whole training set (training + validation rows) for ``compare_time`` seconds with
``eval_set`` = the full test set evaluated every ``max_time / eval_points`` training
seconds (the clock is paused while evaluating). Outputs, in the problem's folder:

``compare_runs.csv``      one row per run: configuration, final / best test loss, ...
``compare_history.csv``   every run's ``history_`` (learning curves)
``table.csv``, ``table.md``  the study's Tables 1-3 layout (plus our test losses)
``verdict.txt``           who wins at the budget end, when K-FAC reached SGD's best
``compare_loss.png``      test loss against training time and updates (Figures 6, 7, 9)
``compare_accuracy.png``  test accuracy (classification only; Figure 8)

Each finished run is appended at once; re-running the command skips finished runs.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.records import CsvLog, check_settings, log
from benchmarks.tune import SOLVER_LABELS, best_configs, params_of

RUN_COLUMNS = ["solver", "rank", "trial", "params", "tune_val_loss", "final_loss",
               "best_loss", "final_accuracy", "best_accuracy", "train_time", "n_updates",
               "n_evaluations", "stop_reason", "seed", "wall_seconds", "load_avg"]
HISTORY_COLUMNS = ["solver", "rank", "trial", "update", "epoch", "samples", "time",
                   "train_loss", "eval_loss", "eval_score", "time_forward_backward",
                   "time_statistics", "time_inverse", "time_precondition", "time_update"]


# -- verdicts (pure functions, unit-tested) ----------------------------------------------
def all_beat(winner_finals, loser_finals, *, higher_is_better: bool = False) -> bool:
    """Whether every value of ``winner_finals`` beats every value of ``loser_finals``."""
    winner = np.asarray(winner_finals, dtype=float)
    loser = np.asarray(loser_finals, dtype=float)
    if winner.size == 0 or loser.size == 0 or not np.isfinite(winner).all():
        return False
    if higher_is_better:
        return bool(winner.min() > np.nanmax(loser))
    return bool(winner.max() < np.nanmin(loser))


def first_reach(histories, target: float, *, column: str = "eval_loss",
                higher_is_better: bool = False):
    """The earliest evaluation (over all runs) at which ``column`` reached ``target``.

    Parameters
    ----------
    histories : iterable of (label, DataFrame)
        Learning curves with ``time``, ``update`` and ``column``.

    Returns
    -------
    dict or None
        ``{'time', 'update', 'run', 'value'}`` of the first evaluation at least as good
        as ``target``; None when no run reached it.
    """
    best = None
    for label, history in histories:
        values = history[column].to_numpy(dtype=float)
        reached = values >= target if higher_is_better else values <= target
        if not reached.any():
            continue
        i = int(np.argmax(reached))
        hit = {"time": float(history["time"].iloc[i]),
               "update": int(history["update"].iloc[i]), "run": label,
               "value": float(values[i])}
        if best is None or hit["time"] < best["time"]:
            best = hit
    return best


def compute_verdict(runs: pd.DataFrame, histories: pd.DataFrame, budget_seconds: float,
                    *, metric: str = "loss") -> dict:
    """Compare K-FAC's and SGD's runs at the budget end.

    Parameters
    ----------
    runs : DataFrame
        ``solver``, ``rank``, ``final_loss`` (and ``final_accuracy`` for
        ``metric='accuracy'``).
    histories : DataFrame
        ``solver``, ``rank``, ``time``, ``update``, ``eval_loss`` / ``eval_score``.
    budget_seconds : float
    metric : {'loss', 'accuracy'}

    Returns
    -------
    dict
        ``all_kfac_beat_all_sgd`` (bool), ``sgd_best_final``, ``kfac_best_final``,
        ``n_kfac``, ``n_sgd`` and ``kfac_reached_sgd_best`` (``first_reach``'s dict with
        ``fraction`` of the budget added, or None), plus ``metric``.
    """
    higher = metric == "accuracy"
    final_col = "final_accuracy" if higher else "final_loss"
    curve_col = "eval_score" if higher else "eval_loss"
    kfac = runs[runs["solver"] == "kfac"]
    sgd = runs[runs["solver"] == "sgd"]
    result = {"metric": metric, "n_kfac": len(kfac), "n_sgd": len(sgd),
              "all_kfac_beat_all_sgd": all_beat(kfac[final_col], sgd[final_col],
                                                higher_is_better=higher),
              "sgd_best_final": math.nan, "kfac_best_final": math.nan,
              "kfac_reached_sgd_best": None, "budget": float(budget_seconds),
              "end_times": {}}
    if "train_time" in runs:
        # Training stops after the first update that ends past the budget.
        for solver, group in runs.groupby("solver"):
            times = group["train_time"].to_numpy(dtype=float)
            result["end_times"][solver] = (float(times.min()), float(times.max()))
    if len(sgd) and len(kfac):
        pick = np.nanmax if higher else np.nanmin
        sgd_best = float(pick(sgd[final_col].to_numpy(dtype=float)))
        result["sgd_best_final"] = sgd_best
        result["kfac_best_final"] = float(pick(kfac[final_col].to_numpy(dtype=float)))
        curves = [(f"K-FAC #{int(rank)}", group)
                  for rank, group in histories[histories["solver"] == "kfac"].groupby("rank")]
        hit = first_reach(curves, sgd_best, column=curve_col, higher_is_better=higher)
        if hit is not None:
            hit["fraction"] = hit["time"] / budget_seconds if budget_seconds else math.nan
        result["kfac_reached_sgd_best"] = hit
    return result


def format_verdict(verdict: dict) -> list[str]:
    """Human-readable verdict lines."""
    what = "test accuracy" if verdict["metric"] == "accuracy" else "test loss"
    n_k, n_s = verdict["n_kfac"], verdict["n_sgd"]
    lines = [f"all {n_k} K-FAC runs beat all {n_s} SGD runs at the budget end ({what}): "
             f"{'yes' if verdict['all_kfac_beat_all_sgd'] else 'no'}"]
    if n_k and n_s:
        lines.append(f"best final {what}: K-FAC {verdict['kfac_best_final']:.5g}, "
                     f"SGD {verdict['sgd_best_final']:.5g}")
        hit = verdict["kfac_reached_sgd_best"]
        if hit is None:
            lines.append(f"K-FAC never reached SGD's best final {what} "
                         f"({verdict['sgd_best_final']:.5g}) within the "
                         f"{verdict['budget']:g} s budget")
        else:
            lines.append(f"K-FAC first reached SGD's best final {what} "
                         f"({verdict['sgd_best_final']:.5g}) at t = {hit['time']:.2f} s "
                         f"({100 * hit['fraction']:.0f} % of the {verdict['budget']:g} s "
                         f"budget), update {hit['update']}, run {hit['run']}")
    ends = verdict.get("end_times") or {}
    if ends and verdict["metric"] == "loss":
        lines.append("runs ended (training seconds; training stops after the first update "
                     "that ends past the budget): " + ", ".join(
                         f"{SOLVER_LABELS[s]} {lo:.1f}-{hi:.1f} s"
                         for s, (lo, hi) in sorted(ends.items())))
    return lines


# -- tables --------------------------------------------------------------------------------
SGD_TABLE = [("Loss", "tune_val_loss"), ("Test loss", "final_loss"),
             ("LR", "learning_rate_init"), ("Batch size", "batch_size"), ("M", "momentum")]
KFAC_TABLE = [("Loss", "tune_val_loss"), ("Test loss", "final_loss"),
              ("LR", "learning_rate_init"), ("Batch size", "batch_size"),
              ("m_rate", "momentum_rate"), ("m_max", "momentum_max"), ("damping", "damping")]


def results_table(runs: pd.DataFrame, problem) -> pd.DataFrame:
    """Long table (one row per run) with the configuration spread into columns."""
    rows = []
    for run in runs.sort_values(["solver", "rank"]).itertuples(index=False):
        params = json.loads(run.params)
        row = {"solver": run.solver, "rank": run.rank, "trial": run.trial,
               "tune_val_loss": run.tune_val_loss, "final_loss": run.final_loss,
               "best_loss": run.best_loss, **params, "n_updates": run.n_updates}
        if problem.is_classifier:
            row["final_accuracy"] = run.final_accuracy
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(value, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column == "batch_size":
        return str(int(value))
    if column in ("tune_val_loss", "final_loss", "best_loss"):
        return f"{value:.4g}"
    if column == "final_accuracy":
        return f"{value:.4f}"
    if column == "damping":
        return f"{value:.2e}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown_table(table: pd.DataFrame, problem) -> str:
    """The study's two-part table: SGD then K-FAC, best first."""
    parts = []
    for solver, layout in (("sgd", SGD_TABLE), ("kfac", KFAC_TABLE)):
        sub = table[table["solver"] == solver]
        if not len(sub):
            continue
        layout = list(layout)
        if problem.is_classifier:
            layout.insert(2, ("Test acc.", "final_accuracy"))
        header = "| " + " | ".join(name for name, _ in layout) + " |"
        rule = "|" + "|".join("---:" for _ in layout) + "|"
        body = ["| " + " | ".join(_fmt(row.get(col), col) for _, col in layout) + " |"
                for row in sub.to_dict("records")]
        parts.append(f"**{SOLVER_LABELS[solver]}**\n\n" + "\n".join([header, rule, *body]))
    legend = ("Loss: mean validation loss in the search; Test loss: final loss on the full "
              "test set after retraining on all training rows for the same budget.")
    return "\n\n".join([*parts, legend]) + "\n"


# -- running --------------------------------------------------------------------------------
def run_compare(problem, data, out_dir, budget, *, solvers=("kfac", "sgd"), seed: int = 0,
                device: str = "auto", fresh: bool = False, progress=log) -> dict:
    """Retrain the best configurations, then write tables, figures and the verdict."""
    out_dir = Path(out_dir)
    run_log = CsvLog(out_dir / "compare_runs.csv", RUN_COLUMNS)
    history_log = CsvLog(out_dir / "compare_history.csv", HISTORY_COLUMNS)
    if fresh:
        run_log.remove()
        history_log.remove()
    max_time = budget.compare_time
    interval = max_time / budget.eval_points
    check_settings(out_dir / "compare.json",
                   {"problem": problem.name, "dataset": data.dataset, "note": data.note,
                    "max_time": max_time, "eval_interval": interval,
                    "n_train": len(data.X_full), "n_test": len(data.X_test), "seed": seed},
                   fresh=fresh)
    plan = []
    for solver in solvers:
        configs = best_configs(out_dir, solver, budget.top_k)
        if not len(configs):
            raise SystemExit(f"no search results in {out_dir} for {solver}: run `python -m "
                             f"benchmarks tune --problem {problem.name}` first.")
        for rank, row in enumerate(configs.to_dict("records"), start=1):
            plan.append((solver, rank, int(row["trial"]), float(row["val_loss"]),
                         params_of(row, solver)))
    done = run_log.read()
    finished = {(s, int(t)) for s, t in zip(done["solver"], done["trial"])}
    todo = [p for p in plan if (p[0], p[2]) not in finished]
    progress(f"compare {problem.name}: {len(plan)} runs of {max_time:g} s (test set every "
             f"{interval:.3g} s), {len(plan) - len(todo)} already done; {data.summary()}")
    X_fit, y_fit = data.X_full, data.y_full
    eval_set = data.X_test if data.y_test is None else (data.X_test, data.y_test)
    start = time.time()
    for i, (solver, rank, trial, tune_loss, params) in enumerate(todo):
        run_seed = seed + 100 * rank + (0 if solver == "kfac" else 50)
        estimator = problem.make_estimator(solver, max_time=max_time, eval_interval=interval,
                                           device=device, random_state=run_seed, **params)
        wall = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            if y_fit is None:
                estimator.fit(X_fit, eval_set=eval_set)
            else:
                estimator.fit(X_fit, y_fit, eval_set=eval_set)
        history = estimator.history_
        for record in history.to_dict("records"):
            history_log.append({"solver": solver, "rank": rank, "trial": trial,
                                **{k: v for k, v in record.items() if k in HISTORY_COLUMNS}})
        final = history.iloc[-1]
        run = {"solver": solver, "rank": rank, "trial": trial,
               "params": json.dumps(params, sort_keys=True), "tune_val_loss": tune_loss,
               "final_loss": float(final["eval_loss"]),
               "best_loss": float(history["eval_loss"].min()),
               "final_accuracy": float(final["eval_score"]) if problem.is_classifier
               else math.nan,
               "best_accuracy": float(history["eval_score"].max()) if problem.is_classifier
               else math.nan,
               "train_time": estimator.train_time_, "n_updates": estimator.n_updates_,
               "n_evaluations": len(history), "stop_reason": estimator.stop_reason_,
               "seed": run_seed, "wall_seconds": round(time.time() - wall, 2),
               "load_avg": round(os.getloadavg()[0], 2)}
        run_log.append(run)
        left = len(todo) - i - 1
        eta = (time.time() - start) / (i + 1) * left
        progress(f"compare {problem.name}: {SOLVER_LABELS[solver]} #{rank} (trial {trial}) "
                 f"final test loss {run['final_loss']:.5g}"
                 + (f", accuracy {run['final_accuracy']:.4f}" if problem.is_classifier else "")
                 + f" after {estimator.n_updates_} updates / {estimator.train_time_:.1f} s; "
                 f"{left} left, ETA {eta / 60:.1f} min")
    return summarize_compare(problem, data, out_dir, budget, plan=plan, progress=progress)


def load_compare(out_dir, plan=None):
    """The runs and histories of the current top configurations (stale runs dropped)."""
    out_dir = Path(out_dir)
    runs = CsvLog(out_dir / "compare_runs.csv", RUN_COLUMNS).read()
    histories = CsvLog(out_dir / "compare_history.csv", HISTORY_COLUMNS).read()
    if plan is not None:
        wanted = {(p[0], p[2]): p[1] for p in plan}
        keep = [(s, int(t)) in wanted for s, t in zip(runs["solver"], runs["trial"])]
        runs = runs[keep].copy()
        runs["rank"] = [wanted[(s, int(t))] for s, t in zip(runs["solver"], runs["trial"])]
        runs = runs.drop_duplicates(["solver", "trial"], keep="last")
        keys = set(zip(runs["solver"], runs["trial"].astype(int)))
        histories = histories[[(s, int(t)) in keys for s, t in
                               zip(histories["solver"], histories["trial"])]].copy()
        histories["rank"] = [wanted[(s, int(t))] for s, t in
                             zip(histories["solver"], histories["trial"])]
    return runs.sort_values(["solver", "rank"]), histories


def summarize_compare(problem, data, out_dir, budget, *, plan=None, progress=log) -> dict:
    """Tables, verdict and figures from the compare logs; prints the table and verdict."""
    from benchmarks.plotting import plot_compare

    out_dir = Path(out_dir)
    runs, histories = load_compare(out_dir, plan)
    if not len(runs):
        raise SystemExit(f"no compare runs in {out_dir}")
    budget_seconds = budget.compare_time
    table = results_table(runs, problem)
    table.to_csv(out_dir / "table.csv", index=False)
    markdown = markdown_table(table, problem)
    verdicts = [compute_verdict(runs, histories, budget_seconds, metric="loss")]
    if problem.is_classifier:
        verdicts.append(compute_verdict(runs, histories, budget_seconds, metric="accuracy"))
    lines = [line for v in verdicts for line in format_verdict(v)]
    header = [f"{problem.title} — {data.summary()}",
              f"network {problem.architecture(data.X_train.shape[1])}; "
              f"{budget_seconds:g} s training budget per run"]
    (out_dir / "table.md").write_text(
        "\n".join(f"_{h}_  " for h in header) + "\n\n" + markdown)
    (out_dir / "verdict.txt").write_text("\n".join(header + lines) + "\n")
    (out_dir / "verdict.json").write_text(json.dumps(verdicts, indent=2, default=str) + "\n")
    plot_compare(out_dir, problem, runs, histories, budget_seconds, note=data.note)
    progress(f"compare {problem.name}: results in {out_dir}")
    print("\n".join(header), flush=True)
    print(markdown, flush=True)
    print("\n".join(lines), flush=True)
    return {"runs": runs, "histories": histories, "table": table, "verdicts": verdicts,
            "lines": lines}
