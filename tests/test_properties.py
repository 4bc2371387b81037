"""Property-based tests: whatever a user passes, a clear error or a consistent model.

Hypothesis draws input shapes, dtypes and values (NaN, inf, huge, tiny, constant and
duplicated columns), target kinds, containers (numpy, pandas, read-only arrays) and
parameter combinations for the three estimators, every registered solver and the
standalone :class:`skkfac.KFAC`. Each example must end in one of two ways:

* a ``ValueError``/``TypeError`` with a message, raised by skkfac or scikit-learn's
  validation (not from deep inside torch), that leaves a new estimator unfitted;
* a fitted estimator with finite weights, finite predictions of the right shape and
  fitted attributes that agree with each other.

The example budget is fixed and the data tiny so that the file runs in CI time;
``derandomize`` makes every run draw the same examples.
"""

from __future__ import annotations

import itertools
import traceback
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning
from torch import nn

from skkfac import KFAC, KFACAutoencoder, KFACClassifier, KFACRegressor
from skkfac.solvers import SOLVERS

TORCH_DIR = str(Path(torch.__file__).parent)
#: What a clear refusal may raise.
CLEAR_ERRORS = (ValueError, TypeError)
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
STOP_REASONS = {"max_iter", "max_time", "max_wall_time", "converged", "diverged"}
COLUMN_KINDS = ("normal", "normal", "constant", "duplicate", "tiny", "integer", "large")
#: At most one column per matrix gets one of these (None: a clean matrix).
DEFECTS = (None, None, None, None, None, None, "huge", "beyond_float32", "nan", "inf")


# -- strategies ------------------------------------------------------------------------------
@st.composite
def feature_matrices(draw, min_samples=2):
    """A small ``X``: columns of drawn kinds, in a drawn dtype and container."""
    n_samples = draw(st.integers(min_samples, 30))
    kinds = draw(st.lists(st.sampled_from(COLUMN_KINDS), min_size=1, max_size=4))
    defect = draw(st.sampled_from(DEFECTS))
    rng = np.random.RandomState(draw(st.integers(0, 2**16)))
    columns = []
    for kind in kinds:
        column = rng.randn(n_samples)
        if kind == "constant":
            column = np.full(n_samples, rng.randn())
        elif kind == "duplicate" and columns:
            column = columns[0].copy()
        elif kind == "tiny":
            column = column * 1e-30
        elif kind == "integer":
            column = np.round(column * 3)
        elif kind == "large":
            column = column * 1e6
        columns.append(column)
    if defect in ("huge", "beyond_float32"):
        columns[-1] = columns[-1] * (1e30 if defect == "huge" else 1e300)
    elif defect in ("nan", "inf"):
        columns[-1][rng.randint(n_samples)] = np.nan if defect == "nan" else -np.inf
    X = np.column_stack(columns)
    if defect is None and draw(st.booleans()):
        X = X.astype(draw(st.sampled_from([np.float32, np.int64])))
    return X


def in_container(draw, array, *, frame: bool):
    """``array`` as numpy, read-only numpy, or pandas."""
    container = draw(st.sampled_from(["numpy", "read_only", "pandas"]))
    if container == "read_only":
        array = np.array(array)
        array.setflags(write=False)
        return array
    if container == "pandas":
        if frame and array.ndim == 2:
            return pd.DataFrame(array, columns=[f"x{i}" for i in range(array.shape[1])])
        return pd.Series(array) if array.ndim == 1 else pd.DataFrame(array)
    return array


@st.composite
def regression_targets(draw, n_samples):
    kind = draw(st.sampled_from(["normal", "normal", "two_columns", "column", "constant",
                                 "huge", "strings", "numeric_strings", "nan"]))
    rng = np.random.RandomState(draw(st.integers(0, 2**16)))
    y = rng.randn(n_samples)
    if kind == "two_columns":
        y = rng.randn(n_samples, 2)
    elif kind == "column":
        y = y[:, None]
    elif kind == "constant":
        y = np.full(n_samples, 3.0)
    elif kind == "huge":
        y = y * 1e20
    elif kind == "strings":
        y = np.array(["a", "b"])[rng.randint(2, size=n_samples)]
    elif kind == "numeric_strings":
        y = y.round(2).astype(str)
    elif kind == "nan":
        y[0] = np.nan
    return y


