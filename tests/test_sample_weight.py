"""``sample_weight`` (issue 23): the weighted mean loss ``Σ wᵢ ℓᵢ / Σ wᵢ``, for every solver.

Each check is against an independent computation: an update on integer weights against
the update on the rows repeated that many times, weights of 0 against the rows left out,
the weighted epoch loss and validation score against the weighted loss and score of the
whole set computed here.
"""

import inspect
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import log_loss
from sklearn.utils.estimator_checks import check_sample_weight_equivalence_on_dense_data
from sklearn.utils.validation import has_fit_parameter

import skkfac.estimators.base as estimator_base
from skkfac import KFAC, KFACAutoencoder, KFACClassifier, KFACRegressor
from skkfac.curvature import DAMPING_SCHEMES
from skkfac.curvature.reductions import Reductions
from skkfac.nn import build_mlp
from skkfac.solvers import SOLVERS, Adam, NesterovSGD

ESTIMATORS = (KFACRegressor, KFACClassifier, KFACAutoencoder)
#: K-FAC without sampling (so that a row and its repeats give the same statistics), every
#: row in the curvature, the damping adapted and the inverses refreshed within 4 updates.
KFAC_EXACT = dict(fisher="exact", curvature_batch_size=None, damping_adapt_interval=2,
                  inv_update_freq=2, damping=0.05, random_state=0)
#: Integer weights, zeros included, of the 9 rows of :func:`data`.
COUNTS = torch.tensor([2, 1, 0, 3, 1, 2, 0, 1, 3])


