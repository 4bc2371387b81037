"""``compare``: retrain each solver's best configurations with several seeds; verdict.

The ``top_k`` trials of each solver's search (lowest validation loss) are retrained
``seeds`` times each on the whole training set (training + validation rows) for
``compare_time`` seconds, with ``eval_set`` = the full test set evaluated every
``max_time / eval_points`` training seconds (the clock is paused while evaluating); at
each evaluation the loss on the training set is recorded too (``train_set_loss``: all
training rows, or a stated sample of ``train_eval_rows`` for the curves; the final
training loss always uses all of them). Outputs, in the problem's folder:

``compare_runs.csv``      one row per run: configuration, seed, final held-out and
                          training loss, ...
``compare_history.csv``   every run's ``history_`` (learning curves)
``table.csv``, ``table.md``  per solver and configuration: medians and spreads over seeds
``verdict.txt``, ``verdict.json``  the verdict (below)
``compare_loss.png``      held-out and training loss against training time and updates
``compare_accuracy.png``  test accuracy (classification only; the study's Figure 8)

The verdict, for held-out and for training loss. Each solver is represented by the
configuration with the lowest median final held-out loss over its seeds. A solver wins
when its worst seed beats every other solver's best seed; when the spreads (min-max
over seeds) overlap there is **no winner**. A problem is **floor-limited** when every
run of every solver was within 10 % of its own final held-out loss before a quarter of
the budget: then the budget, not the solver, decides, and no winner is named. **Time
to target** (as in MLCommons AlgoPerf): the training time each run needs to reach the
target, the median final held-out loss of the best first-order solver; median and
spread over seeds. **Budget rule**: the budget is long enough when the best first-order
solver's held-out loss changes by less than 2 % over the last quarter of the budget
(median over its seeds).

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
from benchmarks.solvers import is_first_order, label, registered_solvers
from benchmarks.train_loss import TrainingSetLoss
from benchmarks.trials import RUN_KEY, run_curves
from benchmarks.tune import best_configs, params_of

RUN_COLUMNS = ["solver", "rank", "trial", "seed_index", "params", "tune_val_loss",
               "final_loss", "best_loss", "final_train_loss", "final_accuracy",
               "best_accuracy", "train_time", "n_updates", "n_evaluations", "stop_reason",
               "seed", "wall_seconds", "load_avg"]
HISTORY_COLUMNS = ["solver", "rank", "trial", "seed_index", "update", "epoch", "samples",
                   "time", "train_loss", "train_set_loss", "eval_loss", "eval_score",
                   "time_forward_backward", "time_statistics", "time_inverse",
                   "time_precondition", "time_update"]
#: Floor rule: within FLOOR_TOLERANCE of the final loss before FLOOR_FRACTION of the budget.
FLOOR_FRACTION, FLOOR_TOLERANCE = 0.25, 0.10
#: Budget rule: less than BUDGET_CHANGE relative change over the last BUDGET_FRACTION.
BUDGET_FRACTION, BUDGET_CHANGE = 0.25, 0.02

#: What a verdict compares: (name, final column of the runs, curve column of histories).
MEASURES = {"held-out loss": ("final_loss", "eval_loss"),
            "training loss": ("final_train_loss", "train_set_loss")}


# -- statistics of the runs (pure functions, unit-tested) -----------------------------------
def spread(values) -> dict:
    """``{'median', 'min', 'max', 'n'}`` of the finite ``values`` (NaN when none)."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"median": float(np.median(finite)), "min": float(finite.min()),
            "max": float(finite.max()), "n": int(finite.size)}


def first_time_at_or_below(history: pd.DataFrame, target: float,
                           column: str = "eval_loss") -> float:
    """Training time of the first evaluation with ``column <= target`` (inf if never)."""
    values = history[column].to_numpy(dtype=float)
    reached = values <= target
    if not reached.any():
        return math.inf
    return float(history["time"].to_numpy(dtype=float)[int(np.argmax(reached))])


