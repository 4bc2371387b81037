"""The study's K-FAC rule (max_norm, fixed step, no rejection) with and without biases.

On the regression problem (keggundirected stand-in, the study's Table 2 network and
hyperparameters except the learning rate and the damping shift): does leaving out the
bias, as the study did, make its update rule train at its learning rate 0.0392?
Run: ``SKKFAC_DATA=DIR PYTHONPATH=. python benchmarks/results/kfac/study_rule_bias.py``
(about 4 minutes on 2 cores); its output is ``study_rule_bias.txt`` next to this file.
``... study_rule_bias.py mnist_ae`` asks the same of the autoencoder at the study's
Table 1 settings (its learning rate 0.1809 only; about 2 minutes).
"""

import itertools
import os
import sys

import torch
from torch import nn

from benchmarks.problems import get_problem
from skkfac import KFAC

#: Per problem: hidden layers, the study's batch size, m_rate and m_max (Tables 1-2), and
#: the learning rates tried (the study's first).
SETTINGS = {
    "regression": {"hidden": (500, 750, 500, 250, 100), "batch_size": 13869,
                   "momentum_rate": 1.1173, "momentum_max": 0.7309,
                   "lrs": (0.0392, 0.01, 0.003)},
    "mnist_ae": {"hidden": (1000, 500, 250, 30, 250, 500, 1000), "batch_size": 9543,
                 "momentum_rate": 0.5279, "momentum_max": 0.6066, "lrs": (0.1809,)},
}
UPDATES = 25


def as_tensor(array):
    return torch.tensor(array, dtype=torch.float32).reshape(len(array), -1)


def network(n_inputs, hidden, n_outputs, bias, seed=0):
    """Glorot-uniform tanh network, zero biases, like skkfac.nn.build_mlp (with a switch)."""
    torch.manual_seed(seed)
    sizes = (n_inputs, *hidden, n_outputs)
    layers = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        linear = nn.Linear(n_in, n_out, bias=bias)
        bound = (6 / (n_in + n_out)) ** 0.5
        nn.init.uniform_(linear.weight, -bound, bound)
        if bias:
            nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def held_out_losses(X, y, X_test, y_test, settings, lr, bias, damping):
    model = network(X.shape[1], settings["hidden"], y.shape[1], bias)
    opt = KFAC(model, "squared_error", lr=lr, damping=damping, damping_scheme="max_norm",
               adaptive_step=False, adapt_damping=False, rejection_ratio=None,
               random_state=0, momentum_rate=settings["momentum_rate"],
               momentum_max=settings["momentum_max"])
    rows = torch.Generator().manual_seed(0)
    losses = []
    for k in range(UPDATES):
        batch = torch.randint(0, len(X), (settings["batch_size"],), generator=rows)
        opt.zero_grad()
        opt.accumulate(X[batch], y[batch])
        opt.step()
        if k % 6 == 5 or k == UPDATES - 1:
            with torch.no_grad():
                losses.append(float(((model(X_test) - y_test) ** 2).mean()))
    return losses


def main():
    torch.set_num_threads(2)
    name = sys.argv[1] if len(sys.argv) > 1 else "regression"
    settings = SETTINGS[name]
    data = get_problem(name).load(os.environ.get("SKKFAC_DATA"))
    X, X_test = as_tensor(data.X_train), as_tensor(data.X_test)
    if data.y_train is None:  # autoencoder: the inputs are the targets
        y, y_test = X, X_test
    else:
        y, y_test = as_tensor(data.y_train), as_tensor(data.y_test)
    for lr, bias, damping in itertools.product(settings["lrs"], (True, False), (0.1, 1e-3)):
        losses = held_out_losses(X, y, X_test, y_test, settings, lr, bias, damping)
        print(f"{name} lr {lr:<7} bias {bias!s:5} damping {damping:<6} "
              "test MSE after 6/12/18/24/25 updates:",
              " ".join(f"{v:.4g}" for v in losses), flush=True)

if __name__ == "__main__":
    main()
