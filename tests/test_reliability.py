"""Reliability: no silent wrong result and no stale state, whatever the user does.

One test (or a few) per case of issue 10: changed output counts, failed or interrupted
refits, parameters changed with ``set_params``, divergence, badly scaled or non-numeric
targets, wall-clock bounds and the thread policy.
"""

import pickle
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris, make_regression
from sklearn.exceptions import NotFittedError
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from skkfac import KFACAutoencoder, KFACClassifier, KFACRegressor
from skkfac.solvers import SOLVERS

SOLVER_NAMES = sorted(SOLVERS)
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)]
FAST = dict(max_iter=5, device="cpu", random_state=0)


@pytest.fixture(scope="module")
def regression_data():
    X, y = make_regression(n_samples=300, n_features=6, noise=1.0, random_state=0)
    return X, y / y.std()


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def quiet_fit(estimator, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return estimator.fit(*args, **kwargs)


def fitted_state(estimator):
    """What a refit that did not complete must leave untouched."""
    state = {name: getattr(estimator, name) for name in
             ("n_iter_", "n_updates_", "t_", "loss_curve_", "stop_reason_", "n_outputs_")}
    state["history"] = estimator.history_.copy()
    state["weights"] = [p.detach().clone() for p in estimator.model_.parameters()]
    return state


def assert_same_state(estimator, state, X):
    for name in ("n_iter_", "n_updates_", "t_", "loss_curve_", "stop_reason_", "n_outputs_"):
        assert getattr(estimator, name) == state[name], name
    assert estimator.history_.equals(state["history"])
    for p, q in zip(estimator.model_.parameters(), state["weights"]):
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=0)
    assert not estimator.model_.training
    assert np.isfinite(estimator.predict(X)).all()


def patch_steps(monkeypatch, before_step):
    """Call ``before_step()`` before every solver ``step`` (to record or to fail)."""
    for cls in set(SOLVERS.values()):
        monkeypatch.setattr(cls, "step", _hooked(cls.step, before_step))


def _hooked(step, before_step):
    def hooked_step(solver, *args, **kwargs):
        before_step()
        return step(solver, *args, **kwargs)

    return hooked_step


def fail_at_step(monkeypatch, error, after=3):
    """Make the ``after``-th solver step (counted over all solvers) raise ``error``."""
    calls = []

    def maybe_fail():
        calls.append(None)
        if len(calls) == after:
            raise error

    patch_steps(monkeypatch, maybe_fail)


# -- 1. a changed number of regression outputs -----------------------------------------
def test_partial_fit_with_another_number_of_outputs_raises(regression_data):
    X, y = regression_data
    reg = KFACRegressor(hidden_layer_sizes=(8,), **FAST).partial_fit(X, y)
    updates = reg.n_updates_
    with pytest.raises(ValueError, match=r"1 output.*3"):
        reg.partial_fit(X, np.c_[y, -y, 2 * y])
    assert reg.n_updates_ == updates
    reg.partial_fit(X, y[:, None])  # one column is still one output
    assert reg.n_updates_ > updates


def test_warm_start_with_another_number_of_outputs_raises(regression_data):
    X, y = regression_data
    reg = quiet_fit(KFACRegressor(hidden_layer_sizes=(8,), warm_start=True, **FAST),
                    X, np.c_[y, -y])
    with pytest.raises(ValueError, match=r"2 outputs.*3"):
        reg.fit(X, np.c_[y, -y, 2 * y])
    assert reg.n_outputs_ == 2 and reg.predict(X).shape == (300, 2)


def test_eval_set_with_another_number_of_outputs_raises(regression_data):
    X, y = regression_data
    reg = KFACRegressor(hidden_layer_sizes=(8,), **FAST)
    with pytest.raises(ValueError, match="eval_set"):
        reg.fit(X, y, eval_set=(X, np.c_[y, -y]))
    with pytest.raises(ValueError, match="eval_set"):
        reg.fit(X, np.c_[y, -y], eval_set=(X, y))
    assert not hasattr(reg, "model_")