@st.composite
def class_labels(draw, n_samples):
    kind = draw(st.sampled_from(["integers", "strings", "booleans", "one_class",
                                 "continuous"]))
    rng = np.random.RandomState(draw(st.integers(0, 2**16)))
    if kind == "continuous":
        return rng.randn(n_samples)
    if kind == "one_class":
        return np.zeros(n_samples, dtype=int)
    labels = rng.randint(draw(st.integers(2, 4)), size=n_samples)
    labels[:2] = [0, 1]  # at least two classes
    if kind == "strings":
        return np.array(["cat", "dog", "emu", "fox"])[labels]
    if kind == "booleans":
        return labels % 2 == 1
    return labels


def layer_sizes():
    return st.one_of(st.integers(1, 6), st.lists(st.integers(1, 6), max_size=2).map(tuple))


@st.composite
def common_parameters(draw):
    params = dict(
        solver=draw(st.sampled_from(sorted(SOLVERS))),
        activation=draw(st.sampled_from(["tanh", "relu", "logistic", "identity"])),
        alpha=draw(st.sampled_from([0.0, 1e-3, 10.0])),
        batch_size=draw(st.one_of(st.just("auto"), st.integers(1, 40))),
        max_iter=draw(st.integers(1, 3)),
        dtype=draw(st.sampled_from(["float32", "float64"])),
        shuffle=draw(st.booleans()),
        early_stopping=draw(st.booleans()),
        learning_rate_init=draw(st.sampled_from([None, 1e-3, 10.0])),
        device="cpu",
        random_state=draw(st.integers(0, 3)),
    )
    if params["batch_size"] != "auto" and draw(st.booleans()):
        params["artificial_batch_size"] = params["batch_size"] * draw(st.integers(1, 3))
    if params["solver"] == "kfac":
        params.update(fisher=draw(st.sampled_from(["sampled", "exact", "empirical"])),
                      damping_scheme=draw(st.sampled_from(["tikhonov", "eigen",
                                                           "max_norm"])),
                      adaptive_step=draw(st.booleans()))
    return params


@st.composite
def estimators_and_data(draw):
    kind = draw(st.sampled_from(["regressor", "classifier", "autoencoder"]))
    params = draw(common_parameters())
    X = draw(feature_matrices())
    if kind == "autoencoder":
        estimator = KFACAutoencoder(encoder_layer_sizes=draw(
            st.lists(st.integers(1, 5), min_size=1, max_size=2).map(tuple)), **params)
        y = None
    else:
        sizes = draw(layer_sizes())
        if kind == "regressor":
            estimator, y = KFACRegressor(sizes, **params), draw(regression_targets(len(X)))
        else:
            estimator, y = KFACClassifier(sizes, **params), draw(class_labels(len(X)))
        y = in_container(draw, y, frame=False)
    return estimator, in_container(draw, X, frame=True), y


# -- checks ----------------------------------------------------------------------------------
def fit_or_clear_error(estimator, X, y):
    """Fit; return None, or the clear ValueError/TypeError that was raised."""
    was_fitted = hasattr(estimator, "model_")
    with warnings.catch_warnings():
        # Warnings a user may legitimately get; any other warning fails the test.
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message=".*diverged", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message="Got batch_size", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*accumulated into updates",
                                category=UserWarning)
        try:
            estimator.fit(X) if y is None else estimator.fit(X, y)
        except CLEAR_ERRORS as error:
            event(f"{type(error).__name__}: {str(error)[:40]}")
            assert_clear(error)
            if not was_fitted:
                assert not hasattr(estimator, "model_"), "a failed first fit left a model"
            return error
    event(f"fitted, stop_reason_={estimator.stop_reason_!r}")
    return None


def assert_clear(error: Exception) -> None:
    assert str(error).strip(), f"{type(error).__name__} without a message"
    innermost = traceback.extract_tb(error.__traceback__)[-1].filename
    assert not innermost.startswith(TORCH_DIR), f"error raised inside torch: {error!r}"


