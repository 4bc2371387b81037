"""K-FAC with ``precondition_precision='full'`` against ``'bfloat16'`` at equal training time.

The MNIST autoencoder with K-FAC's defaults (60 s); CIFAR-10 (120 s), the regression
problem and protein (60 s each) with the protocol search's first-ranked K-FAC
configuration (rank 1 in ``benchmarks/results/<problem>/compare_runs.csv``; the one the
comparison then chose, except on protein, where it chose rank 2); the precisions
alternate seed by seed so that a drift of the machine's speed affects both alike. Prints
the test loss (per-pixel MSE; cross-entropy and accuracy for CIFAR-10) and the number of
updates.

Run: ``python -m benchmarks bf16-precondition [mnist_ae|cifar10|regression|protein ...]
[--seeds 2 3] [--data-home DIR]`` (on 2 cores about 7 minutes for the autoencoder, 9 for
CIFAR-10, 5 each for the regressions); its output is
``benchmarks/results/kfac/bf16_precondition.txt``.
"""

import argparse
import os
import warnings

import torch

from benchmarks.problems import get_problem

SETTINGS = {
    # problem: (training seconds, seeds, K-FAC parameters)
    "mnist_ae": (60.0, (0, 1, 2), {}),
    "cifar10": (120.0, (0, 1), {"batch_size": 2466, "damping": 0.05497384814922122,
                                "learning_rate_init": 0.8309555345959789,
                                "momentum_max": 0.9496485092284881,
                                "momentum_rate": 1.3859152724432442}),
    "regression": (60.0, (0, 1), {"batch_size": 896, "damping": 1.0602270967184053,
                                  "learning_rate_init": 1.1570157443449136,
                                  "momentum_max": 0.2249121945672542,
                                  "momentum_rate": 2.875749960963835}),
    "protein": (60.0, (0, 1), {"batch_size": 1504, "damping": 0.08217327018081888,
                               "learning_rate_init": 1.1574677862028504,
                               "momentum_max": 0.9670954292366367,
                               "momentum_rate": 1.0901291100952797}),
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks bf16-precondition",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("problems", nargs="*", help=f"of {sorted(SETTINGS)} (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds to run (default: the problem's)")
    parser.add_argument("--data-home", default=os.environ.get("SKKFAC_DATA"))
    args = parser.parse_args(argv)
    unknown = set(args.problems) - set(SETTINGS)
    if unknown:
        parser.error(f"unknown problems {sorted(unknown)}; known: {sorted(SETTINGS)}")
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    for name in args.problems or list(SETTINGS):
        budget, seeds, params = SETTINGS[name]
        seeds = args.seeds or seeds
        problem = get_problem(name)
        data = problem.load(args.data_home)
        print(f"# {name}: {budget:g} s of training, K-FAC {params or 'defaults'}", flush=True)
        for seed in seeds:
            for precision in ("full", "bfloat16"):
                estimator = problem.make_estimator(
                    "kfac", max_time=budget, random_state=seed,
                    precondition_precision=precision, **params)
                estimator.fit(data.X_train, *(() if data.y_train is None else (data.y_train,)))
                loss = problem.loss(estimator, data.X_test, data.y_test)
                accuracy = problem.accuracy(estimator, data.X_test, data.y_test)
                shown = "" if accuracy != accuracy else f" accuracy {accuracy:.4f}"
                print(f"{name} seed {seed} {precision:<8} test loss {loss:.4g}{shown} "
                      f"updates {estimator.n_updates_} stop {estimator.stop_reason_} "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
