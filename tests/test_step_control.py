"""Step control under noisy curvature, small batches and the stopping rules (issue 21).

Each behaviour is checked against an independent computation: a brute-force minimum of
the constrained plane model, the factors as they stood before an update, the exact mean
loss over an epoch's samples.
"""

import itertools
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning

from skkfac import KFAC, KFACClassifier, KFACRegressor
from skkfac.curvature.control import minimise_plane_model
from skkfac.nn import build_mlp


# -- the bounded plane model -------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.floats(0.1, 10), st.floats(0.1, 10), st.floats(-0.99, 0.99),
       st.floats(-5, 5), st.floats(-5, 5), st.floats(0.0, 0.5), st.floats(0.5, 1.5))
def test_bounded_momentum_is_the_constrained_minimum(a, c, correlation, l0, l1, low, high):
    """Against a brute-force search of the strip ``low <= c1 <= high``."""
    b = correlation * np.sqrt(a * c)
    matrix = torch.tensor([[a, b], [b, c]], dtype=torch.float64)
    linear = torch.tensor([l0, l1], dtype=torch.float64)
    solution = minimise_plane_model(matrix, linear, momentum_bounds=(low, high))

    def model(c0, c1):
        x = np.array([c0, c1])
        return x @ linear.numpy() + 0.5 * x @ matrix.numpy() @ x

    # For each c1 on a fine grid the best c0 is exact: the minimum over the strip.
    best = min(model(-(l0 + b * c1) / a, c1) for c1 in np.linspace(low, high, 2001))
    assert low - 1e-12 <= float(solution[1]) <= high + 1e-12
    assert model(*solution.numpy()) <= best + 1e-9


def test_bounds_that_hold_the_optimum_change_nothing():
    matrix = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    linear = torch.tensor([-1.0, -0.8], dtype=torch.float64)
    free = minimise_plane_model(matrix, linear)
    assert 0 < float(free[1]) < 0.9
    torch.testing.assert_close(minimise_plane_model(matrix, linear, (0.0, 0.9)), free)


def test_kfac_adaptive_momentum_stays_within_its_bounds():
    torch.manual_seed(0)
    X, y = torch.randn(256, 6), torch.randint(0, 3, (256,))
    model = build_mlp(6, (16,), 3)
    opt = KFAC(model, "cross_entropy", random_state=0, curvature_batch_size=8)
    momenta = []
    for start in itertools.islice(itertools.cycle(range(0, 256, 32)), 40):
        opt.accumulate(X[start:start + 32], y[start:start + 32])
        momenta.append(float(opt.step().fetch()["momentum"]))
    low, high = KFAC.MOMENTUM_BOUNDS
    assert min(momenta) >= low and max(momenta) <= high
    assert max(momenta) > 0  # momentum is used, not switched off


# -- the inverses do not see the rows that judge the step ------------------------------------
def test_refreshed_inverses_come_from_the_factors_before_the_update():
    torch.manual_seed(0)
    X = torch.randn(64, 5, dtype=torch.float64)
    Y = torch.randn(64, 2, dtype=torch.float64)
    model = build_mlp(5, (7,), 2, dtype=torch.float64)
    opt = KFAC(model, "squared_error", inv_update_freq=1, adapt_damping=False,
               damping_scheme="eigen", random_state=0)
    opt.accumulate(X[:32], Y[:32])
    opt.step()  # the first update: its own factors (there are no others)
    before = [(block.A.clone(), block.G.clone()) for block in opt.blocks]
    opt.accumulate(X[32:], Y[32:])
    opt.step()
    damping = opt.absolute_damping
    for block, (A, G) in zip(opt.blocks, before):
        assert not torch.allclose(block.A, A)  # the new rows were folded in afterwards
        gradient = torch.randn(G.shape[0], A.shape[0], dtype=torch.float64)
        # (A ⊗ G + λI) vec(X) = vec(V), vec stacking columns: G X A + λ X = V.
        damped = torch.kron(A, G) + damping * torch.eye(A.shape[0] * G.shape[0])
        explicit = torch.linalg.solve(damped, gradient.T.reshape(-1))
        explicit = explicit.reshape(A.shape[0], G.shape[0]).T
        torch.testing.assert_close(block.inverse.apply(gradient), explicit)


# -- small batches ---------------------------------------------------------------------------
def small_classification():
    X, y = make_classification(200, n_features=5, n_informative=3, n_redundant=0,
                               n_classes=3, random_state=0)
    return X, y