def reaches_floor_early(history: pd.DataFrame, budget: float, *,
                        column: str = "eval_loss") -> bool:
    """Whether the run was within 10 % of its final loss before a quarter of the budget."""
    times = history["time"].to_numpy(dtype=float)
    values = history[column].to_numpy(dtype=float)
    final = values[-1]
    early = values[times <= FLOOR_FRACTION * budget]
    return bool(math.isfinite(final) and early.size
                and np.nanmin(early) <= (1 + FLOOR_TOLERANCE) * final)


def last_quarter_change(history: pd.DataFrame, budget: float, *,
                        column: str = "eval_loss") -> float:
    """Relative change of ``column`` from the last evaluation at or before 3/4 of the
    budget to the final one: ``(value_at_3/4 - final) / final``."""
    times = history["time"].to_numpy(dtype=float)
    values = history[column].to_numpy(dtype=float)
    before = values[times <= (1 - BUDGET_FRACTION) * budget]
    if not before.size or not math.isfinite(values[-1]) or values[-1] == 0:
        return math.nan
    return float((before[-1] - values[-1]) / abs(values[-1]))


def choose_configs(runs: pd.DataFrame) -> dict:
    """Each solver's representative: the trial with the lowest median final held-out loss."""
    chosen = {}
    for solver, group in runs.groupby("solver", sort=False):
        medians = group.groupby("trial")["final_loss"].median()
        medians = medians[np.isfinite(medians)]
        if len(medians):
            chosen[solver] = int(medians.idxmin())
    return chosen


def winner(stats: dict) -> dict:
    """The solver whose spread lies entirely below every other's, else no winner.

    ``stats`` maps solver to :func:`spread`'s dict. Returns ``{'winner': solver or None,
    'ranking': solvers by median, 'overlapping': solvers whose spread overlaps the
    best median's solver}``.
    """
    valid = {s: v for s, v in stats.items() if v["n"]}
    ranking = sorted(valid, key=lambda s: valid[s]["median"])
    if len(ranking) < 2:
        return {"winner": None, "ranking": ranking, "overlapping": []}
    best = valid[ranking[0]]
    overlapping = [s for s in ranking[1:] if valid[s]["min"] <= best["max"]]
    return {"winner": None if overlapping else ranking[0], "ranking": ranking,
            "overlapping": overlapping}


def compute_verdict(runs: pd.DataFrame, histories: pd.DataFrame, budget: float) -> dict:
    """The verdict of one problem (see the module docstring for the rules).

    Parameters
    ----------
    runs : DataFrame
        ``compare_runs.csv`` rows (``solver``, ``trial``, ``seed_index``, ``final_loss``,
        ``final_train_loss``, ``final_accuracy``, ``train_time``).
    histories : DataFrame
        ``compare_history.csv`` rows (``solver``, ``trial``, ``seed_index``, ``time``,
        ``eval_loss``, ``train_set_loss``).
    budget : float
        Training seconds per run.
    """
    chosen = choose_configs(runs)
    solvers = {}
    for solver, trial in chosen.items():
        mine = runs[(runs["solver"] == solver) & (runs["trial"] == trial)]
        solvers[solver] = {
            "trial": trial, "params": json.loads(mine["params"].iloc[0])
            if "params" in mine else {},
            **{measure: spread(mine[final]) for measure, (final, _) in MEASURES.items()},
            "accuracy": spread(mine["final_accuracy"]) if "final_accuracy" in mine
            else spread([]),
            "train_time": spread(mine["train_time"]) if "train_time" in mine else spread([]),
        }
    verdict = {"budget": float(budget), "solvers": solvers,
               "verdicts": {m: winner({s: v[m] for s, v in solvers.items()})
                            for m in MEASURES}}
    # Time to target: the best first-order solver's median final held-out loss.
    first_order = [s for s in solvers if is_first_order(s)
                   and math.isfinite(solvers[s]["held-out loss"]["median"])]
    target_solver = min(first_order, key=lambda s: solvers[s]["held-out loss"]["median"],
                        default=None)
    verdict["target_solver"] = target_solver
    verdict["target"] = (solvers[target_solver]["held-out loss"]["median"]
                         if target_solver else math.nan)
    for solver, info in solvers.items():
        curves = run_curves(histories, solver, info["trial"])
        times = [first_time_at_or_below(c, verdict["target"]) for c in curves]
        reached = [t for t in times if math.isfinite(t)]
        info["time_to_target"] = {**spread(reached), "runs": len(times),
                                  "reached": len(reached),
                                  # the median over seeds, a miss counting as infinite
                                  "median_all": float(np.median(times)) if times
                                  else math.nan}
        info["floor_early"] = [reaches_floor_early(c, budget) for c in curves]
    verdict["floor_limited"] = bool(solvers) and all(
        info["floor_early"] and all(info["floor_early"]) for info in solvers.values())
    rule = {"solver": target_solver, "change": math.nan, "holds": False}
    if target_solver:
        changes = [last_quarter_change(c, budget)
                   for c in run_curves(histories, target_solver,
                                    solvers[target_solver]["trial"])]
        changes = [c for c in changes if math.isfinite(c)]
        if changes:
            rule["change"] = float(np.median(changes))
            rule["holds"] = abs(rule["change"]) < BUDGET_CHANGE
    verdict["budget_rule"] = rule
    if "train_time" in runs:
        verdict["end_times"] = {s: (float(g["train_time"].min()), float(g["train_time"].max()))
                                for s, g in runs.groupby("solver", sort=False)}
    return verdict


