"""The evidence approximation behind ``alpha='auto'``'s refit (skkfac.estimators._evidence),
checked against explicit Jacobians and Gauss-Newton matrices, and the regressor's refit."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skkfac import KFACAutoencoder, KFACClassifier, KFACRegressor
from skkfac.estimators import _evidence
from skkfac.estimators._evidence import evidence_alpha, tangent_kernel
from skkfac.estimators._regularisation import automatic_alpha
from skkfac.estimators.base import BaseKFACEstimator
from skkfac.nn import build_mlp, linear_layers


def explicit_jacobian(model, X):
    """``(n·d, P)`` Jacobian of the outputs (output-major rows) by the parameters."""
    names = [name for name, _ in model.named_parameters()]
    values = tuple(p.detach() for p in model.parameters())

    def outputs(*params):
        out = torch.func.functional_call(model, dict(zip(names, params)), (X,))
        return out.T.reshape(-1)  # output-major

    blocks = torch.autograd.functional.jacobian(outputs, values)
    return torch.cat([block.reshape(block.shape[0], -1) for block in blocks], dim=1)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("n_outputs", [1, 3])
def test_tangent_kernel_is_the_jacobians_gram_matrix(activation, n_outputs):
    generator = torch.Generator().manual_seed(0)
    model = build_mlp(4, (6, 5), n_outputs, activation, generator=generator,
                      dtype=torch.float64)
    with torch.no_grad():  # nonzero biases, so that the bias columns matter
        for layer in linear_layers(model):
            layer.bias.normal_(generator=generator)
    X = torch.randn(7, 4, dtype=torch.float64, generator=generator)
    J = explicit_jacobian(model, X)
    torch.testing.assert_close(tangent_kernel(model, X), J @ J.T)
    assert all(p.grad is None for p in model.parameters())  # no side effect


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(widths=st.lists(st.integers(1, 5), min_size=0, max_size=3),
       n_inputs=st.integers(1, 4), n_outputs=st.integers(1, 3), n_rows=st.integers(1, 6),
       activation=st.sampled_from(["tanh", "relu", "logistic", "identity"]),
       seed=st.integers(0, 2**16))
def test_tangent_kernel_for_any_dense_network(widths, n_inputs, n_outputs, n_rows,
                                              activation, seed):
    generator = torch.Generator().manual_seed(seed)
    model = build_mlp(n_inputs, tuple(widths), n_outputs, activation, generator=generator,
                      dtype=torch.float64)
    X = torch.randn(n_rows, n_inputs, dtype=torch.float64, generator=generator)
    J = explicit_jacobian(model, X)
    kernel = tangent_kernel(model, X)
    torch.testing.assert_close(kernel, J @ J.T)
    assert kernel.shape == (n_rows * n_outputs, n_rows * n_outputs)


def explicit_evidence_alpha(model, X, y, weight, alpha):
    """The evidence's penalty from the explicit ``P × P`` Gauss-Newton matrix."""
    d = y.shape[1]
    J = explicit_jacobian(model, X)
    w = weight / weight.sum()
    residual_weights = w.repeat(d)  # output-major, as J's rows
    H = 2.0 / d * J.T @ (residual_weights[:, None] * J)
    gamma = torch.trace(H @ torch.linalg.inv(H + alpha * torch.eye(len(H), dtype=H.dtype)))
    with torch.no_grad():
        mse = float(w @ (y - model(X)).square().mean(dim=1))
        squared = float(sum(layer.weight.square().sum() for layer in linear_layers(model)))
    total = float(weight.sum())
    return 2.0 * float(gamma) * mse / ((total * d - float(gamma)) * squared), float(gamma)


@pytest.mark.parametrize("weighted", [False, True])
def test_evidence_alpha_matches_the_explicit_gauss_newton_matrix(weighted):
    generator = torch.Generator().manual_seed(1)
    model = build_mlp(3, (4,), 2, "tanh", generator=generator, dtype=torch.float64)
    X = torch.randn(40, 3, dtype=torch.float64, generator=generator)
    y = torch.randn(40, 2, dtype=torch.float64, generator=generator)
    weight = (torch.rand(40, dtype=torch.float64, generator=generator) + 0.5 if weighted
              else torch.ones(40, dtype=torch.float64))
    alpha, gamma = evidence_alpha(model, X, y, weight if weighted else None, 0.01,
                                  np.random.RandomState(0))
    expected_alpha, expected_gamma = explicit_evidence_alpha(model, X, y, weight, 0.01)
    assert gamma == pytest.approx(expected_gamma, rel=1e-9)
    assert alpha == pytest.approx(expected_alpha, rel=1e-9)