# -- 2. failed or interrupted fits -------------------------------------------------------
@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_interrupted_refit_keeps_the_previous_model(regression_data, monkeypatch, error,
                                                    solver):
    X, y = regression_data
    reg = quiet_fit(KFACRegressor(hidden_layer_sizes=(8,), solver=solver, batch_size=50,
                                  **FAST), X, y)
    state = fitted_state(reg)
    score = reg.score(X, y)
    fail_at_step(monkeypatch, error)
    with pytest.raises(type(error)):
        reg.set_params(random_state=1).fit(X, y)
    assert_same_state(reg, state, X)
    assert reg.score(X, y) == score


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
@pytest.mark.parametrize("how", ["warm_start", "partial_fit"])
@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_interrupted_continuation_keeps_the_previous_model(regression_data, monkeypatch,
                                                           error, how, solver):
    X, y = regression_data
    reg = KFACRegressor(hidden_layer_sizes=(8,), solver=solver, batch_size=50,
                        artificial_batch_size=50, warm_start=how == "warm_start", **FAST)
    quiet_fit(reg, X, y)
    state = fitted_state(reg)
    fail_at_step(monkeypatch, error)
    with pytest.raises(type(error)):
        reg.fit(X, y) if how == "warm_start" else reg.partial_fit(X, y)
    assert_same_state(reg, state, X)
    # The solver's own state was put back too: continuing gives what it would have.
    monkeypatch.undo()
    reference = pickle.loads(pickle.dumps(reg))
    for estimator in (reg, reference):
        estimator.partial_fit(X, y)
    np.testing.assert_array_equal(reg.predict(X), reference.predict(X))


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_interrupted_first_fit_leaves_the_estimator_unfitted(regression_data, monkeypatch,
                                                             error):
    X, y = regression_data
    reg = KFACRegressor(hidden_layer_sizes=(8,), batch_size=50, **FAST)
    with monkeypatch.context() as patch:
        fail_at_step(patch, error)
        with pytest.raises(type(error)):
            reg.fit(X, y)
    with pytest.raises(NotFittedError):
        check_is_fitted(reg)
    assert not [name for name in vars(reg) if name.endswith("_")]
    assert quiet_fit(reg, X, y).score(X, y) > 0.5


# -- 3. parameters changed with set_params -------------------------------------------------
@pytest.mark.parametrize("change", [dict(hidden_layer_sizes=(16,)), dict(activation="relu"),
                                    dict(dtype="float64")])
def test_warm_start_with_another_network_raises(regression_data, change):
    X, y = regression_data
    reg = quiet_fit(KFACRegressor(hidden_layer_sizes=(8,), warm_start=True, **FAST), X, y)
    state = fitted_state(reg)
    name = next(iter(change))
    with pytest.raises(ValueError, match=f"{name}.*warm_start=False"):
        reg.set_params(**change).fit(X, y)
    with pytest.raises(ValueError, match=name):
        reg.partial_fit(X, y)
    assert_same_state(reg, state, X)
    reg.set_params(warm_start=False)
    quiet_fit(reg, X, y)  # a new network of the new shape
    assert reg.get_params()[name] == change[name]


def test_autoencoder_warm_start_with_another_encoder_raises():
    X = np.random.RandomState(0).rand(100, 6)
    ae = quiet_fit(KFACAutoencoder(encoder_layer_sizes=(4, 2), warm_start=True, **FAST), X)
    with pytest.raises(ValueError, match="encoder_layer_sizes"):
        ae.set_params(encoder_layer_sizes=(4, 3)).fit(X)
    assert ae.transform(X).shape == (100, 2)


@pytest.mark.parametrize("solver, updates_per_epoch", [("kfac", 3), ("sgd", 6)])
def test_artificial_batch_size_below_the_automatic_batch_size_is_honoured(
        regression_data, solver, updates_per_epoch):
    X, y = regression_data  # 300 samples: auto batch 300 for K-FAC, 200 for SGD
    artificial = 300 // updates_per_epoch
    reg = quiet_fit(KFACRegressor(hidden_layer_sizes=(4,), solver=solver,
                                  artificial_batch_size=artificial, max_iter=1,
                                  early_stopping=False, device="cpu", random_state=0), X, y)
    assert reg.n_updates_ == updates_per_epoch


def test_partial_fit_with_other_classes_raises(iris):
    X, y = iris
    clf = KFACClassifier(hidden_layer_sizes=(8,), **FAST)
    clf.partial_fit(X, y, classes=[0, 1, 2])
    clf.partial_fit(X, y, classes=[2, 1, 0])  # the same classes
    with pytest.raises(ValueError, match="classes"):
        clf.partial_fit(X, y, classes=[0, 1, 2, 3])
    assert list(clf.classes_) == [0, 1, 2]


def test_set_params_after_fit_then_predict_uses_the_fitted_network(regression_data):
    X, y = regression_data
    reg = quiet_fit(KFACRegressor(hidden_layer_sizes=(8,), **FAST), X, y)
    before = reg.predict(X)
    reg.set_params(dtype="float64", hidden_layer_sizes=(3, 3), activation="relu")
    np.testing.assert_array_equal(reg.predict(X), before)
    quiet_fit(reg, X, y)
    assert [m.out_features for m in reg.model_ if hasattr(m, "out_features")] == [3, 3, 1]