@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_kfac_trains_with_tiny_batches(batch_size):
    X, y = small_classification()
    clf = KFACClassifier(hidden_layer_sizes=(8,), batch_size=batch_size, max_iter=40,
                         random_state=0)
    with pytest.warns(UserWarning, match="accumulated into updates of 128 samples"):
        clf.fit(X, y)
    assert clf.stop_reason_ != "diverged"
    assert clf.score(X, y) >= 0.6
    assert clf.n_updates_ <= 40 * 200 // 128 + 1  # updates of 128 samples, not of batches


def test_an_explicit_artificial_batch_size_is_kept():
    X, y = small_classification()
    clf = KFACClassifier(hidden_layer_sizes=(8,), batch_size=4, artificial_batch_size=8,
                         max_iter=2, random_state=0, tol=0, n_iter_no_change=100,
                         early_stopping=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    assert clf.n_updates_ == 2 * 200 // 8


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_first_order_solvers_keep_their_batches(solver):
    X, y = small_classification()
    clf = KFACClassifier(hidden_layer_sizes=(8,), solver=solver, batch_size=4, max_iter=1,
                         random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    assert clf.n_updates_ == 50


# -- the epoch loss and the stopping rule -----------------------------------------------------
@pytest.mark.parametrize("batch_size, artificial", [(16, None), (16, 48), (7, 21)])
def test_epoch_loss_is_the_mean_over_the_epochs_own_samples(batch_size, artificial):
    """With a learning rate too small to move the weights, every epoch's loss is the loss
    of the whole training set, however the updates straddle the epochs."""
    rng = np.random.RandomState(0)
    X, y = rng.randn(150, 3), rng.randn(150)
    reg = KFACRegressor(hidden_layer_sizes=(5,), solver="sgd", learning_rate_init=1e-300,
                        momentum=0.0, batch_size=batch_size, artificial_batch_size=artificial,
                        max_iter=4, random_state=0, dtype="float64", shuffle=True,
                        tol=0, n_iter_no_change=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.fit(X, y)
    full = float(np.mean((reg.predict(X) - y) ** 2))
    np.testing.assert_allclose(reg.loss_curve_, full, rtol=1e-10)


def test_a_loss_that_blows_up_at_the_end_is_not_convergence(monkeypatch):
    """The epoch rule would call this converged; the best epoch's weights come back."""
    from skkfac.solvers.sgd import NesterovSGD

    rng = np.random.RandomState(0)
    X = rng.randn(200, 3)
    y = X @ rng.randn(3)
    original = NesterovSGD.step
    calls = {"n": 0}

    def step(self):
        calls["n"] += 1
        report = original(self)
        if calls["n"] > 60:  # from epoch 7 on, every update leaves a constant output
            with torch.no_grad():
                self.layers[-1].weight.zero_()
                self.layers[-1].bias.fill_(2.0)
        return report

    monkeypatch.setattr(NesterovSGD, "step", step)
    reg = KFACRegressor(hidden_layer_sizes=(5,), solver="sgd", batch_size=20, max_iter=30,
                        n_iter_no_change=3, random_state=0)
    with pytest.warns(RuntimeWarning, match="epoch loss rose"):
        reg.fit(X, y)
    assert reg.stop_reason_ == "diverged"
    best = int(np.argmin(reg.loss_curve_))
    assert best < 7
    assert reg.loss_curve_[-1] > 2 * reg.loss_curve_[best]
    assert reg.score(X, y) > 0.5


# -- early_stopping='auto' ---------------------------------------------------------------------
def noisy_regression(n=400, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, 8)
    return X, X[:, 0] + 2.0 * rng.randn(n)  # mostly noise: easy to overfit


@pytest.mark.parametrize("solver, expected", [("kfac", True), ("sgd", False), ("adam", False)])
def test_auto_early_stopping_is_on_for_kfac_only(solver, expected):
    X, y = noisy_regression()
    reg = KFACRegressor(hidden_layer_sizes=(16,), solver=solver, max_iter=5, random_state=0)
    clf = KFACClassifier(hidden_layer_sizes=(4,), solver=solver, max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.fit(X, y)
        clf.fit(*small_classification())
    for estimator in (reg, clf):
        assert estimator.do_early_stopping_ is expected
        assert (estimator.validation_scores_ is not None) is expected
    # Trained on 90 % of the rows with the split, on all of them without it.
    assert reg.t_ == reg.n_iter_ * (360 if expected else 400)
    assert clf.t_ == clf.n_iter_ * (180 if expected else 200)


def test_auto_early_stopping_is_off_for_tiny_data_unsplittable_classes_and_partial_fit():
    X, y = noisy_regression(n=90)  # a split of 9 samples is too small to judge on
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        assert not KFACRegressor(hidden_layer_sizes=(4,), max_iter=2).fit(X, y).do_early_stopping_
        reg = KFACRegressor(hidden_layer_sizes=(4,)).partial_fit(*noisy_regression())
        assert not reg.do_early_stopping_
        X, y = small_classification()
        y[0] = 3  # a class of one sample cannot be stratified into both sides
        clf = KFACClassifier(hidden_layer_sizes=(4,), max_iter=2).fit(X, y)
        assert not clf.do_early_stopping_ and list(clf.classes_) == [0, 1, 2, 3]
        # 12 classes of 10 samples: a split of 12 rows holds one of each ...
        X, y = make_classification(120, n_features=6, n_informative=6, n_redundant=0,
                                   n_classes=12, n_clusters_per_class=1, random_state=0)
        assert KFACClassifier(hidden_layer_sizes=(4,), max_iter=2).fit(X, y).do_early_stopping_
        # ... but 11 rows (validation_fraction 0.09) cannot.
        clf = KFACClassifier(hidden_layer_sizes=(4,), max_iter=2, validation_fraction=0.09)
        assert not clf.fit(X, y).do_early_stopping_
    # Asked for explicitly, an impossible split is scikit-learn's error, not a silent fit.
    with pytest.raises(ValueError, match="least populated class"):
        KFACClassifier(hidden_layer_sizes=(4,), early_stopping=True).fit(
            *small_classification()[:1], np.r_[3, small_classification()[1][1:]])


def fit_recording_the_split(model, X, y=None):
    """Fit ``model`` (``y=None``: an autoencoder) and return its early-stopping split
    ``[X_train, X_val, y_train, y_val]`` (encoded targets)."""
    splits = []
    original = model._validation_split
    model._validation_split = lambda *args: splits.append(original(*args)) or splits[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X) if y is None else model.fit(X, y)
    return splits[0]


@pytest.mark.parametrize("scoring", ["auto", "loss", None])
def test_scoring_chooses_what_early_stopping_judges_and_records(scoring):
    """'loss': the negative validation loss; None: the estimator's score; 'auto': the
    loss for the classifier, the score (R²) for the regressor. The weights kept score
    the best recorded value on the held-out split."""
    from sklearn.metrics import log_loss, mean_squared_error

    X, y = small_classification()
    X_reg, y_reg = noisy_regression()
    models = [KFACClassifier(hidden_layer_sizes=(16,), scoring=scoring, random_state=0),
              KFACRegressor(hidden_layer_sizes=(16,), scoring=scoring, random_state=0)]
    for model, (X_fit, y_fit) in zip(models, [(X, y), (X_reg, y_reg)]):
        _, X_val, _, y_val = fit_recording_the_split(model, X_fit, y_fit)
        classifier = isinstance(model, KFACClassifier)
        if scoring == "loss" or (scoring == "auto" and classifier):
            expected = (-log_loss(y_val, model.predict_proba(X_val), labels=model.classes_)
                        if classifier else -mean_squared_error(y_val, model.predict(X_val)))
        else:
            expected = model.score(X_val, y_val)
        assert model.best_validation_score_ == max(model.validation_scores_)
        assert model.best_validation_score_ == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_auto_early_stopping_keeps_kfac_from_fitting_the_noise():
    """On a mostly-noise regression K-FAC without a split fits the noise; with the
    default it does not (the defaults benchmark's diabetes and forest-fires cells)."""
    X, y = noisy_regression(seed=1)
    X_test, y_test = noisy_regression(n=2000, seed=2)
    scores = {}
    for early_stopping in ("auto", False):
        reg = KFACRegressor(hidden_layer_sizes=(100,), early_stopping=early_stopping,
                            random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            reg.fit(X, y)
        scores[early_stopping] = reg.score(X_test, y_test)
    assert scores["auto"] > scores[False] + 0.1
    assert scores["auto"] > 0.0


@pytest.mark.parametrize("final_score, keeps_last", [(0.9, True), (0.05, False)])
def test_a_max_time_stop_keeps_its_last_weights_when_they_validate_better(
        monkeypatch, final_score, keeps_last):
    """Stopped by max_time within an epoch, the weights reached since the last epoch's
    validation are kept if they score better than the best epoch's, else restored."""
    import skkfac.training

    class FakeTime:  # every mini-batch of the training loop lasts half a second
        now = 0.0

        @classmethod
        def perf_counter(cls):
            cls.now += 0.5
            return cls.now

    monkeypatch.setattr(skkfac.training, "time", FakeTime)
    scores = iter([0.1, 0.2, final_score])  # epoch 1, epoch 2, the stop
    monkeypatch.setattr(KFACRegressor, "_evaluate_tensors",
                        lambda self, X, y: (0.0, next(scores)))
    epoch_ends = []

    class Snapshot:
        def on_epoch_end(self, event):
            epoch_ends.append([p.detach().clone() for p in event.estimator.model_.parameters()])

    X, y = noisy_regression()
    reg = KFACRegressor(hidden_layer_sizes=(4,), batch_size=180, artificial_batch_size=180,
                        max_time=2.5, callbacks=[Snapshot()], random_state=0)
    reg.fit(X, y)
    assert reg.stop_reason_ == "max_time" and reg.n_iter_ == 2 and reg.n_updates_ == 5
    assert reg.best_validation_score_ == max(0.2, final_score)
    restored = all(torch.equal(p, q) for p, q in zip(reg.model_.parameters(), epoch_ends[-1]))
    assert restored is not keeps_last


def test_data_parallel_ranks_share_the_minimum_update_size(monkeypatch):
    """Each of 2 ranks needs half of the 128 samples: 64 (rank sizes are shares)."""
    import skkfac.estimators.base as base

    X, y = small_classification()
    clf = KFACClassifier(hidden_layer_sizes=(4,), batch_size=16, max_iter=1)
    with pytest.warns(UserWarning, match="updates of 128 samples"):
        clf.fit(X, y)
    monkeypatch.setattr(base, "_world_size", lambda: 2)
    with pytest.warns(UserWarning, match="updates of 64 samples"):
        assert clf._effective_update_size(16, 100) == 64
    assert clf._effective_update_size(64, 100) is None


def test_scoring_takes_scikit_learn_scorers_and_callables():
    """A scorer name or callable judges the held-out split through the public API, on
    the targets as fit got them (labels, 1-d targets, the inputs for the autoencoder)."""
    from sklearn.metrics import f1_score, make_scorer, mean_absolute_error

    from skkfac import KFACAutoencoder

    X, y = small_classification()
    labels = np.array(["a", "b", "c"])[y]
    X_reg, y_reg = noisy_regression()
    cases = [
        (KFACClassifier, X, labels, "f1_macro",
         lambda m, Xv, yv: f1_score(yv, m.predict(Xv), average="macro")),
        (KFACRegressor, X_reg, y_reg, "neg_mean_absolute_error",
         lambda m, Xv, yv: -mean_absolute_error(yv, m.predict(Xv))),
        (KFACRegressor, X_reg, y_reg, make_scorer(mean_absolute_error, greater_is_better=False),
         lambda m, Xv, yv: -mean_absolute_error(yv, m.predict(Xv))),
        (KFACAutoencoder, X_reg, None, "neg_mean_squared_error",
         lambda m, Xv, yv: -np.mean((m.predict(Xv) - Xv) ** 2)),
    ]
    for cls, X_fit, y_fit, scoring, score in cases:
        sizes = {"encoder_layer_sizes": (4,)} if cls is KFACAutoencoder else {
            "hidden_layer_sizes": (8,)}
        model = cls(**sizes, scoring=scoring, early_stopping=True, max_iter=15,
                    random_state=0)
        _, X_val, _, y_val = fit_recording_the_split(model, X_fit, y_fit)
        if cls is KFACClassifier:
            y_val = model.classes_[y_val]
        elif cls is KFACRegressor:
            y_val = y_val.ravel()
        assert model.best_validation_score_ == max(model.validation_scores_)
        assert model.best_validation_score_ == pytest.approx(score(model, X_val, y_val),
                                                             rel=1e-5, abs=1e-7), scoring


def test_an_unknown_scorer_name_is_refused_at_fit_even_without_a_split():
    X, y = small_classification()
    with pytest.raises(ValueError, match="'accuracy_typo' is not 'auto', 'loss'"):
        KFACClassifier(hidden_layer_sizes=(4,), scoring="accuracy_typo",
                       early_stopping=False).fit(X, y)
