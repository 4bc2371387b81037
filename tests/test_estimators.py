"""scikit-learn conventions and user-facing behaviour of the three estimators."""

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits, load_iris, make_regression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from skkfac import KFACAutoencoder, KFACClassifier, KFACRegressor
from skkfac.solvers import SOLVERS
from skkfac.training import MAX_CONSECUTIVE_REJECTIONS

SMALL = dict(max_iter=30, device="cpu", random_state=0)


# float64 for the sklearn suite: its subset-invariance check compares predictions at
# 1e-7, below float32 rounding (which varies with the batch shape of the matmul).


def small_estimators():
    for solver in SOLVERS:
        # Adam's default step (1e-3) learns too little in 30 epochs for the sklearn checks.
        params = dict(SMALL, solver=solver, dtype="float64",
                      learning_rate_init=0.01 if solver == "adam" else None)
        yield KFACRegressor(hidden_layer_sizes=(8,), **params)
        yield KFACClassifier(hidden_layer_sizes=(8,), **params)
        yield KFACAutoencoder(encoder_layer_sizes=(6, 3), **params)


def expected_failed_checks(estimator):
    """The sklearn checks that cannot hold for an estimator, with the reason."""
    if estimator.solver == "kfac" and estimator.fisher == "sampled":
        # tests/test_sample_weight.py checks the equivalence with fisher='exact'.
        return {"check_sample_weight_equivalence_on_dense_data": (
            "K-FAC's sampled Fisher draws one target per row: a row of weight w draws "
            "one, its w repeats draw w (the same curvature in expectation, not draw for "
            "draw); with fisher='exact' or 'empirical' the equivalence holds.")}
    return {}


@parametrize_with_checks(list(small_estimators()),
                         expected_failed_checks=expected_failed_checks, xfail_strict=True)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


@pytest.fixture(scope="module")
def regression_data():
    X, y = make_regression(n_samples=300, n_features=6, noise=1.0, random_state=0)
    return X, y / y.std()


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_regressor_learns(regression_data, solver):
    X, y = regression_data
    lr = {"adam": 0.01}.get(solver)  # Adam's 1e-3 needs more than 100 epochs here
    reg = KFACRegressor(hidden_layer_sizes=(32,), solver=solver, max_iter=100,
                        learning_rate_init=lr, random_state=0, device="cpu").fit(X, y)
    assert reg.score(X, y) > 0.95
    assert reg.predict(X).shape == (300,)


def test_regressor_multi_output(regression_data):
    X, y = regression_data
    Y = np.column_stack([y, -y])
    reg = KFACRegressor(hidden_layer_sizes=(16,), max_iter=60, random_state=0).fit(X, Y)
    assert reg.predict(X).shape == (300, 2)
    assert reg.score(X, Y) > 0.9


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_classifier_string_labels_and_proba(solver):
    X, y = load_iris(return_X_y=True)
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    clf = KFACClassifier(hidden_layer_sizes=(16,), solver=solver, max_iter=200,
                         batch_size=32, random_state=0, learning_rate_init=None)
    clf.fit(StandardScaler().fit_transform(X), labels)
    assert list(clf.classes_) == ["setosa", "versicolor", "virginica"]
    proba = clf.predict_proba(StandardScaler().fit_transform(X))
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    assert clf.score(StandardScaler().fit_transform(X), labels) > 0.9


def test_autoencoder_transform_inverse_transform_and_score():
    X = load_digits().data[:500] / 16
    ae = KFACAutoencoder(encoder_layer_sizes=(32, 8), max_iter=30, random_state=0).fit(X)
    code = ae.transform(X)
    assert code.shape == (500, 8)
    np.testing.assert_allclose(ae.inverse_transform(code), ae.predict(X), rtol=1e-5, atol=1e-6)
    assert ae.score(X) == pytest.approx(-np.mean((ae.predict(X) - X) ** 2), rel=1e-5)
    assert [m.out_features for m in ae.model_ if hasattr(m, "out_features")] == [32, 8, 32, 64]
    with pytest.raises(ValueError, match="code size"):
        ae.inverse_transform(np.zeros((2, 5)))


def test_history_records_learning_curves_with_eval_set(regression_data):
    X, y = regression_data
    reg = KFACRegressor(hidden_layer_sizes=(16,), max_iter=5, batch_size=50,
                        artificial_batch_size=50, early_stopping=False, eval_every=2,
                        random_state=0).fit(X[:200], y[:200], eval_set=(X[200:], y[200:]))
    h = reg.history_
    assert isinstance(h, pd.DataFrame)
    for column in ["update", "epoch", "samples", "time", "train_loss", "eval_loss",
                   "eval_score", "time_inverse", "time_statistics"]:
        assert column in h.columns
    assert h["update"].iloc[0] == 0 and h["update"].iloc[-1] == reg.n_updates_ == 20
    assert h["update"].is_monotonic_increasing and h["time"].is_monotonic_increasing
    assert h["eval_loss"].notna().all()
    assert h["eval_loss"].iloc[-1] < h["eval_loss"].iloc[0]
    assert reg.t_ == 5 * 200 and reg.n_iter_ == 5