def n_rows(X) -> int:
    return len(X)


def assert_consistent(estimator, X, y) -> None:
    """Fitted attributes agree with each other and with the data; outputs are finite."""
    n_features = np.shape(X)[1]
    assert estimator.n_features_in_ == n_features
    assert not estimator.model_.training
    for p in estimator.model_.parameters():
        assert torch.isfinite(p).all()
        assert p.dtype == getattr(torch, estimator.dtype)
    assert estimator.stop_reason_ in STOP_REASONS
    assert len(estimator.loss_curve_) == estimator.n_iter_
    if not estimator.warm_start:
        assert estimator.n_iter_ <= estimator.max_iter
    assert estimator.history_["update"].iloc[-1] == estimator.n_updates_
    assert estimator.t_ >= estimator.n_updates_
    prediction = estimator.predict(X)
    assert isinstance(estimator, KFACClassifier) or np.isfinite(prediction).all()
    if isinstance(estimator, KFACAutoencoder):
        assert prediction.shape == (n_rows(X), n_features)
        assert estimator.transform(X).shape == (n_rows(X), estimator.encoder_layer_sizes[-1])
    elif isinstance(estimator, KFACClassifier):
        assert prediction.shape == (n_rows(X),)
        assert set(np.unique(prediction)) <= set(estimator.classes_)
        proba = estimator.predict_proba(X)
        assert proba.shape == (n_rows(X), len(estimator.classes_))
        np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    else:
        assert prediction.shape == np.shape(y)[:1] + np.shape(y)[1:] or (
            np.ndim(y) == 2 and prediction.shape == (n_rows(X), np.shape(y)[1]))
        assert estimator.n_outputs_ == (1 if np.ndim(y) == 1 else np.shape(y)[1])
    assert np.isfinite(estimator.score(X) if y is None else estimator.score(X, y))


# -- properties ------------------------------------------------------------------------------
@SETTINGS
@given(estimators_and_data())
def test_fit_gives_a_clear_error_or_a_consistent_model(case):
    estimator, X, y = case
    if fit_or_clear_error(estimator, X, y) is None:
        assert_consistent(estimator, X, y)


@SETTINGS
@given(estimators_and_data(), common_parameters(), layer_sizes(), st.booleans(),
       st.booleans())
