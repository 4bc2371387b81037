"""``quick``: every experiment end to end on the ``digits`` problem with tiny budgets.

Search (every registered solver) -> retrain the best configurations on the test set (comparison
table, verdict, learning-curve figures) -> the batch-size experiments -> the time-budget
check -> ``REPORT.md``. Budgets: :data:`benchmarks.budgets.QUICK` (about 1-2 minutes
on 2 CPU cores). Results go to ``<out>/digits``, ``<out>/time_budget`` and
``<out>/REPORT.md``; by default ``<out>`` is ``benchmarks/results/_scratch/quick``
(ignored by git) and a previous quick run there is replaced.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

from benchmarks.batch_size import run_batch_size
from benchmarks.budgets import QUICK
from benchmarks.compare import run_compare
from benchmarks.problems import get_problem
from benchmarks.records import log
from benchmarks.report import write_report
from benchmarks.solvers import label, registered_solvers
from benchmarks.time_budget import run_time_budget
from benchmarks.tune import run_tune


def solver_table(runs) -> str:
    """One line per solver: final test losses of all its retrained runs."""
    lines = [f"{'solver':<13}{'runs':>5}{'best':>11}{'median':>11}{'worst':>11}"
             f"{'updates':>9}  best configuration"]
    for solver in registered_solvers():
        sub = runs[runs["solver"] == solver].sort_values("final_loss")
        if not len(sub):
            continue
        losses = sub["final_loss"].astype(float).tolist()
        params = json.loads(sub["params"].iloc[0])
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in params.items())
        lines.append(f"{label(solver):<13}{len(sub):>5}{min(losses):>11.5f}"
                     f"{statistics.median(losses):>11.5f}{max(losses):>11.5f}"
                     f"{int(statistics.median(sub['n_updates'])):>9}  {shown}")
    return "\n".join(lines)


def run_quick(out, budget=QUICK, *, data_home=None, seed: int = 0, device: str = "auto",
              fresh: bool = True, time_budget: bool = True, progress=log) -> dict:
    """Run the whole suite on digits; returns the compare result and the timing."""
    start = time.time()
    out = Path(out)
    problem = get_problem("digits")
    folder = out / problem.name
    if fresh and folder.exists():
        progress(f"quick: replacing the previous quick results in {folder}")
        shutil.rmtree(folder)
    data = problem.load(data_home)
    run_tune(problem, data, folder, budget, seed=seed, device=device, fresh=fresh,
             progress=progress)
    result = run_compare(problem, data, folder, budget, seed=seed, device=device,
                         fresh=fresh, progress=progress)
    run_batch_size(problem, data, folder, budget, seed=seed, device=device, fresh=fresh,
                   progress=progress)
    timing = None
    if time_budget:
        timing = run_time_budget(out / "time_budget", budget, problem_name="digits",
                                 seed=seed, device=device, progress=progress)
    report = write_report(out, title="skkfac quick benchmark (digits)")
    elapsed = time.time() - start
    print("\n=== Solver comparison: digits autoencoder, "
          f"{budget.compare_time:g} s per run, final test loss (per-pixel MSE) ===",
          flush=True)
    print(solver_table(result["runs"]), flush=True)
    print("\n".join(result["lines"]), flush=True)
    if timing is not None:
        print(f"max_time check (does training stop when its time budget is spent?): "
              f"{'holds' if timing['criterion_holds'] else 'FAILS'} (median train_time_ "
              f"{timing['median_train_time']:.3f} s for max_time {timing['max_time']:g} s; "
              "allowed: 5 % plus one update)", flush=True)
    print(f"\nquick benchmark finished in {elapsed:.0f} s. Results are in {out}/:",
          flush=True)
    print(written_files(out), flush=True)
    return {**result, "timing": timing, "elapsed": elapsed, "report": report}


def written_files(out) -> str:
    """The report and every figure under ``out``, one per line (what a newcomer opens)."""
    out = Path(out)
    files = [out / "REPORT.md", *sorted(out.rglob("*.png"))]
    return "\n".join(f"  {path}" for path in files if path.is_file())