def test_autoencoder_eval_set_is_inputs_only():
    X = load_digits().data / 16
    ae = KFACAutoencoder(encoder_layer_sizes=(16, 4), max_iter=2, random_state=0)
    ae.fit(X[:1000], eval_set=X[1000:])
    assert ae.history_["eval_loss"].notna().all()
    assert ae.history_["eval_score"].iloc[-1] == pytest.approx(ae.score(X[1000:]), rel=1e-4)


def test_artificial_batch_size_equals_real_batch(regression_data):
    X, y = regression_data
    common = dict(hidden_layer_sizes=(8,), fisher="exact", shuffle=False, max_iter=2,
                  random_state=0, dtype="float64", tol=0.0, early_stopping=False)
    whole = KFACRegressor(batch_size=100, artificial_batch_size=100, **common).fit(X, y)
    parts = KFACRegressor(batch_size=25, artificial_batch_size=100, **common).fit(X, y)
    assert whole.n_updates_ == parts.n_updates_ == 6
    np.testing.assert_allclose(whole.predict(X), parts.predict(X), rtol=1e-8)
    sgd_whole = KFACRegressor(solver="sgd", batch_size=100, **common).fit(X, y)
    sgd_parts = KFACRegressor(solver="sgd", batch_size=25, artificial_batch_size=100,
                              **common).fit(X, y)
    np.testing.assert_allclose(sgd_whole.predict(X), sgd_parts.predict(X), rtol=1e-8)


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_max_time_stops_training(regression_data, solver):
    X, y = regression_data
    reg = KFACRegressor(hidden_layer_sizes=(8,), solver=solver, max_iter=10**6, max_time=0.3,
                        batch_size=10, random_state=0).fit(X, y)
    assert reg.stop_reason_ == "max_time"
    assert reg.train_time_ >= 0.3


def test_diverging_sgd_keeps_finite_weights(regression_data):
    X, y = regression_data
    reg = KFACRegressor(hidden_layer_sizes=(8,), solver="sgd", learning_rate_init=1e8,
                        activation="relu", max_iter=20, random_state=0)
    with pytest.warns(RuntimeWarning, match="diverged"):
        reg.fit(X, y * 1e3)
    assert reg.stop_reason_ == "diverged"
    assert all(np.isfinite(p.detach().numpy()).all() for p in reg.model_.parameters())
    assert np.isfinite(reg.predict(X)).all()


def test_kfac_gives_up_after_consecutive_rejections_with_finite_weights(regression_data):
    """Steps 1000 times too long are all undone: the fit stops as diverged, weights intact.

    (Recovery after occasional rejections is checked in tests/test_reliability.py.)
    """
    X, y = regression_data
    reg = KFACRegressor(hidden_layer_sizes=(16,), learning_rate_init=1000.0, kl_clip=None,
                        damping=1e-6, adapt_damping=False, activation="relu", max_iter=30,
                        batch_size=50, random_state=0)
    with pytest.warns(RuntimeWarning, match="diverged"):
        reg.fit(X, y)
    assert reg.stop_reason_ == "diverged"
    assert reg.n_rejected_updates_ >= MAX_CONSECUTIVE_REJECTIONS
    assert all(np.isfinite(p.detach().numpy()).all() for p in reg.model_.parameters())
    assert np.isfinite(reg.predict(X)).all()


def test_early_stopping_restores_best_weights():
    """The weights kept score, on the validation split, what was recorded as the best."""
    X, y = make_regression(n_samples=300, n_features=5, noise=30.0, random_state=0)
    y = y / y.std()  # noisy: the validation score peaks, then drifts down
    reg = KFACRegressor(hidden_layer_sizes=(32,), early_stopping=True, n_iter_no_change=2,
                        batch_size=50, max_iter=200, random_state=0)
    splits = []
    original = reg._validation_split
    reg._validation_split = lambda *args: splits.append(original(*args)) or splits[-1]
    reg.fit(X, y)
    _, X_val, _, y_val = splits[0]
    assert reg.stop_reason_ == "converged"
    assert reg.validation_scores_[-1] < reg.best_validation_score_  # restoring matters
    assert reg.score(X_val, y_val) == pytest.approx(reg.best_validation_score_, rel=1e-6)


