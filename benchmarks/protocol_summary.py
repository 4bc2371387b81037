"""K-FAC's rows of the benchmark protocol rerun on later package code, against the protocol.

For ``PROBLEM`` in ``OUT`` (a ``python -m benchmarks compare --solver kfac`` output folder
made from the protocol's search results), prints the protocol's chosen K-FAC
configuration's runs, their median final held-out loss next to the protocol's, and the
time each run first reached the protocol's target (the best first-order solver's median
final held-out loss), next to the protocol's median.

    python -m benchmarks protocol-summary PROBLEM OUT

(``benchmarks/results/kfac/protocol_kfac_rerun/`` holds what it printed.)
"""

import argparse
import json

import numpy as np
import pandas as pd

from benchmarks.compare import first_time_at_or_below
from benchmarks.trials import run_curves

COLUMNS = ["trial", "seed_index", "final_loss", "final_train_loss", "n_updates",
           "train_time", "load_avg"]


def summarise(problem: str, out: str) -> None:
    with open(f"benchmarks/results/{problem}/verdict.json") as file:
        protocol = json.load(file)
    kfac = protocol["solvers"]["kfac"]
    trial, target = kfac["trial"], protocol["target"]
    runs = pd.read_csv(f"{out}/{problem}/compare_runs.csv")
    history = pd.read_csv(f"{out}/{problem}/compare_history.csv")
    mine = runs[runs["trial"] == trial]
    print(mine[COLUMNS].to_string(index=False))
    print(f"median final held-out loss {np.median(mine['final_loss']):.5g}; "
          f"protocol {kfac['held-out loss']['median']:.5g}")
    times = [first_time_at_or_below(c, target) for c in run_curves(history, "kfac", trial)]
    print(f"time to {protocol['target_solver']}'s median final loss {target:.5g}: "
          f"{[round(t, 1) for t in times]}, median {np.median(times):.1f} s of "
          f"{protocol['budget']:g} (protocol: {kfac['time_to_target']['median']:.1f} s)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks protocol-summary",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("problem", help="a problem with protocol results, e.g. mnist_ae")
    parser.add_argument("out", help="the rerun's compare output folder")
    args = parser.parse_args(argv)
    summarise(args.problem, args.out)


if __name__ == "__main__":
    main()