def _range(stat: dict, digits: int = 4, unit: str = "") -> str:
    if not stat["n"]:
        return "–"
    return (f"{stat['median']:.{digits}g}{unit} [{stat['min']:.{digits}g}-"
            f"{stat['max']:.{digits}g}{unit}]")


def _time_to_target_text(info: dict) -> str:
    ttt = info["time_to_target"]
    if not ttt["reached"]:
        return f"never ({ttt['runs']} runs)"
    text = _range(ttt, 3, " s")
    if ttt["reached"] < ttt["runs"]:
        text += f", reached in {ttt['reached']} of {ttt['runs']} runs"
    return text


def format_verdict(verdict: dict) -> list[str]:
    """Human-readable verdict lines."""
    solvers = verdict["solvers"]
    if not solvers:
        return ["no finished runs"]
    n_seeds = max(info["held-out loss"]["n"] for info in solvers.values())
    lines = [f"each solver's best configuration (lowest median final held-out loss), "
             f"median [min-max] over up to {n_seeds} seeds, {verdict['budget']:g} s budget:"]
    for measure in MEASURES:
        lines.append(f"  final {measure}: " + "; ".join(
            f"{label(s)} {_range(info[measure])}" for s, info in solvers.items()))
    if any(info["accuracy"]["n"] for info in solvers.values()):
        lines.append("  final test accuracy: " + "; ".join(
            f"{label(s)} {_range(info['accuracy'])}" for s, info in solvers.items()))
    for measure in MEASURES:
        result = verdict["verdicts"][measure]
        if measure == "held-out loss" and verdict["floor_limited"]:
            text = (f"floor-limited: every run of every solver was within "
                    f"{FLOOR_TOLERANCE:.0%} of its final held-out loss before "
                    f"{FLOOR_FRACTION:.0%} of the budget; no winner is named")
        elif result["winner"]:
            text = (f"{label(result['winner'])} wins (its spread lies below every other "
                    "solver's)")
        elif len(result["ranking"]) < 2:
            text = "no winner (fewer than two solvers)"
        else:
            text = (f"no winner: the spreads of {label(result['ranking'][0])} (lowest "
                    "median) and " + ", ".join(label(s) for s in result["overlapping"])
                    + " overlap")
        lines.append(f"verdict on the {measure}: {text}")
    if verdict["target_solver"]:
        lines.append(f"time to target (the best first-order solver "
                     f"{label(verdict['target_solver'])}'s median final held-out loss "
                     f"{verdict['target']:.5g}; median [min-max] over the runs that "
                     "reached it): " + "; ".join(
                         f"{label(s)} {_time_to_target_text(info)}"
                         for s, info in solvers.items()))
        rule = verdict["budget_rule"]
        change = rule["change"]
        lines.append(f"budget rule ({label(rule['solver'])}'s held-out loss changes by "
                     f"< {BUDGET_CHANGE:.0%} over the last {BUDGET_FRACTION:.0%} of the "
                     f"budget): " + ("not measurable" if not math.isfinite(change) else
                                     f"{'holds' if rule['holds'] else 'FAILS'} "
                                     f"({100 * change:.1f} %)"))
    ends = verdict.get("end_times") or {}
    if ends:
        lines.append("runs ended (training seconds; training stops after the first update "
                     "that ends past the budget): " + ", ".join(
                         f"{label(s)} {lo:.1f}-{hi:.1f} s" for s, (lo, hi) in ends.items()))
    return lines


