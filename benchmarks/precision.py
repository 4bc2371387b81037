"""``precision``: held-out loss at equal training time, float32 against bf16-mixed.

``python -m benchmarks precision --data-home DIR [--problems mnist_ae] [--budget 60]
[--seeds 1] [--threads 2]`` trains every registered solver at its defaults on each
problem for ``--budget`` seconds, once with ``precision='float32'`` and once with
``'bf16-mixed'`` (alternating, so that a drift of the machine's speed affects both
alike), and prints the test score and the number of updates. Timed: run it alone.
Writes ``<out>/precision/<problem>.txt`` with the machine header.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

PRECISIONS = ("float32", "bf16-mixed")


def run_precision(problem_name: str, *, data_home=None, budget: float = 60.0,
                  seeds: int = 1, threads: int = 2, layers=None, progress=print) -> list[str]:
    """One line per solver, seed and precision: test score and updates."""
    from dataclasses import replace

    from benchmarks.problems import get_problem
    from benchmarks.solvers import label, registered_solvers

    problem = get_problem(problem_name)
    if layers:
        problem = replace(problem, layers=tuple(layers))
    data = problem.load(data_home)
    lines = []
    for solver in registered_solvers():
        for seed in range(seeds):
            for precision in PRECISIONS:
                estimator = problem.make_estimator(solver, max_time=budget,
                                                   random_state=seed, n_threads=threads,
                                                   precision=precision)
                score, kind = problem.test_score(problem.fit_all(estimator, data), data)
                line = (f"{problem_name} {label(solver):<13} seed {seed} {precision:<10} "
                        f"{kind} {score:.5g}  updates {estimator.n_updates_}  "
                        f"load {os.getloadavg()[0]:.2f}")
                progress(line)
                lines.append(line)
    return lines


def main(argv=None) -> int:
    from benchmarks.defaults_report import machine_header

    parser = argparse.ArgumentParser(prog="python -m benchmarks precision",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data-home", default=os.environ.get("SKKFAC_DATA"))
    parser.add_argument("--problems", nargs="+", default=["mnist_ae"])
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks") / "results")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    for name in args.problems:
        load = os.getloadavg()
        lines = run_precision(name, data_home=args.data_home, budget=args.budget,
                              seeds=args.seeds, threads=args.threads)
        header = machine_header(["precision", *(argv or [])], args.threads, load)
        path = args.out / "precision" / f"{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"# {k}: {v}\n" for k, v in header.items())
                        + "\n".join(lines) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