def data(n=9, n_in=3, n_out=2, classes=False, seed=1):
    """Rows in float64, the precision of the exact comparisons."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, n_in, generator=g, dtype=torch.float64)
    y = (torch.randint(n_out, (n,), generator=g) if classes
         else torch.randn(n, n_out, generator=g, dtype=torch.float64))
    return X, y


def small_model():
    return build_mlp(3, (4,), 2, "tanh", generator=torch.Generator().manual_seed(0),
                     dtype=torch.float64)


def make_solver(name, model, loss, **options):
    if name == "sgd":
        return NesterovSGD(model, loss, lr=0.1, momentum=0.9)
    if name == "adam":
        return Adam(model, loss, lr=0.05)
    return KFAC(model, loss, **{**KFAC_EXACT, **options})


def train(name, X, y, weight=None, splits=(slice(None),), *, loss="squared_error",
          widths=(3, (4,), 2), n_updates=4, **options):
    """Per update: the summed loss, the step report, the factors (and EKFAC's scaling),
    then the weights; ``weight`` per row, or ``None``."""
    model = build_mlp(*widths, "tanh", generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64)
    opt = make_solver(name, model, loss, **options)
    history = []
    for _ in range(n_updates):
        loss_sum = 0.0
        for part in splits:
            weighted = {} if weight is None else {"sample_weight": weight[part]}
            loss_sum = loss_sum + opt.accumulate(X[part], y[part], **weighted)
        report = opt.step().fetch()
        factors = []
        if name == "kfac":
            for block in opt.blocks:
                factors += [block.A.clone(), block.G.clone()]
                if getattr(block.inverse, "estimated", False):
                    factors.append(block.inverse.scaling.clone())
        history.append(dict(loss_sum=loss_sum, report=report, factors=factors,
                            params=[p.detach().clone() for p in model.parameters()]))
    return history


def repeated(X, y, counts):
    return X.repeat_interleave(counts, dim=0), y.repeat_interleave(counts, dim=0)


def assert_same_updates(history, expected):
    for mine, theirs in zip(history, expected, strict=True):
        torch.testing.assert_close(mine["loss_sum"], theirs["loss_sum"], rtol=1e-12, atol=0)
        assert mine["report"]["accepted"] == theirs["report"]["accepted"]
        for key, value in mine["report"].items():
            reference = theirs["report"][key]
            if reference is None or key == "accepted":
                assert value == reference, key
            else:
                assert value == pytest.approx(reference, rel=1e-9, abs=1e-12, nan_ok=True), key
        for a, b in zip(mine["factors"], theirs["factors"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
        for a, b in zip(mine["params"], theirs["params"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


# -- the solvers: integer weights are repeated rows ------------------------------------------
@pytest.mark.parametrize("loss", ["squared_error", "cross_entropy"])
@pytest.mark.parametrize("name, options", [
    ("sgd", {}), ("adam", {}),
    ("kfac", {}), ("kfac", dict(fisher="empirical")), ("kfac", dict(adaptive_step=False)),
    ("kfac", dict(damping_scheme="ekfac")), ("kfac", dict(damping_scheme="eigen")),
])
def test_integer_weights_make_the_updates_of_repeated_rows(name, options, loss):
    """Full-batch updates, and the same update made of two micro-batches (an artificial
    batch): the gradient, the factors A and G (EKFAC's scaling), the quadratic model's
    ρ, step and momentum, and the losses are those of the data with each row repeated."""
    X, y = data(classes=loss == "cross_entropy")
    expected = train(name, *repeated(X, y, COUNTS), loss=loss, **options)
    weight = COUNTS.to(torch.float64)
    assert_same_updates(train(name, X, y, weight, loss=loss, **options), expected)
    halves = (slice(0, 4), slice(4, 9))
    assert_same_updates(train(name, X, y, weight, halves, loss=loss, **options), expected)
    if name == "kfac":  # the quadratic model was measured (at least when adapting λ)
        assert sum(step["report"]["rho"] is not None for step in expected) >= 2
        if options.get("damping_scheme") == "ekfac":
            assert len(expected[-1]["factors"]) == 3 * 2  # the scaling was re-estimated


def test_an_unweighted_micro_batch_counts_each_row_once():
    """A micro-batch without weights in a weighted update: weights of 1 for its rows."""
    X, y = data()
    counts = torch.cat([torch.ones(4, dtype=torch.long), COUNTS[4:]])
    expected = train("kfac", *repeated(X, y, counts))
    model = small_model()
    opt = make_solver("kfac", model, "squared_error")
    for step in expected:
        opt.accumulate(X[:4], y[:4])
        opt.accumulate(X[4:], y[4:], sample_weight=counts[4:].to(torch.float64))
        report = opt.step().fetch()
        assert report["rho"] == pytest.approx(step["report"]["rho"], rel=1e-9)
        for a, b in zip(model.parameters(), step["params"]):
            torch.testing.assert_close(a.detach(), b, rtol=1e-10, atol=1e-13)


def test_the_low_rank_route_takes_the_weighted_mean_gradient(monkeypatch):
    """9 weighted rows go the low-rank route ((G⁻¹ [wᵢgᵢ]) ([āᵢ]ᵀ A⁻¹) / Σw); their 16
    repeats are too many for it and take the full product: same updates."""
    calls = []
    scheme = DAMPING_SCHEMES["tikhonov"]
    original = scheme.apply_outer
    monkeypatch.setattr(scheme, "apply_outer",
                        lambda self, *args: calls.append(1) or original(self, *args))
    X, y = data(n_in=12, n_out=12)
    options = dict(widths=(12, (40,), 12), damping_scheme="tikhonov")
    expected = train("kfac", *repeated(X, y, COUNTS), **options)
    assert not calls and int(COUNTS.sum()) == 13
    history = train("kfac", X, y, COUNTS.to(torch.float64), (slice(0, 5), slice(5, 9)),
                    **options)
    assert len(calls) == 4 * 2  # both layers, every update
    assert_same_updates(history, expected)


# -- the solvers: weights of 0 are rows left out --------------------------------------------
@pytest.mark.parametrize("name, options", [
    ("sgd", {}), ("adam", {}), ("kfac", {}), ("kfac", dict(damping_scheme="ekfac")),
    ("kfac", dict(fisher="empirical", adaptive_step=False)),
])
def test_zero_weights_are_rows_left_out(name, options):
    X, y = data()
    weight = torch.tensor([0.5, 0.0, 2.0, 1.25, 0.0, 0.0, 3.0, 0.75, 1.0], dtype=torch.float64)
    kept = weight > 0
    expected = train(name, X[kept], y[kept], weight[kept], **options)
    assert_same_updates(train(name, X, y, weight, (slice(0, 3), slice(3, 9)), **options),
                        expected)


def test_an_update_without_weight_is_refused():
    X, y = data()
    zeros = torch.zeros(9)
    kfac = make_solver("kfac", small_model(), "squared_error", curvature_batch_size=4)
    kfac.accumulate(X, y, sample_weight=zeros)
    assert kfac.step() is None and kfac.n_accumulated == 0  # nothing to step on: dropped
    kfac.accumulate(X[:4], y[:4], sample_weight=zeros[:4])  # the curvature rows...
    kfac.accumulate(X[4:], y[4:])  # ... and others
    with pytest.raises(ValueError, match=r"curvature rows .* all have sample_weight 0"):
        kfac.step()
    assert kfac.n_accumulated == 0 and kfac.curvature.n_examples == 0
    sgd = make_solver("sgd", small_model(), "squared_error")
    sgd.accumulate(X, y, sample_weight=zeros)
    with pytest.raises(ValueError, match=r"Every row .* has sample_weight 0"):
        sgd.step()
    assert sgd.n_accumulated == 0


@pytest.mark.parametrize("name", list(SOLVERS))
@pytest.mark.parametrize("weight, message", [
    (torch.tensor([1.0, -1.0, 1.0]), "negative"),
    (torch.tensor([1.0, float("nan"), 1.0]), "non-finite"),
    (torch.tensor([1.0, float("inf"), 1.0]), "non-finite"),
    (torch.ones(4), r"expected one weight per row of X, \(3,\)"),
])
def test_solvers_refuse_bad_weights_before_touching_anything(name, weight, message):
    X, y = data(n=3)
    opt = make_solver(name, small_model(), "squared_error")
    with pytest.raises(ValueError, match=message):
        opt.accumulate(X, y, sample_weight=weight)
    assert opt.n_accumulated == 0 and all(p.grad is None for p in opt.params)


def test_data_parallel_counts_keep_weight_totals_as_floats():
    class TwoRanks:  # every rank holds the same count
        active = True

        def sum(self, value):
            return 2.0 * value

    reductions = Reductions(TwoRanks())
    assert reductions.count(2.25) == 4.5 and isinstance(reductions.count(2.25), float)
    assert reductions.count(3) == 6 and isinstance(reductions.count(3), int)


# -- the estimators -----------------------------------------------------------------------
def fit_data(estimator_class, n=40, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, 4)
    if estimator_class is KFACClassifier:
        return X, (X[:, 0] + 0.5 * rng.randn(n) > 0).astype(int)
    if estimator_class is KFACRegressor:
        return X, np.tanh(X @ rng.randn(4)) + 0.1 * rng.randn(n)
    return X, None


def estimator(estimator_class, **params):
    sizes = ("encoder_layer_sizes" if estimator_class is KFACAutoencoder
             else "hidden_layer_sizes")
    return estimator_class(**{sizes: (5,), "max_iter": 5, "random_state": 0,
                              "dtype": "float64", "device": "cpu", "early_stopping": False,
                              **params})


def test_the_estimators_take_sample_weight():
    for estimator_class in ESTIMATORS:
        assert has_fit_parameter(estimator_class(), "sample_weight")
        assert "sample_weight" in inspect.signature(estimator_class.partial_fit).parameters


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("estimator_class", ESTIMATORS)
def test_fit_with_integer_weights_is_fit_on_repeated_rows(estimator_class, solver):
    """Full-batch fits ('auto' batches hold every row): the same network."""
    X, y = fit_data(estimator_class)
    counts = np.random.RandomState(1).randint(0, 4, size=len(X))
    params = dict(solver=solver, fisher="exact",
                  learning_rate_init=0.01 if solver == "adam" else None)
    weighted = estimator(estimator_class, **params).fit(X, y, sample_weight=counts)
    X_repeated = X.repeat(counts, axis=0)
    y_repeated = None if y is None else y.repeat(counts, axis=0)
    plain = estimator(estimator_class, **params).fit(X_repeated, y_repeated)
    assert weighted.n_updates_ == plain.n_updates_ == 5
    np.testing.assert_allclose(weighted.loss_curve_, plain.loss_curve_, rtol=1e-10)
    np.testing.assert_allclose(weighted.predict(X), plain.predict(X), rtol=1e-9, atol=1e-12)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("estimator_class", ESTIMATORS)
def test_zero_weights_leave_the_rows_out_of_a_stochastic_fit(estimator_class):
    """K-FAC's sampled Fisher and mini-batches of 8: still the fit without those rows."""
    X, y = fit_data(estimator_class)
    weight = np.random.RandomState(2).uniform(0.5, 2.0, size=len(X))
    weight[::3] = 0.0
    kept = weight > 0
    params = dict(batch_size=8, artificial_batch_size=16)
    weighted = estimator(estimator_class, **params).fit(X, y, sample_weight=weight)
    dropped = estimator(estimator_class, **params).fit(
        X[kept], None if y is None else y[kept], sample_weight=weight[kept])
    assert weighted.t_ == 5 * kept.sum()
    np.testing.assert_array_equal(weighted.predict(X), dropped.predict(X))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("estimator_class", ESTIMATORS)
def test_equal_weights_are_the_unweighted_fit(estimator_class):
    X, y = fit_data(estimator_class)
    weighted = estimator(estimator_class).fit(X, y, sample_weight=np.full(len(X), 3.0))
    plain = estimator(estimator_class).fit(X, y)
    np.testing.assert_array_equal(weighted.predict(X), plain.predict(X))


def weighted_loss(fitted, X, y, weight) -> float:
    """The mean training loss ``Σ wᵢ ℓᵢ / Σ wᵢ`` of the whole set, computed here."""
    if isinstance(fitted, KFACClassifier):
        return log_loss(y, fitted.predict_proba(X), sample_weight=weight)
    target = X if y is None else y
    errors = (fitted.predict(X) - target) ** 2
    return float(np.average(errors.reshape(len(X), -1).mean(axis=1), weights=weight))


@pytest.mark.parametrize("estimator_class", ESTIMATORS)
@pytest.mark.parametrize("batch_size, artificial", [(7, None), (7, 21)])
def test_weighted_epoch_loss_is_the_weighted_loss_of_the_set(estimator_class, batch_size,
                                                            artificial):
    """A step too small to move the weights: every epoch's loss is the weighted loss of
    the whole set, whichever micro-batches and updates its rows fell in."""
    X, y = fit_data(estimator_class, n=50)
    weight = np.random.RandomState(3).uniform(0.0, 3.0, size=len(X))
    weight[:5] = 0.0
    fitted = estimator(estimator_class, solver="sgd", learning_rate_init=1e-300,
                       momentum=0.0, batch_size=batch_size, artificial_batch_size=artificial,
                       max_iter=3, tol=0, n_iter_no_change=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted.fit(X, y, sample_weight=weight)
    expected = weighted_loss(fitted, X, y, weight)
    unweighted = weighted_loss(fitted, X, y, None)
    assert abs(expected - unweighted) > 1e-3 * expected  # the weights matter here
    np.testing.assert_allclose(fitted.loss_curve_, expected, rtol=1e-10)


@pytest.mark.parametrize("estimator_class", ESTIMATORS)
def test_the_validation_score_is_weighted(estimator_class, monkeypatch):
    """The early-stopping split keeps each row's weight: its score is sklearn's weighted
    score of the held-out rows (the classifier's default, ``scoring='auto'``: the
    weighted negative log-loss)."""
    splits = []
    original = estimator_base.train_test_split

    def recording_split(*arrays, **options):
        splits.append(original(*arrays, **options))
        return splits[-1]

    monkeypatch.setattr(estimator_base, "train_test_split", recording_split)
    X, y = fit_data(estimator_class, n=120)
    weight = np.random.RandomState(4).uniform(0.1, 3.0, size=len(X))
    fitted = estimator(estimator_class, early_stopping=True, max_iter=1, solver="adam",
                       learning_rate_init=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted.fit(X, y, sample_weight=weight)
    (_, X_val, _, y_val, _, w_val), = splits
    if estimator_class is KFACAutoencoder:
        y_val = None
    elif estimator_class is KFACClassifier:
        y_val = fitted.classes_[y_val]
    if estimator_class is KFACClassifier:
        def score(sample_weight=None):
            return -log_loss(y_val, fitted.predict_proba(X_val), labels=fitted.classes_,
                             sample_weight=sample_weight)
    else:
        def score(sample_weight=None):
            return fitted.score(X_val, y_val, sample_weight=sample_weight)
    expected = score(w_val)
    # (sklearn's log-loss clips the probabilities; the network's works from its logits)
    rel = 1e-6 if estimator_class is KFACClassifier else 1e-10
    assert fitted.validation_scores_[-1] == pytest.approx(expected, rel=rel, abs=1e-12)
    assert expected != pytest.approx(score(), rel=1e-4)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("estimator_class", ESTIMATORS)
def test_partial_fit_takes_sample_weight(estimator_class):
    """One epoch of full-batch SGD on integer weights = one on the repeated rows."""
    X, y = fit_data(estimator_class)
    counts = np.random.RandomState(5).randint(0, 4, size=len(X))
    extra = {"classes": [0, 1]} if estimator_class is KFACClassifier else {}
    weighted = estimator(estimator_class, solver="sgd")
    plain = estimator(estimator_class, solver="sgd")
    for _ in range(2):
        weighted.partial_fit(X, y, sample_weight=counts, **extra)
        plain.partial_fit(X.repeat(counts, axis=0),
                          None if y is None else y.repeat(counts, axis=0), **extra)
    assert weighted.n_updates_ == plain.n_updates_ == 2
    np.testing.assert_allclose(weighted.predict(X), plain.predict(X), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("estimator_class", ESTIMATORS)
@pytest.mark.parametrize("method", ["fit", "partial_fit"])
@pytest.mark.parametrize("weight, message", [
    (lambda n: np.r_[-1.0, np.ones(n - 1)], "Negative values in data passed to `sample_weight`"),
    (lambda n: np.r_[np.nan, np.ones(n - 1)], "Input sample_weight contains NaN"),
    (lambda n: np.r_[np.inf, np.ones(n - 1)], "Input sample_weight contains infinity"),
    (lambda n: np.ones(n + 1), r"sample_weight.shape == \(41,\), expected \(40,\)"),
    (lambda n: np.ones((n, 2)), "Sample weights must be 1D array or scalar"),
    (lambda n: np.zeros(n), "Sample weights must contain at least one non-zero number"),
])
def test_bad_weights_are_refused(estimator_class, method, weight, message):
    X, y = fit_data(estimator_class)
    extra = ({"classes": [0, 1]} if estimator_class is KFACClassifier
             and method == "partial_fit" else {})
    fitted = estimator(estimator_class)
    with pytest.raises(ValueError, match=message):
        getattr(fitted, method)(X, y, sample_weight=weight(len(X)), **extra)
    assert not hasattr(fitted, "model_")


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("estimator_class", ESTIMATORS)
def test_sklearn_weight_equivalence_holds_for_the_exact_fisher(estimator_class):
    """sklearn's own check, which the sampled Fisher cannot pass (tests/test_estimators.py
    marks it as an expected failure there)."""
    sizes = ("encoder_layer_sizes" if estimator_class is KFACAutoencoder
             else "hidden_layer_sizes")
    check_sample_weight_equivalence_on_dense_data(
        estimator_class.__name__,
        estimator_class(**{sizes: (8,)}, fisher="exact", max_iter=30, dtype="float64",
                        device="cpu"))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_fit_data_parallel_shards_the_weights():
    """Two ranks on half of every batch, with weights (rows of weight 0 left out first):
    the fit of one process."""
    from skkfac.distributed import fit_data_parallel

    rng = np.random.RandomState(0)
    X = rng.randn(84, 4)
    y = np.tanh(X @ rng.randn(4, 2)) + 0.1 * rng.randn(84, 2)
    weight = rng.uniform(0.2, 3.0, size=84)
    weight[[3, 10, 11, 50]] = 0.0  # 80 rows left: two updates of 40 per epoch
    reg = KFACRegressor(hidden_layer_sizes=(6,), batch_size=40, artificial_batch_size=40,
                        max_iter=3, shuffle=False, fisher="exact", curvature_batch_size=None,
                        dtype="float64", random_state=0, device="cpu")
    parallel = fit_data_parallel(reg, X, y, n_processes=2, sample_weight=weight)
    single = KFACRegressor(**reg.get_params()).fit(X, y, sample_weight=weight)
    assert parallel.n_updates_ == single.n_updates_ == 6
    np.testing.assert_allclose(parallel.loss_curve_, single.loss_curve_, rtol=1e-10)
    np.testing.assert_allclose(parallel.predict(X), single.predict(X), rtol=1e-9, atol=1e-12)