# -- tables --------------------------------------------------------------------------------
def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in sorted(params.items()))


def results_table(runs: pd.DataFrame, histories: pd.DataFrame, target: float) -> pd.DataFrame:
    """One row per solver and configuration: medians and spreads over its seeds."""
    rows = []
    for (solver, trial), group in runs.groupby(["solver", "trial"], sort=False):
        curves = run_curves(histories, solver, trial)
        times = [first_time_at_or_below(c, target) for c in curves] if math.isfinite(
            target) else []
        row = {"solver": solver, "rank": int(group["rank"].iloc[0]), "trial": int(trial),
               "seeds": len(group), "tune_val_loss": float(group["tune_val_loss"].iloc[0])}
        for name, column in (("held_out", "final_loss"), ("train", "final_train_loss"),
                             ("accuracy", "final_accuracy"), ("updates", "n_updates")):
            stat = spread(group[column])
            row.update({f"{name}_{k}": stat[k] for k in ("median", "min", "max")})
        reached = spread([t for t in times if math.isfinite(t)])
        row.update({"time_to_target_median": reached["median"],
                    "time_to_target_reached": f"{reached['n']}/{len(times)}",
                    "params": group["params"].iloc[0]})
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(table: pd.DataFrame, problem, verdict: dict) -> str:
    """The per-configuration table, solvers in registry order, best configuration first."""
    classifier = problem.is_classifier
    header = ["Solver", "#", "trial", "search val. loss", "held-out loss", "training loss",
              *(["test acc."] if classifier else []), "time to target", "updates",
              "configuration"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]

    def cell(row, name, digits=4):
        return _range({"median": row[f"{name}_median"], "min": row[f"{name}_min"],
                       "max": row[f"{name}_max"], "n": row["seeds"]}, digits)

    for row in table.sort_values(["solver", "rank"]).to_dict("records"):
        chosen = verdict["solvers"].get(row["solver"], {}).get("trial") == row["trial"]
        ttt = row["time_to_target_median"]
        lines.append("| " + " | ".join([
            label(row["solver"]) + (" (chosen)" if chosen else ""), str(row["rank"]),
            str(row["trial"]), f"{row['tune_val_loss']:.4g}", cell(row, "held_out"),
            cell(row, "train"), *([cell(row, "accuracy")] if classifier else []),
            ("–" if not math.isfinite(ttt) else f"{ttt:.3g} s")
            + f" ({row['time_to_target_reached']})",
            f"{row['updates_median']:.0f}", _params_text(json.loads(row["params"]))]) + " |")
    legend = ("Median [min-max] over the seeds of each configuration. search val. loss: "
              "the trial's validation loss in the search; held-out loss: final loss on the "
              "full test set; training loss: final loss on the full training set (the "
              "optimiser's objective), both after retraining on all training rows for "
              "the comparison budget; time to target: median training seconds to reach "
              "the target (runs that reached it / runs); (chosen): the solver's "
              "configuration used in the verdict.")
    return "\n".join(lines) + "\n\n" + legend + "\n"