def test_evidence_recovers_the_prior_of_a_linear_model():
    """Linear regression ``y = X w + ε`` with ``w ~ N(0, s²)`` and noise ``σ²``, fitted by
    ridge: every parameter is well determined, so the evidence asks for the true prior's
    penalty ``2σ² / (n s²)`` (``automatic_alpha``'s formula with ``v = s²``)."""
    rng = np.random.RandomState(0)
    n, p, s, sigma = 4000, 50, 0.3, 0.5
    X = rng.randn(n, p)
    y = X @ (s * rng.randn(p)) + sigma * rng.randn(n)
    penalty = 2 * sigma**2 / (n * s**2)
    # The ridge solution of mean((y - Xw - b)²) + penalty/2·|w|²; the bias is free.
    design = np.hstack([X, np.ones((n, 1))])
    regulariser = np.diag([penalty / 2] * p + [0.0]) * n
    coefficients = np.linalg.solve(design.T @ design + regulariser, design.T @ y)
    model = build_mlp(p, (), 1, dtype=torch.float64)
    with torch.no_grad():
        model[0].weight.copy_(torch.as_tensor(coefficients[:p])[None])
        model[0].bias.fill_(coefficients[p])
    alpha, gamma = evidence_alpha(model, torch.as_tensor(X), torch.as_tensor(y[:, None]),
                                  None, penalty, np.random.RandomState(0))
    assert gamma == pytest.approx(p + 1, rel=0.02)
    assert alpha == pytest.approx(penalty, rel=0.25)


def test_large_sets_are_subsampled_and_too_many_outputs_give_no_estimate(monkeypatch):
    monkeypatch.setattr(_evidence, "KERNEL_SIZE", 60)
    monkeypatch.setattr(_evidence, "MIN_ROWS", 20)
    generator = torch.Generator().manual_seed(2)
    model = build_mlp(3, (4,), 2, generator=generator, dtype=torch.float64)
    X = torch.randn(500, 3, dtype=torch.float64, generator=generator)
    y = torch.randn(500, 2, dtype=torch.float64, generator=generator)
    seen = []
    kernel = _evidence.tangent_kernel
    monkeypatch.setattr(_evidence, "tangent_kernel",
                        lambda m, rows: seen.append(len(rows)) or kernel(m, rows))
    alpha, gamma = evidence_alpha(model, X, y, None, 1e-3, np.random.RandomState(0))
    assert seen == [30] and 0 < gamma <= 30 * 2 and alpha > 0
    y_wide = torch.randn(500, 4, dtype=torch.float64, generator=generator)
    wide = build_mlp(3, (4,), 4, generator=generator, dtype=torch.float64)
    assert evidence_alpha(wide, X, y_wide, None, 1e-3, np.random.RandomState(0)) is None


def test_no_estimate_when_the_network_interpolates():
    generator = torch.Generator().manual_seed(3)
    model = build_mlp(2, (50,), 1, generator=generator, dtype=torch.float64)
    X = torch.randn(5, 2, dtype=torch.float64, generator=generator)
    with torch.no_grad():
        y = model(X)  # fitted exactly: γ ≈ 5 rows
    assert evidence_alpha(model, X, y, None, 1e-12, np.random.RandomState(0)) is None


def noisy_regression(n=300, noise=1.5, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, 5)
    y = X[:, 0] - 0.5 * X[:, 1] + noise * rng.randn(n)
    return X, (y - y.mean()) / y.std()


def test_regressor_refits_noisy_targets_with_the_evidence_penalty():
    X, y = noisy_regression()
    reg = KFACRegressor(hidden_layer_sizes=(32,), random_state=0).fit(X, y)
    prior = automatic_alpha("squared_error", y[:, None])
    assert reg.evidence_alpha_ == reg.alpha_
    assert reg.alpha_ > KFACRegressor.EVIDENCE_REFIT_RATIO * prior
    # The refit's run is the one reported: its epochs, each scored once.
    assert len(reg.validation_scores_) == reg.n_iter_
    again = KFACRegressor(hidden_layer_sizes=(32,), random_state=0).fit(X, y)
    np.testing.assert_array_equal(reg.predict(X), again.predict(X))


