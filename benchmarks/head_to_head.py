"""K-FAC against SGD-Nesterov and Adam on the MNIST autoencoder at equal training time.

Trains ``KFACAutoencoder`` with its defaults, with ``solver='sgd'`` (the study's Table 1
settings, and the best settings of our own search) and with ``solver='adam'`` (the usual
learning rate 1e-3, batch 256) for the same budget, with the
whole test set evaluated every ``budget/12`` training seconds, and prints the learning
curves, the final per-pixel test MSE and when K-FAC first reached each first-order run's final loss.

    python -m benchmarks head-to-head --data-home /work/shared/data --budget 60
"""

from __future__ import annotations

import argparse
import warnings

import torch

from skkfac import KFACAutoencoder
from skkfac.datasets import load_mnist

RUNS = {
    "K-FAC (defaults)": {},
    "SGD, study's Table 1 best": {"solver": "sgd", "learning_rate_init": 1.2967,
                                  "batch_size": 470, "momentum": 0.6931},
    "SGD, our search's best": {"solver": "sgd", "learning_rate_init": 0.1929,
                               "batch_size": 32, "momentum": 0.99},
    "Adam, lr 1e-3, batch 256": {"solver": "adam", "learning_rate_init": 1e-3,
                                 "batch_size": 256},
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    mnist = load_mnist(args.data_home)
    print(f"MNIST autoencoder, {args.budget:g} s of training, "
          f"{torch.get_num_threads()} torch thread(s)")
    curves = {}
    for label, params in RUNS.items():
        ae = KFACAutoencoder(max_time=args.budget, max_iter=10**6, tol=0.0, random_state=0,
                             early_stopping=False,
                             eval_interval=args.budget / 12,
                             n_threads=torch.get_num_threads(), **params)
        ae.fit(mnist.X_train, eval_set=mnist.X_test)
        curves[label] = ae.history_
        points = ", ".join(f"{t:.0f}s {v:.4f}" for t, v in
                           zip(ae.history_["time"], ae.history_["eval_loss"]))
        print(f"{label:<28} final {-ae.score(mnist.X_test):.5f} after {ae.n_updates_} "
              f"updates | {points}", flush=True)
    kfac = curves["K-FAC (defaults)"]
    for label, history in curves.items():
        if not label.startswith("K-FAC"):
            target = history["eval_loss"].iloc[-1]
            reached = kfac[kfac["eval_loss"] <= target]
            when = (f"{reached['time'].iloc[0]:.1f} s "
                    f"({100 * reached['time'].iloc[0] / args.budget:.0f} % of the budget)"
                    if len(reached) else "never")
            print(f"K-FAC reached the final loss of '{label}' ({target:.5f}) at: {when}")


if __name__ == "__main__":
    main()
