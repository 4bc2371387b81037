"""K-FAC against EKFAC (``damping_scheme='ekfac'``) at equal training time and equal updates.

Trains each problem's benchmark network (:mod:`benchmarks.problems`) with K-FAC's
defaults (factored Tikhonov damping), with ``damping_scheme='eigen'`` (K-FAC's eigenbasis
and exact Tikhonov damping: separates the basis from the correction) and with EKFAC (the
same basis, eigenvalues re-estimated from per-example gradients); every other parameter
is the estimator default. Two comparisons, each over ``--seeds`` seeds:

* equal time: trained on the whole training set for ``--budget`` seconds, held-out loss on
  the whole test set at the end (depends on the machine and its load);
* equal updates: exactly ``--updates`` updates, made as one epoch over that many batches
  of the default size (1000) drawn at random from the training set, which is what the
  first ``--updates`` updates of a full run see; no time limit, so the comparison does
  not depend on the load. Held-out loss after every ``--eval-every`` updates on the first
  ``--eval-rows`` test rows, and at the end on the whole test set.

    python -m benchmarks ekfac --data-home /work/shared/data --budget 20 --updates 50 \\
        --seeds 2 --threads 1
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
import warnings

import numpy as np
import torch

from benchmarks.problems import get_problem

VARIANTS = {
    "K-FAC (defaults, tikhonov)": {},
    "K-FAC, damping_scheme='eigen'": {"damping_scheme": "eigen"},
    "EKFAC, damping_scheme='ekfac'": {"damping_scheme": "ekfac"},
}
BASELINE = "K-FAC (defaults, tikhonov)"
#: Rows per update of the equal-updates comparison (K-FAC's ``batch_size='auto'`` on the
#: MNIST autoencoder; passed explicitly, the automatic size depends on the network).
DEFAULT_BATCH = 1000


def fit(problem, X, y, eval_set=None, **params):
    """The problem's K-FAC estimator fitted on ``X`` (``y`` None: autoencoder)."""
    estimator = problem.make_estimator("kfac", **params)
    if y is None:
        return estimator.fit(X, eval_set=None if eval_set is None else eval_set[0])
    return estimator.fit(X, y, eval_set=eval_set)


def median_and_seeds(values) -> str:
    return f"{statistics.median(values):.5f} [{' '.join(f'{v:.4f}' for v in values)}]"


def equal_time(problem, data, args) -> None:
    print(f"\nequal time: {problem.loss_name} on all {len(data.X_test)} test rows after "
          f"{args.budget:g} s of training on all {len(data.X_full)} training rows; "
          f"median [per seed]; cost = seconds per update relative to {BASELINE!r}; "
          "stats = share of the training time in the statistics phase")
    results = {label: [] for label in VARIANTS}
    labels = list(VARIANTS)
    for seed in range(args.seeds):
        # Interleaved, in an order rotated per seed, so that a drift of the machine's load
        # does not fall on one variant.
        for label in labels[seed % len(labels):] + labels[:seed % len(labels)]:
            estimator = fit(problem, data.X_full, data.y_full, max_time=args.budget,
                            random_state=seed, **VARIANTS[label])
            train_time = estimator.train_time_
            results[label].append((
                problem.loss(estimator, data.X_test, data.y_test), estimator.n_updates_,
                train_time / max(estimator.n_updates_, 1),
                estimator.solver_.phase_times["statistics"] / train_time))
    baseline_cost = statistics.median(row[2] for row in results[BASELINE])
    print(f"  {'variant':<31} {'loss':<30} {'updates':>7} {'cost':>6} {'stats':>6}")
    for label, rows in results.items():
        losses, updates, costs, shares = zip(*rows)
        print(f"  {label:<31} {median_and_seeds(losses):<30} "
              f"{int(statistics.median(updates)):>7} "
              f"{statistics.median(costs) / baseline_cost:>5.2f}x "
              f"{statistics.median(shares):>6.0%}", flush=True)


def equal_updates(problem, data, args) -> None:
    n_rows = args.updates * DEFAULT_BATCH
    if n_rows > len(data.X_full):
        raise ValueError(f"--updates {args.updates} needs {n_rows} training rows, "
                         f"{problem.name} has {len(data.X_full)}")
    eval_rows = min(args.eval_rows, len(data.X_test))
    eval_set = (data.X_test[:eval_rows],
                None if data.y_test is None else data.y_test[:eval_rows])
    print(f"\nequal updates: {args.updates} updates of {DEFAULT_BATCH} random training rows "
          f"each; {problem.loss_name} on the first {eval_rows} test rows every "
          f"{args.eval_every} updates, and on all {len(data.X_test)} at the end")
    finals = {label: [] for label in VARIANTS}
    for seed in range(args.seeds):
        rows = np.random.RandomState(seed).permutation(len(data.X_full))[:n_rows]
        y = None if data.y_full is None else data.y_full[rows]
        print(f"  seed {seed}")
        for label, params in VARIANTS.items():
            estimator = fit(problem, data.X_full[rows], y, eval_set, max_iter=1,
                            batch_size=DEFAULT_BATCH, random_state=seed,
                            eval_every=args.eval_every, **params)
            if estimator.n_updates_ != args.updates:
                raise RuntimeError(f"{label}: {estimator.n_updates_} updates were made")
            finals[label].append(problem.loss(estimator, data.X_test, data.y_test))
            history = estimator.history_
            curve = ", ".join(f"{u}:{v:.4f}" for u, v in zip(history["update"],
                                                               history["eval_loss"]))
            print(f"    {label:<31} {curve}", flush=True)
    print(f"  after {args.updates} updates, all {len(data.X_test)} test rows, median "
          "[per seed]:")
    for label, values in finals.items():
        print(f"    {label:<31} {median_and_seeds(values)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--problems", nargs="+", default=["mnist_ae", "regression"])
    parser.add_argument("--budget", type=float, default=20.0,
                        help="training seconds per equal-time run (0: skip)")
    parser.add_argument("--updates", type=int, default=50,
                        help="updates per equal-updates run (0: skip)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-rows", type=int, default=2000,
                        help="test rows of the learning curves (the final loss uses all)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    print(f"# command: python -m benchmarks ekfac {shlex.join(sys.argv[1:])}")
    print(f"# started {time.strftime('%Y-%m-%d %H:%M:%S')}, {torch.get_num_threads()} torch "
          f"thread(s), {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())} (1/5/15 min)")
    for name in args.problems:
        problem = get_problem(name)
        data = problem.load(args.data_home)
        print(f"\n== {problem.title} ({name}): {data.dataset}, network "
              f"{problem.architecture(data.X_train.shape[1])}")
        if data.note:
            print(f"NOTE: {data.note}")
        if args.budget > 0:
            equal_time(problem, data, args)
        if args.updates > 0:
            equal_updates(problem, data, args)
    print(f"\n# finished {time.strftime('%Y-%m-%d %H:%M:%S')}, load average "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