# -- 4. divergence -----------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_sgd_classifier_blow_up_is_reported_and_the_best_weights_kept(iris, device):
    X, y = iris
    clf = KFACClassifier(hidden_layer_sizes=(16,), solver="sgd", learning_rate_init=1e6,
                         device=device, random_state=0)
    with pytest.warns(RuntimeWarning, match="diverged"):
        clf.fit(X, y)
    assert clf.stop_reason_ == "diverged"
    # The untrained network's loss is about log(3): the weights kept are no worse.
    assert log_loss(y, clf.predict_proba(X)) < 2 * np.log(3)


@pytest.mark.parametrize("estimator", [
    KFACRegressor(hidden_layer_sizes=(16,), solver="sgd", learning_rate_init=1e6),
    KFACRegressor(hidden_layer_sizes=(16,), solver="sgd", learning_rate_init=0.5,
                  momentum=0.99, batch_size=10),
    KFACAutoencoder(encoder_layer_sizes=(4, 2), solver="sgd", learning_rate_init=1e4),
], ids=["sgd-lr1e6", "sgd-momentum", "autoencoder"])
def test_divergence_keeps_the_best_weights_with_a_sane_score(regression_data, estimator):
    X, y = regression_data
    estimator.set_params(device="cpu", random_state=0, max_iter=50)
    untrained = pickle.loads(pickle.dumps(estimator)).set_params(
        learning_rate_init=1e-12, max_iter=1)
    with pytest.warns(RuntimeWarning, match="diverged") as record:
        estimator.fit(X, y)
    assert "learning_rate_init" in str(record[0].message)
    assert estimator.stop_reason_ == "diverged"
    quiet_fit(untrained, X, y)
    # The best weights seen are kept: at least as good as the untrained network.
    assert estimator.score(X, y) >= untrained.score(X, y) - 0.05
    assert estimator.history_["train_loss"].notna().any()


def test_kfac_recovers_after_rejected_updates(regression_data):
    """Steps ten times the quadratic model's optimum with almost no damping: rejected
    until the raised damping shortens them, then training goes on."""
    X, y = regression_data
    reg = KFACRegressor(hidden_layer_sizes=(16,), learning_rate_init=10.0, damping=1e-6,
                        adapt_damping=False, activation="relu", max_iter=30,
                        batch_size=50, device="cpu", random_state=0)
    quiet_fit(reg, X, y)
    assert reg.n_rejected_updates_ > 0
    assert reg.stop_reason_ != "diverged"
    # Recovery, not only finite weights: the loss went on falling after the rejections.
    assert reg.loss_curve_[-1] < 0.01 * reg.loss_curve_[0]
    assert reg.score(X, y) > 0.99


# -- 5. targets the network cannot represent --------------------------------------------
def test_huge_targets_give_a_scaling_error(regression_data):
    X, y = regression_data
    reg = KFACRegressor(hidden_layer_sizes=(8,), **FAST)
    with pytest.raises(ValueError, match=r"(?i)scale the targets") as info:
        reg.fit(X, y * 1e20)
    assert "learning rate" not in str(info.value)
    assert not hasattr(reg, "model_")
    quiet_fit(reg.set_params(dtype="float64"), X, y * 1e20)  # float64 holds their squares
    assert reg.n_updates_ > 0 and np.isfinite(reg.predict(X)).all()


def test_inputs_beyond_the_dtype_range_raise(regression_data):
    X, y = regression_data
    with pytest.raises(ValueError, match="float32"):
        KFACRegressor(**FAST).fit(X * 1e300, y)


def test_regressor_string_targets_raise_like_scikit_learn(regression_data):
    X, _ = regression_data
    with pytest.raises(ValueError, match="could not convert string to float"):
        KFACRegressor(**FAST).fit(X, np.array(["a", "b", "c"] * 100))
    reg = quiet_fit(KFACRegressor(hidden_layer_sizes=(4,), **FAST), X,
                    np.array(["1.5", "-2", "0"] * 100))  # numeric strings, as Ridge
    assert reg.predict(X).dtype == np.float64


# -- 8. wall time --------------------------------------------------------------------------
FIRST_FIT = """
import sys
import numpy as np
import skkfac
from skkfac import KFACClassifier, KFACRegressor
X = np.random.RandomState(0).randn(60, 3)
before = set(sys.modules)
for solver in {solvers!r}:
    KFACRegressor(hidden_layer_sizes=(4,), solver=solver, max_iter=2,
                  early_stopping=True, device="cpu").fit(X, X[:, 0])
    KFACClassifier(hidden_layer_sizes=(4,), solver=solver, max_iter=2,
                   device="cpu").fit(X, X[:, 0] > 0).predict(X)
print(" ".join(sorted(set(sys.modules) - before)))
"""
HEAVY_MODULES = ("torch._dynamo", "torch._inductor", "sympy", "sklearn.model_selection")