def test_set_params_after_fit_then_predict_and_fit(case, new_params, new_sizes, warm,
                                                   refit_other_data):
    estimator, X, y = case
    if fit_or_clear_error(estimator, X, y) is not None:
        return
    before = estimator.predict(X)
    if not isinstance(estimator, KFACAutoencoder):
        new_params["hidden_layer_sizes"] = new_sizes
    estimator.set_params(warm_start=warm, **new_params)
    # The fitted network is used until the next fit, whatever the parameters say now.
    np.testing.assert_array_equal(estimator.predict(X), before)
    if refit_other_data and np.ndim(y) != 2:
        X, y = X[: max(2, n_rows(X) // 2)], None if y is None else y[: max(2, len(y) // 2)]
    previous = estimator.n_updates_
    if fit_or_clear_error(estimator, X, y) is None:
        assert_consistent(estimator, X, y)
    else:  # a refused refit leaves the previous model
        assert estimator.n_updates_ == previous


@SETTINGS
@given(estimators_and_data(), st.integers(1, 3))
def test_partial_fit_calls_stay_consistent(case, calls):
    estimator, X, y = case
    if isinstance(estimator, KFACClassifier) and np.ndim(y) == 1:
        kwargs = dict(classes=np.unique(np.asarray(y)))
    else:
        kwargs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(calls):
            try:
                estimator.partial_fit(X, y, **kwargs)
            except CLEAR_ERRORS as error:
                assert_clear(error)
                return
    assert estimator.n_iter_ == calls
    assert estimator.stop_reason_ in STOP_REASONS
    assert all(torch.isfinite(p).all() for p in estimator.model_.parameters())
    prediction = estimator.predict(X)
    assert isinstance(estimator, KFACClassifier) or np.isfinite(prediction).all()


@st.composite
def kfac_problems(draw):
    """A small network, batches of drawn scale, and KFAC options."""
    loss = draw(st.sampled_from(["squared_error", "cross_entropy"]))
    n_in, n_out = draw(st.integers(1, 4)), draw(st.integers(1, 3))  # 1 class: no gradient
    hidden = draw(st.lists(st.integers(1, 5), max_size=2))
    activation = draw(st.sampled_from([nn.Tanh, nn.ReLU, nn.Identity]))
    widths = [n_in, *hidden, n_out]
    modules = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        modules.append(nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2:
            modules.append(activation())
    n = draw(st.integers(1, 20))
    scale = draw(st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e10]))
    options = dict(
        damping=draw(st.sampled_from([0.0, 1e-6, 0.1, 10.0])),
        damping_scheme=draw(st.sampled_from(["tikhonov", "eigen", "max_norm"])),
        adaptive_step=draw(st.booleans()),
        fisher=draw(st.sampled_from(["sampled", "exact", "empirical"])),
        lr=draw(st.sampled_from([1e-3, 1.0, 100.0])),
        inv_update_freq=draw(st.integers(1, 3)),
        curvature_batch_size=draw(st.sampled_from([None, 1, 5])),
        random_state=0,
    )
    return nn.Sequential(*modules), loss, n, scale, options, draw(st.integers(0, 2**16))


@SETTINGS
@given(kfac_problems(), st.integers(1, 6))
def test_standalone_kfac_keeps_finite_weights(problem, n_steps):
    model, loss, n, scale, options, seed = problem
    generator = torch.Generator().manual_seed(seed)
    n_in, n_out = model[0].in_features, model[-1].out_features
    X = torch.randn(n, n_in, generator=generator) * scale
    if loss == "cross_entropy":
        y = torch.randint(0, n_out, (n,), generator=generator)
    else:
        y = torch.randn(n, n_out, generator=generator)
    optimizer = KFAC(model, loss, **options)
    for _ in range(n_steps):
        optimizer.accumulate(X, y)
        optimizer.step()
    for p in model.parameters():
        assert torch.isfinite(p).all(), "KFAC left non-finite weights"


@pytest.mark.parametrize("loss, n_out, options", [
    ("squared_error", 1, dict(damping=0.0, damping_scheme="eigen", adaptive_step=False)),
    ("cross_entropy", 1, dict(damping=1e-6, adaptive_step=True)),  # zero gradients
], ids=["undamped-singular-factor", "one-class-zero-gradient"])
def test_kfac_degenerate_problems_keep_finite_weights(loss, n_out, options):
    model = nn.Sequential(nn.Linear(1, n_out))
    optimizer = KFAC(model, loss, lr=1e-3, random_state=0, **options)
    y = torch.zeros(1, dtype=torch.int64) if loss == "cross_entropy" else torch.zeros(1, 1)
    optimizer.accumulate(torch.full((1, 1), 1e-30), y)
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_kfac_regressor_on_unscaled_inputs_with_saturated_units_trains():
    X = np.array([[1764052.34596766], [400157.20836722]])
    reg = KFACRegressor(1, adaptive_step=False, dtype="float64", max_iter=1, shuffle=False,
                        device="cpu", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.fit(X, np.array([1.76405235, 0.40015721]))
    assert np.isfinite(reg.predict(X)).all()


@pytest.mark.parametrize("estimator", [KFACRegressor(), KFACClassifier(), KFACAutoencoder()])
def test_int_hidden_layer_sizes_is_one_layer(estimator):
    """scikit-learn accepts ``hidden_layer_sizes=8`` for ``(8,)``."""
    X = np.random.RandomState(0).randn(20, 3)
    name = "encoder_layer_sizes" if isinstance(estimator, KFACAutoencoder) else \
        "hidden_layer_sizes"
    estimator.set_params(**{name: 4}, max_iter=1, device="cpu")
    y = None if isinstance(estimator, KFACAutoencoder) else (X[:, 0] > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(X) if y is None else estimator.fit(X, y)
    widths = [m.out_features for m in estimator.model_ if isinstance(m, nn.Linear)]
    assert widths[0] == 4
