"""``alpha='auto'``: the L2 penalty of a Gaussian prior N(0, v) on the weights, in the
loss's units (skkfac/estimators/_regularisation.py)."""

import numpy as np
import pytest
import torch

from skkfac import KFACAutoencoder, KFACClassifier, KFACRegressor
from skkfac.estimators._regularisation import PRIOR_VARIANCE, automatic_alpha

V = PRIOR_VARIANCE


def test_cross_entropy_gets_one_over_v_n():
    assert automatic_alpha("cross_entropy", np.arange(400) % 3) == pytest.approx(1 / (V * 400))


def test_squared_error_follows_the_gaussian_likelihood_of_the_target_variance():
    """Mean over d outputs of (y - ŷ)² is 2σ²/d times the Gaussian negative
    log-likelihood of variance σ², so the prior's ‖W‖²/(2vn) becomes alpha = 2σ²/(v n d)."""
    rng = np.random.RandomState(0)
    y = rng.randn(300, 2) * [1.0, 3.0] + [5.0, -2.0]
    sigma2 = np.mean(np.var(y, axis=0))
    assert automatic_alpha("squared_error", y) == pytest.approx(2 * sigma2 / (V * 300 * 2))
    # Scaling the targets by s scales the loss, and so the penalty, by s².
    assert automatic_alpha("squared_error", 10 * y) == pytest.approx(
        100 * automatic_alpha("squared_error", y))


def test_the_penalty_fades_as_the_rows_grow():
    y = np.tile([-1.0, 1.0], 50)[:, None]
    assert automatic_alpha("squared_error", np.tile(y, (10, 1))) == pytest.approx(
        automatic_alpha("squared_error", y) / 10)


def test_a_large_mean_does_not_cancel_the_variance():
    y = 1e9 + np.tile([-1.0, 1.0], 50)[:, None]  # variance 1, mean 1e9
    assert automatic_alpha("squared_error", y) == pytest.approx(2 / (V * 100))


@pytest.mark.parametrize("loss", ["squared_error", "cross_entropy"])
def test_integer_weights_count_as_repeated_rows(loss):
    y = np.array([[0.0], [1.0], [3.0], [4.0]]) if loss == "squared_error" else np.arange(4)
    weight = np.array([1.0, 3.0, 2.0, 1.0])
    repeated = np.repeat(y, weight.astype(int), axis=0)
    assert automatic_alpha(loss, y, weight) == pytest.approx(automatic_alpha(loss, repeated))


def test_a_total_over_processes_is_used_for_the_count_and_the_moments():
    """Data-parallel: two ranks holding halves compute the value of the whole."""
    rng = np.random.RandomState(1)
    y = rng.randn(60, 1) * 2 + 1
    halves = [y[:30], y[30:]]
    for rank in range(2):
        calls = iter([np.array([60.0]), y.sum(axis=0),
                      ((y - y.mean(axis=0)) ** 2).sum(axis=0)])
        assert automatic_alpha("squared_error", halves[rank],
                               total=lambda _, calls=calls: next(calls)) == pytest.approx(
            automatic_alpha("squared_error", y))


def test_rows_of_no_weight_are_refused():
    with pytest.raises(ValueError, match="total weight"):
        automatic_alpha("cross_entropy", np.arange(3), np.zeros(3))


def _data(n=120, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, 4)
    return X, X @ rng.randn(4) + 0.3 * rng.randn(n)


def test_estimators_resolve_auto_at_fit_and_train_with_it():
    X, y = _data()
    # Without a validation split there is no evidence refit (tests/test_evidence.py).
    reg = KFACRegressor(hidden_layer_sizes=(8,), max_iter=5, early_stopping=False,
                        random_state=0).fit(X, y)
    assert reg.alpha == "auto"
    assert reg.alpha_ == pytest.approx(2 * np.var(y) / (V * len(y)))
    assert reg.solver_.alpha == reg.alpha_
    labels = (y > 0).astype(int)
    clf = KFACClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(X, labels)
    assert clf.alpha_ == pytest.approx(1 / (V * len(y)))
    ae = KFACAutoencoder(encoder_layer_sizes=(3,), max_iter=5, random_state=0).fit(X)
    assert ae.alpha_ == pytest.approx(2 * np.mean(np.var(X, axis=0)) / (V * len(X) * 4))


@pytest.mark.parametrize("solver", ["kfac", "sgd", "adam"])
def test_a_number_is_used_as_given_and_partial_fit_has_no_prior(solver):
    X, y = _data()
    reg = KFACRegressor(hidden_layer_sizes=(8,), alpha=0.25, solver=solver, max_iter=3,
                        random_state=0).fit(X, y)
    assert reg.alpha_ == reg.solver_.alpha == 0.25
    streamed = KFACRegressor(hidden_layer_sizes=(8,), solver=solver, random_state=0)
    streamed.partial_fit(X[:40], y[:40]).partial_fit(X[40:], y[40:])
    assert streamed.alpha_ == streamed.solver_.alpha == 0.0


def test_auto_shrinks_the_weights_of_a_small_noisy_fit():
    """The prior holds the weights of an over-parameterised network on 40 noisy rows
    smaller than an unpenalised fit does (same seed, same updates)."""
    X, y = _data(n=40, seed=3)
    y = np.random.RandomState(4).randn(40)  # pure noise: only the penalty limits ‖W‖

    def weight_norm(alpha):
        reg = KFACRegressor(hidden_layer_sizes=(32,), alpha=alpha, early_stopping=False,
                            max_iter=60, tol=0.0, random_state=0, dtype="float64")
        with pytest.warns(Warning):  # ConvergenceWarning: max_iter reached
            reg.fit(X, y)
        return sum(float(m.weight.detach().square().sum()) for m in reg.model_
                   if isinstance(m, torch.nn.Linear))

    assert weight_norm("auto") < 0.9 * weight_norm(0.0)