# -- running --------------------------------------------------------------------------------
def plan_runs(out_dir, solvers, top_k: int, seeds: int, problem_name: str) -> list[dict]:
    """Every run: each solver's ``top_k`` best trials, each with ``seeds`` seeds."""
    plan = []
    for solver in solvers:
        configs = best_configs(out_dir, solver, top_k)
        if not len(configs):
            raise SystemExit(f"no search results in {out_dir} for {solver}: run `python -m "
                             f"benchmarks tune --problem {problem_name}` first.")
        for rank, row in enumerate(configs.to_dict("records"), start=1):
            for seed_index in range(seeds):
                plan.append({"solver": solver, "rank": rank, "trial": int(row["trial"]),
                             "seed_index": seed_index, "tune_val_loss": float(row["val_loss"]),
                             "params": params_of(row, solver)})
    return plan


def _key(run) -> tuple:
    return (run["solver"], int(run["trial"]), int(run["seed_index"]))


def run_one(problem, data, run: dict, *, max_time: float, interval: float,
            train_eval_rows=None, seed: int = 0, device: str = "auto"):
    """Train one planned run; returns ``(row of compare_runs.csv, history_)``."""
    # Same seed for every solver and configuration at a given seed index: the solvers
    # start from the same weights (paired comparison).
    run_seed = seed + 100_000 + int(run["seed_index"])
    X_fit, y_fit = data.X_full, data.y_full
    training_loss = TrainingSetLoss(problem.loss, X_fit, y_fit, limit=train_eval_rows)
    estimator = problem.make_estimator(run["solver"], max_time=max_time,
                                       eval_interval=interval, device=device,
                                       random_state=run_seed, callbacks=[training_loss],
                                       **run["params"])
    eval_set = data.X_test if data.y_test is None else (data.X_test, data.y_test)
    wall = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        if y_fit is None:
            estimator.fit(X_fit, eval_set=eval_set)
        else:
            estimator.fit(X_fit, y_fit, eval_set=eval_set)
    history = estimator.history_
    final = history.iloc[-1]
    final_train = (float(final["train_set_loss"]) if train_eval_rows is None
                   or train_eval_rows >= len(X_fit) else problem.loss(estimator, X_fit, y_fit))
    row = {**run, "params": json.dumps(run["params"], sort_keys=True),
           "final_loss": float(final["eval_loss"]),
           "best_loss": float(history["eval_loss"].min()),
           "final_train_loss": final_train,
           "final_accuracy": float(final["eval_score"]) if problem.is_classifier else math.nan,
           "best_accuracy": float(history["eval_score"].max()) if problem.is_classifier
           else math.nan,
           "train_time": estimator.train_time_, "n_updates": estimator.n_updates_,
           "n_evaluations": len(history), "stop_reason": estimator.stop_reason_,
           "seed": run_seed, "wall_seconds": round(time.time() - wall, 2),
           "load_avg": round(os.getloadavg()[0], 2)}
    return row, history


def run_compare(problem, data, out_dir, budget, *, solvers=None, seed: int = 0,
                device: str = "auto", fresh: bool = False, progress=log) -> dict:
    """Retrain the best configurations with several seeds, then tables, figures, verdict.

    ``solvers`` defaults to every solver that has search results in ``out_dir``.
    """
    out_dir = Path(out_dir)
    if solvers is None:
        solvers = [s for s in registered_solvers() if (out_dir / f"tune_{s}.csv").is_file()]
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
                    "train_eval_rows": budget.train_eval_rows,
                    "n_train": len(data.X_full), "n_test": len(data.X_test), "seed": seed},
                   fresh=fresh)
    plan = plan_runs(out_dir, solvers, budget.top_k, budget.seeds, problem.name)
    finished = {_key(r) for r in run_log.read().to_dict("records")}
    todo = [run for run in plan if _key(run) not in finished]
    progress(f"compare {problem.name}: {len(plan)} runs of {max_time:g} s ("
             f"{', '.join(label(s) for s in solvers)}; {budget.top_k} configuration(s) x "
             f"{budget.seeds} seed(s); test set every {interval:.3g} s), "
             f"{len(plan) - len(todo)} already done; {data.summary()}")
    start = time.time()
    for i, run in enumerate(todo):
        row, history = run_one(problem, data, run, max_time=max_time, interval=interval,
                               train_eval_rows=budget.train_eval_rows, seed=seed,
                               device=device)
        for record in history.to_dict("records"):
            history_log.append({**{k: run[k] for k in ("solver", "rank", "trial",
                                                        "seed_index")},
                                **{k: v for k, v in record.items() if k in HISTORY_COLUMNS}})
        run_log.append(row)
        left = len(todo) - i - 1
        eta = (time.time() - start) / (i + 1) * left
        progress(f"compare {problem.name}: {label(run['solver'])} #{run['rank']} (trial "
                 f"{run['trial']}, seed {run['seed_index'] + 1}/{budget.seeds}) final "
                 f"held-out loss {row['final_loss']:.5g}, training loss "
                 f"{row['final_train_loss']:.5g}"
                 + (f", accuracy {row['final_accuracy']:.4f}" if problem.is_classifier
                    else "")
                 + f" after {row['n_updates']} updates / {row['train_time']:.1f} s; "
                 f"{left} left, ETA {eta / 60:.1f} min")
    return summarize_compare(problem, data, out_dir, budget, plan=plan, progress=progress)