def test_warm_start_and_partial_fit_continue(regression_data):
    X, y = regression_data
    reg = KFACRegressor(hidden_layer_sizes=(8,), max_iter=3, warm_start=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg.fit(X, y)
        updates = reg.n_updates_
        reg.fit(X, y)
    assert reg.n_updates_ > updates and reg.n_iter_ == 6
    inc = KFACRegressor(hidden_layer_sizes=(8,), batch_size=100, artificial_batch_size=100,
                        random_state=0)
    for _ in range(3):
        inc.partial_fit(X, y)
    assert inc.n_iter_ == 3 and inc.n_updates_ == 9
    # An artificial batch larger than one call's data is completed by the next calls.
    chunked = KFACRegressor(hidden_layer_sizes=(8,), batch_size=50,
                            artificial_batch_size=250, random_state=0)
    for start in range(0, 300, 100):
        chunked.partial_fit(X[start:start + 100], y[start:start + 100])
    assert chunked.n_updates_ == 1 and chunked.t_ == 300
    clf = KFACClassifier(hidden_layer_sizes=(8,), random_state=0)
    X_iris, y_iris = load_iris(return_X_y=True)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X_iris, y_iris)
    clf.partial_fit(X_iris[:10], y_iris[:10], classes=[0, 1, 2])
    assert list(clf.classes_) == [0, 1, 2]


def test_a_pickle_from_before_scoring_and_the_evidence_loads_with_defaults(regression_data):
    X, y = regression_data
    reg = KFACRegressor(hidden_layer_sizes=(4,), max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg.fit(X, y)
    del reg.evidence_alpha_  # what an estimator pickled by an earlier version lacks
    state = reg.__getstate__()
    del state["scoring"]
    old = KFACRegressor.__new__(KFACRegressor)
    old.__setstate__(state)
    assert old.get_params()["scoring"] == "auto"
    assert old.evidence_alpha_ is None
    np.testing.assert_array_equal(old.predict(X), reg.predict(X))


def test_pickle_clone_and_pipeline(regression_data):
    X, y = regression_data
    pipe = make_pipeline(StandardScaler(), KFACRegressor(hidden_layer_sizes=(8,), max_iter=20,
                                                         random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.fit(X, y)
    restored = pickle.loads(pickle.dumps(pipe))
    np.testing.assert_array_equal(restored.predict(X), pipe.predict(X))
    assert clone(pipe[-1]).get_params() == pipe[-1].get_params()


@pytest.mark.parametrize("params, message", [
    (dict(solver="lbfgs"), "solver"),
    (dict(solver="adam", beta_2=1.0), "beta_2"),
    (dict(activation="softplus"), "activation"),
    (dict(max_time=0), "max_time"),
    (dict(max_time=-1.0), "max_time"),
    (dict(batch_size=32, artificial_batch_size=16), "artificial_batch_size"),
    (dict(hidden_layer_sizes=(8, 0)), "positive integers"),
    (dict(damping_scheme="magic"), "damping_scheme"),
    (dict(dtype="float16"), "dtype"),
    (dict(learning_rate_init=0.0), "learning_rate_init"),
])
def test_bad_parameters_raise_before_training(regression_data, params, message):
    X, y = regression_data
    with pytest.raises(ValueError, match=message):
        KFACRegressor(**params).fit(X, y)


def test_bad_data_raises(regression_data):
    X, y = regression_data
    reg = KFACRegressor(hidden_layer_sizes=(4,), max_iter=1)
    X_nan = X.copy()
    X_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        reg.fit(X_nan, y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        reg.fit(X, y[:-1])
    with pytest.raises(ValueError, match="minimum of 2"):
        reg.fit(X[:1], y[:1])
    with pytest.raises(ValueError, match=r"Unknown label type|continuous"):
        KFACClassifier().fit(X, y)
    with pytest.raises(ValueError, match="CUDA is not available"):
        KFACRegressor(device="cuda").fit(X, y)


def test_autoencoder_feature_names_and_pandas_output():
    X = pd.DataFrame(load_digits().data[:300] / 16).add_prefix("pixel")
    ae = KFACAutoencoder(encoder_layer_sizes=(16, 3), max_iter=2, random_state=0)
    ae.set_output(transform="pandas")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        codes = ae.fit_transform(X)
    names = ["kfacautoencoder0", "kfacautoencoder1", "kfacautoencoder2"]
    assert list(ae.get_feature_names_out()) == names
    assert isinstance(codes, pd.DataFrame) and list(codes.columns) == names
    assert codes.index.equals(X.index)
    np.testing.assert_allclose(codes.to_numpy(), ae.set_output(transform="default")
                               .transform(X), rtol=1e-6)
    pipe = make_pipeline(StandardScaler(), KFACAutoencoder(encoder_layer_sizes=(8, 2),
                                                           max_iter=1, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.fit(X)
    assert list(pipe.get_feature_names_out()) == ["kfacautoencoder0", "kfacautoencoder1"]