def test_regressor_keeps_the_prior_on_clean_targets():
    rng = np.random.RandomState(0)
    X = rng.uniform(-2, 2, size=(300, 2))
    y = np.sin(X[:, 0]) * X[:, 1]
    reg = KFACRegressor(hidden_layer_sizes=(32,), random_state=0).fit(X, y)
    assert reg.evidence_alpha_ is not None
    assert reg.alpha_ == pytest.approx(automatic_alpha("squared_error", y[:, None]))
    assert reg.evidence_alpha_ < KFACRegressor.EVIDENCE_REFIT_RATIO * reg.alpha_


@pytest.mark.parametrize("params", [
    {"alpha": 0.01},                         # a penalty chosen by the user
    {"alpha": "prior"},                      # the prior alone, asked for
    {"early_stopping": False},               # nothing catches the first run's overfitting
    {"max_time": 1e-4},                      # the first run used the whole budget
    {"max_wall_time": 1e-4},
])
def test_no_evidence_refit_outside_its_conditions(params):
    X, y = noisy_regression()
    reg = KFACRegressor(hidden_layer_sizes=(16,), random_state=0, **params).fit(X, y)
    assert reg.evidence_alpha_ is None
    if params.get("alpha") == 0.01:
        assert reg.alpha_ == 0.01
    if params.get("alpha") == "prior":
        assert reg.alpha_ == automatic_alpha("squared_error", y[:, None])


@pytest.mark.parametrize("budget", ["max_time", "max_wall_time"])
def test_a_budget_that_leaves_time_is_shared_by_both_runs(budget):
    X, y = noisy_regression()
    unlimited = KFACRegressor(hidden_layer_sizes=(32,), random_state=0).fit(X, y)
    budgeted = KFACRegressor(hidden_layer_sizes=(32,), random_state=0,
                             **{budget: 60.0}).fit(X, y)
    assert budgeted.alpha_ == budgeted.evidence_alpha_ == unlimited.alpha_
    np.testing.assert_array_equal(budgeted.predict(X), unlimited.predict(X))


def test_a_second_run_cut_short_by_the_budget_is_dropped(monkeypatch):
    X, y = noisy_regression()
    prior = KFACRegressor(hidden_layer_sizes=(32,), alpha="prior", random_state=0,
                          max_time=60.0).fit(X, y)
    runs = []
    train = BaseKFACEstimator._train

    def second_run_hits_the_budget(self, *args, **kwargs):
        progress = train(self, *args, **kwargs)
        runs.append(progress)
        if len(runs) == 2:
            progress.stop_reason = "max_time"
        return progress

    monkeypatch.setattr(BaseKFACEstimator, "_train", second_run_hits_the_budget)
    reg = KFACRegressor(hidden_layer_sizes=(32,), random_state=0, max_time=60.0).fit(X, y)
    assert len(runs) == 2
    assert reg.alpha_ == prior.alpha_ < reg.evidence_alpha_
    assert reg.n_updates_ == prior.n_updates_ and reg.solver_.alpha == reg.alpha_
    np.testing.assert_array_equal(reg.predict(X), prior.predict(X))


def test_other_estimators_do_not_refit():
    X, y = noisy_regression()
    clf = KFACClassifier(hidden_layer_sizes=(16,), random_state=0).fit(X, y > 0)
    ae = KFACAutoencoder(encoder_layer_sizes=(3,), random_state=0).fit(X)
    assert clf.evidence_alpha_ is None and ae.evidence_alpha_ is None


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_warm_start_keeps_the_first_fits_penalty():
    X, y = noisy_regression()
    reg = KFACRegressor(hidden_layer_sizes=(16,), random_state=0, warm_start=True,
                        max_iter=5).fit(X, y)
    alpha, evidence = reg.alpha_, reg.evidence_alpha_
    reg.fit(X, y)
    assert reg.alpha_ == alpha and reg.evidence_alpha_ == evidence


def test_constant_targets_are_fitted_without_refit():
    """No noise to penalise; and the split stops on the validation loss, since the R² of
    constant targets is 0 until the fit is perfect (it had stopped at the first epoch,
    predicting 1.6-2.9 for 3)."""
    X, _ = noisy_regression()
    reg = KFACRegressor(hidden_layer_sizes=(8,), random_state=0).fit(X, np.full(len(X), 3.0))
    assert reg.alpha_ == 0.0  # not refitted, whatever the estimate
    assert max(reg.validation_scores_) <= 0  # negative mean squared errors
    np.testing.assert_allclose(reg.predict(X[:5]), 3.0, atol=0.05)