def load_compare(out_dir, plan=None):
    """The runs and histories of the planned runs (runs of other configurations dropped)."""
    out_dir = Path(out_dir)
    runs = CsvLog(out_dir / "compare_runs.csv", RUN_COLUMNS).read()
    histories = CsvLog(out_dir / "compare_history.csv", HISTORY_COLUMNS).read()
    if plan is not None:
        ranks = {_key(run): run["rank"] for run in plan}
        runs = runs[[_key(r) in ranks for r in runs.to_dict("records")]].copy()
        runs = runs.drop_duplicates(RUN_KEY, keep="last")
        runs["rank"] = [ranks[_key(r)] for r in runs.to_dict("records")]
        histories = histories[[_key(r) in ranks for r in histories[RUN_KEY].to_dict(
            "records")]].copy()
        histories["rank"] = [ranks[_key(r)] for r in histories[RUN_KEY].to_dict("records")]
    order = {s: i for i, s in enumerate(registered_solvers())}
    runs = runs.sort_values(["solver", "rank", "seed_index"],
                            key=lambda c: c.map(order) if c.name == "solver" else c)
    return runs, histories


def summarize_compare(problem, data, out_dir, budget, *, plan=None, progress=log) -> dict:
    """Tables, verdict and figures from the compare logs; prints the table and verdict."""
    from benchmarks.plotting import plot_compare

    out_dir = Path(out_dir)
    runs, histories = load_compare(out_dir, plan)
    if not len(runs):
        raise SystemExit(f"no compare runs in {out_dir}")
    budget_seconds = budget.compare_time
    verdict = compute_verdict(runs, histories, budget_seconds)
    table = results_table(runs, histories, verdict["target"])
    table.to_csv(out_dir / "table.csv", index=False)
    markdown = markdown_table(table, problem, verdict)
    lines = format_verdict(verdict)
    rows_note = ("" if budget.train_eval_rows is None else
                 f"; training-loss curves on a fixed sample of {budget.train_eval_rows} "
                 "training rows, final training loss on all of them")
    header = [f"{problem.title} — {data.summary()}",
              f"network {problem.network(data)}; "
              f"{budget_seconds:g} s training budget per run{rows_note}"]
    (out_dir / "table.md").write_text(
        "\n".join(f"_{h}_  " for h in header) + "\n\n" + markdown)
    (out_dir / "verdict.txt").write_text("\n".join(header + lines) + "\n")
    (out_dir / "verdict.json").write_text(json.dumps(verdict, indent=2, default=str) + "\n")
    figures = plot_compare(out_dir, problem, runs, histories, budget_seconds, verdict,
                           note=data.note)
    progress(f"compare {problem.name}: results in {out_dir}")
    print("\n".join(header), flush=True)
    print(markdown, flush=True)
    print("\n".join(lines), flush=True)
    return {"runs": runs, "histories": histories, "table": table, "verdict": verdict,
            "lines": lines, "figures": figures}
