"""Which K-FAC damping scheme trains fastest? Final held-out loss after a time budget.

Runs each damping/step-size configuration of K-FAC (and SGD-Nesterov as the reference) on
the study's MNIST autoencoder and on the UCI regression stand-in, for the same training
time, and prints the held-out loss at the end of the budget (median over seeds). This is
the measurement behind the defaults of :class:`skkfac.KFAC`.

    python -m benchmarks damping --data-home /work/shared/data --budget 30 --seeds 1
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import numpy as np
import torch

from skkfac import KFACAutoencoder, KFACRegressor
from skkfac.datasets import load_mnist, load_uci_regression

CONFIGURATIONS = {
    "tikhonov + adaptive step + LM (default)": {},
    "eigen + adaptive step + LM": {"damping_scheme": "eigen"},
    "tikhonov + adaptive step, fixed λ": {"adapt_damping": False},
    "tikhonov + fixed lr 0.3 + LM + KL clip": {"adaptive_step": False,
                                               "learning_rate_init": 0.3, "kl_clip": 1e-2},
    "study: max_norm, lr 0.18, batch 9543": {
        "damping_scheme": "max_norm", "adaptive_step": False, "damping": 1e-3,
        "learning_rate_init": 0.1809, "batch_size": 9543, "momentum_rate": 0.5279,
        "momentum_max": 0.6066, "curvature_batch_size": None},
    "default, empirical Fisher": {"fisher": "empirical"},
    "SGD-Nesterov (study's Table 1 / 2 best)": {"solver": "sgd"},
}
SGD_SETTINGS = {
    "mnist_ae": {"learning_rate_init": 1.2967, "batch_size": 470, "momentum": 0.6931},
    "regression": {"learning_rate_init": 0.006, "batch_size": 588, "momentum": 0.9019},
}


def problems(data_home):
    """(name, estimator factory, training arrays, test arrays) per problem."""
    mnist = load_mnist(data_home)
    yield "mnist_ae", KFACAutoencoder, (mnist.X_train,), (mnist.X_test,)
    uci = load_uci_regression("keggundirected", data_home)

    def regressor(**params):
        return KFACRegressor(hidden_layer_sizes=(500, 750, 500, 250, 100), **params)

    yield "regression", regressor, (uci.X_train, uci.y_train), (uci.X_test, uci.y_test)


def held_out_mse(model, test) -> float:
    if len(test) == 1:
        return -model.score(test[0])
    return float(np.mean((model.predict(test[0]) - test[1]) ** 2))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--budget", type=float, default=30.0, help="training seconds per run")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=None, help="problems to run")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    for name, make_estimator, train, test in problems(args.data_home):
        if args.only and name not in args.only:
            continue
        print(f"\n{name}: held-out MSE after {args.budget:g} s of training "
              f"(median of {args.seeds} seed(s)); updates made")
        for label, params in CONFIGURATIONS.items():
            params = dict(params)
            if params.get("solver") == "sgd":
                params.update(SGD_SETTINGS[name])
            losses, updates = [], []
            for seed in range(args.seeds):
                model = make_estimator(max_time=args.budget, max_iter=10**6, tol=0.0,
                                       early_stopping=False,
                                       random_state=seed,
                                       n_threads=torch.get_num_threads(), **params)
                model.fit(*train)
                losses.append(held_out_mse(model, test))
                updates.append(model.n_updates_)
            print(f"  {label:<44} {statistics.median(losses):.5f}   "
                  f"{int(statistics.median(updates)):>6}")


if __name__ == "__main__":
    main()
