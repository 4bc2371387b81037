"""K-FAC's cost model: ``batch_size='auto'`` and the choice of the low-rank route."""

import numpy as np
import pytest
from torch import nn

from skkfac import KFAC, KFACAutoencoder, KFACRegressor
from skkfac.nn import build_mlp


def test_auto_batch_size_follows_the_multiply_add_count_of_one_layer():
    # One 4 -> 3 layer with bias: G is 3 x 3, A is 5 x 5, 15 weights.
    opt = KFAC(nn.Linear(4, 3), curvature_batch_size=128, inv_update_freq=10)
    per_row = 15 * (1 + 2 * 2 + 1) + 3 * 3 + 5 * 5  # G backward, 2 JVPs x 2, check, sums
    fixed = 3 * 5 * (3 + 5) + (27 + 125) / 10 + 128 * per_row
    assert opt.update_work() == pytest.approx((3 * 15, fixed))
    assert opt.preferred_batch_size() == 250 * int(np.ceil(fixed / (3 * 15) / 250))
    every_row = KFAC(nn.Linear(4, 3), curvature_batch_size=None)
    assert every_row.update_work()[0] == pytest.approx(3 * 15 + per_row)


def test_auto_batch_size_grows_with_the_curvature_rows_and_the_width():
    autoencoder = build_mlp(784, (1000, 500, 250, 30, 250, 500, 1000), 784)
    assert KFAC(autoencoder).preferred_batch_size() == 1000
    assert KFAC(autoencoder, curvature_batch_size=256).preferred_batch_size() == 1500
    cifar = build_mlp(3072, (3000, 2000, 1500, 1000, 250), 10)
    assert KFAC(cifar, "cross_entropy").preferred_batch_size() == 2250


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_estimators_use_the_solvers_preferred_batch_size():
    X = np.random.RandomState(0).rand(3000, 20)
    y = X.sum(axis=1)
    reg = KFACRegressor(hidden_layer_sizes=(30,), max_iter=1, early_stopping=False,
                        random_state=0).fit(X, y)
    expected = reg.solver_.preferred_batch_size()
    assert reg._effective_batch_size(10**6) == expected
    assert reg._effective_batch_size(100) == 100
    assert reg.n_updates_ == int(np.ceil(3000 / expected))  # one epoch
    sgd = KFACAutoencoder(encoder_layer_sizes=(8,), solver="sgd", max_iter=1).fit(X)
    assert sgd._effective_batch_size(10**6) == 200


def test_low_rank_route_only_where_it_needs_fewer_multiply_adds():
    opt = KFAC(build_mlp(784, (1000, 30), 784))
    for block, limit in zip(opt.blocks, opt.curvature.low_rank_rows):
        n_out, n_a = block.G_sum.shape[0], block.A_sum.shape[0]
        full = n_out * n_a * (n_out + n_a)
        per_row = n_out**2 + n_a**2 + n_out * n_a
        assert limit * per_row <= full < (limit + 1) * per_row
