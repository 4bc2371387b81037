"""Callbacks: hooks, verbose logging, progress bar, checkpoints that warm_start resumes."""

import io
import logging
import pickle
import sys
import time
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_regression

from skkfac import KFACRegressor
from skkfac.callbacks import HOOKS, Checkpoint, ProgressBar, logger

# One update per mini-batch of 50 (K-FAC would otherwise accumulate them into 128).
SMALL = dict(hidden_layer_sizes=(8,), batch_size=50, artificial_batch_size=50,
             early_stopping=False, random_state=0, device="cpu")


@pytest.fixture(scope="module")
def data():
    X, y = make_regression(n_samples=300, n_features=5, noise=1.0, random_state=0)
    return X, y / y.std()


class Recorder:
    """Not a Callback subclass: any object with some of the hooks works."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if name not in HOOKS:
            raise AttributeError(name)
        return lambda event: self.calls.append((name, event.loss, event.row and
                                                dict(event.row), event.estimator))


def _fit(estimator, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return estimator.fit(X, y)


def test_hooks_are_called_at_their_points(data):
    X, y = data
    recorder = Recorder()
    reg = _fit(KFACRegressor(max_iter=3, callbacks=[recorder], **SMALL), X, y)
    names = [call[0] for call in recorder.calls]
    assert names[0] == "on_fit_begin" and names[-1] == "on_fit_end"
    assert names.count("on_fit_begin") == names.count("on_fit_end") == 1
    assert names.count("on_update") == reg.n_updates_ == 18
    assert names.count("on_epoch_end") == reg.n_iter_ == 3
    rows = [call[2] for call in recorder.calls if call[0] == "on_evaluate"]
    assert len(rows) == len(reg.history_)
    assert [row["update"] for row in rows] == reg.history_["update"].tolist()
    epoch_losses = [call[1] for call in recorder.calls if call[0] == "on_epoch_end"]
    assert epoch_losses == pytest.approx(reg.loss_curve_)
    assert all(call[3] is reg for call in recorder.calls)


def test_callbacks_are_outside_the_training_clock(data):
    X, y = data

    class Slow:
        def on_update(self, event):
            time.sleep(0.03)

    reg = _fit(KFACRegressor(solver="sgd", max_iter=2, callbacks=[Slow()], **SMALL), X, y)
    assert reg.n_updates_ == 12  # 0.36 s asleep, none of it counted
    assert reg.train_time_ < 0.2


def test_bad_callbacks_are_refused_and_params_survive_clone(data):
    X, y = data
    with pytest.raises(ValueError, match="none of the methods"):
        KFACRegressor(callbacks=[object()], **SMALL).fit(X, y)
    reg = KFACRegressor(callbacks=[Recorder(), ProgressBar(file=io.StringIO())], **SMALL)
    copy = clone(reg)
    assert len(copy.get_params()["callbacks"]) == 2
    assert copy.get_params()["callbacks"][0] is not reg.callbacks[0]


def test_verbose_logs_through_the_skkfac_logger(data, caplog):
    X, y = data
    with caplog.at_level(logging.INFO, logger="skkfac"):
        _fit(KFACRegressor(max_iter=2, verbose=True, **SMALL).set_params(), X, y)
    messages = [r.getMessage() for r in caplog.records if r.name == "skkfac"]
    assert messages[0].startswith("Epoch 1, loss = ") and len(messages) == 2


def test_verbose_prints_when_logging_is_not_configured(data, capsys, monkeypatch):
    X, y = data
    monkeypatch.setattr(logging.root, "handlers", [])
    level, handlers = logger.level, list(logger.handlers)
    reg = KFACRegressor(max_iter=2, verbose=True, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg.fit(X, y, eval_set=(X[:50], y[:50]))
    out = capsys.readouterr().out
    assert "Epoch 2, loss = " in out and "eval loss = " in out
    assert (logger.level, logger.handlers) == (level, handlers)  # restored
    _fit(KFACRegressor(max_iter=1, **SMALL), X, y)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("budget", [dict(max_iter=2), dict(max_iter=10**6, max_time=0.2)])
def test_progress_bar_reaches_the_end(data, budget):
    X, y = data
    out = io.StringIO()
    bar = ProgressBar(file=out, desc="fit", mininterval=0)
    reg = _fit(KFACRegressor(callbacks=[bar], **SMALL, **budget), X, y)
    text = out.getvalue()
    assert "fit: 100%" in text and "loss=" in text
    assert ("600/600" in text) if "max_time" not in budget else ("s/" in text or "0.2/" in text)
    assert pickle.loads(pickle.dumps(reg)).callbacks[0]._bar is None
    assert reg.callbacks[0]._bar is None  # closed


def test_progress_bar_needs_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with pytest.raises(ImportError, match="pip install tqdm"):
        ProgressBar()


@pytest.mark.parametrize("solver", ["kfac", "sgd", "adam"])
def test_checkpoint_resumes_exactly_with_warm_start(data, solver, tmp_path):
    """Six epochs in one go equal three, a checkpoint, and three more from the file."""
    X, y = data
    common = dict(solver=solver, tol=0.0, n_iter_no_change=100, **SMALL)
    path = tmp_path / "reg-{epoch}.pkl"
    whole = _fit(KFACRegressor(max_iter=6, callbacks=[Checkpoint(path, every=3)], **common),
                 X, y)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reg-3.pkl", "reg-6.pkl"]
    resumed = Checkpoint.load(tmp_path / "reg-3.pkl")
    assert resumed.n_iter_ == 3 and resumed.n_updates_ == 18
    assert len(resumed.history_) == 4  # the initial row and one per epoch
    assert resumed.callbacks is None  # saved without them
    resumed.set_params(warm_start=True, max_iter=3)
    _fit(resumed, X, y)
    assert resumed.n_iter_ == whole.n_iter_ == 6
    np.testing.assert_array_equal(resumed.predict(X), whole.predict(X))
    final = Checkpoint.load(tmp_path / "reg-6.pkl")
    np.testing.assert_array_equal(final.predict(X), whole.predict(X))


def test_checkpoint_rejects_bad_every():
    with pytest.raises(ValueError, match="every"):
        Checkpoint("x.pkl", every=0)
