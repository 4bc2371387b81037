"""The training-set loss at every evaluation of a ``compare`` run.

The estimators' ``history_['train_loss']`` is the mean loss of the mini-batches trained
on since the previous evaluation (weights changing all along); the optimiser's own
objective is the loss of the current weights on the whole training set.
:func:`record_training_loss` makes an estimator evaluate a fixed set of training rows
(all of them by default) each time it evaluates its ``eval_set``, with the training
clock paused like for the ``eval_set``, and :func:`attach_training_loss` adds those
values to ``history_`` as the column ``train_set_loss``.

This hooks the estimators' evaluator factory ``_make_evaluator(eval_set)`` (a private
method: the estimators have no public hook for a second evaluation set yet).
"""

from __future__ import annotations

import numpy as np


def training_rows(n_rows: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """Indices of the training rows evaluated: all, or a seeded sample of ``limit``."""
    if limit is None or limit >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.RandomState(seed).choice(n_rows, limit, replace=False))


def record_training_loss(estimator, X, y=None, *, limit: int | None = None):
    """Make ``estimator`` evaluate ``X`` (and ``y``) whenever it evaluates its eval_set.

    Returns the list the losses are appended to, one per evaluation, in the order of
    ``history_``'s rows.
    """
    rows = training_rows(len(X), limit)
    X_rows = X[rows]
    train_set = X_rows if y is None else (X_rows, np.asarray(y)[rows])
    recorded: list[float] = []
    make = type(estimator)._make_evaluator

    def make_evaluator(eval_set):
        held_out = make(estimator, eval_set)
        training = make(estimator, train_set)
        if held_out is None:
            return None

        def evaluate():
            recorded.append(training()[0])
            return held_out()

        return evaluate

    estimator._make_evaluator = make_evaluator
    return recorded


def attach_training_loss(estimator, recorded: list) -> None:
    """Add the recorded losses to ``estimator.history_`` as ``train_set_loss``."""
    history = estimator.history_
    if len(recorded) != len(history):
        raise RuntimeError(f"{len(recorded)} training-set evaluations for {len(history)} "
                           "rows of history_: the estimators' evaluation schedule changed")
    history["train_set_loss"] = np.asarray(recorded, dtype=float)