def test_first_fit_imports_nothing_heavy():
    """The first fit in a process must not pay for imports outside ``train_time_``."""
    code = FIRST_FIT.format(solvers=SOLVER_NAMES)
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True,
                            capture_output=True, text=True, timeout=300)
    imported = result.stdout.split()
    assert not [m for m in imported if m.startswith(HEAVY_MODULES)]


def test_max_wall_time_bounds_the_whole_call(regression_data, monkeypatch):
    X, y = regression_data
    reg = KFACRegressor(hidden_layer_sizes=(8,), batch_size=10, eval_every=1,
                        max_iter=10**6, max_time=60, max_wall_time=1.0, device="cpu",
                        random_state=0)
    original = KFACRegressor._evaluate_tensors

    def slow_evaluation(self, *args):
        time.sleep(0.1)
        return original(self, *args)

    monkeypatch.setattr(KFACRegressor, "_evaluate_tensors", slow_evaluation)
    start = time.perf_counter()
    reg.fit(X, y, eval_set=(X, y))
    elapsed = time.perf_counter() - start
    assert reg.stop_reason_ == "max_wall_time"
    assert 1.0 <= elapsed < 2.5  # overshoot: about one update and two evaluations
    assert reg.train_time_ < elapsed
    assert len(reg.history_) <= 13


# -- 9. threads ----------------------------------------------------------------------------
@pytest.mark.parametrize("n_threads, expected", [(None, 1), (1, 1), (2, 2), (-1, None)])
def test_n_threads_applies_during_fit_and_predict_only(regression_data, monkeypatch,
                                                       n_threads, expected):
    from skkfac._threads import available_cpus

    X, y = regression_data
    expected = available_cpus() if expected is None else expected
    seen = []
    record = lambda: seen.append(torch.get_num_threads())  # noqa: E731
    patch_steps(monkeypatch, record)
    original = KFACRegressor._forward

    def recording_forward(self, *args, **kwargs):
        record()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(KFACRegressor, "_forward", recording_forward)
    outside = torch.get_num_threads()
    reg = KFACRegressor(hidden_layer_sizes=(4,), n_threads=n_threads, eval_every=5,
                        **FAST)
    quiet_fit(reg, X, y, eval_set=(X, y))
    reg.predict(X)
    reg.score(X, y)
    assert seen and set(seen) == {expected}
    assert torch.get_num_threads() == outside


def test_n_threads_is_restored_after_a_failure(regression_data, monkeypatch):
    X, y = regression_data
    outside = torch.get_num_threads()
    fail_at_step(monkeypatch, RuntimeError("boom"), after=1)
    with pytest.raises(RuntimeError):
        KFACRegressor(n_threads=2, **FAST).fit(X, y)
    assert torch.get_num_threads() == outside


@pytest.mark.parametrize("n_threads", [0, 1.5, "all"])
def test_bad_n_threads_raise(regression_data, n_threads):
    X, y = regression_data
    with pytest.raises(ValueError, match="n_threads"):
        KFACRegressor(n_threads=n_threads, **FAST).fit(X, y)


# -- the same guarantees on a GPU ---------------------------------------------------------------
class InterruptAfter:
    """Callback standing for Ctrl-C after ``n`` updates of the call."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def on_update(self, event):
        self.calls += 1
        if self.calls >= self.n:
            raise KeyboardInterrupt


@NEEDS_CUDA
@pytest.mark.parametrize("how", ["refit", "warm_start", "partial_fit"])
@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_cuda_interrupted_fit_restores_and_continues(regression_data, solver, how):
    X, y = regression_data
    reg = quiet_fit(KFACRegressor(hidden_layer_sizes=(16,), solver=solver, batch_size=50,
                                  max_iter=3, warm_start=how == "warm_start",
                                  device="cuda", random_state=0), X, y)
    state = fitted_state(reg)
    reg.set_params(callbacks=[InterruptAfter(3)])
    with pytest.raises(KeyboardInterrupt):
        reg.partial_fit(X, y) if how == "partial_fit" else reg.fit(X, y)
    assert_same_state(reg, state, X)
    reg.set_params(callbacks=None).partial_fit(X, y)
    assert reg.n_updates_ > state["n_updates_"] and reg.model_[0].weight.is_cuda


@NEEDS_CUDA
def test_cuda_max_wall_time(regression_data):
    X, y = regression_data
    reg = KFACRegressor(hidden_layer_sizes=(64,), eval_every=1, max_iter=10**6, tol=0.0,
                        max_wall_time=1.0, batch_size=10, device="cuda", random_state=0)
    start = time.perf_counter()
    reg.fit(X, y, eval_set=(X, y))
    assert reg.stop_reason_ == "max_wall_time" and time.perf_counter() - start < 3.0
