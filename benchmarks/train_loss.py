"""The training-set loss at every evaluation of a ``compare`` run.

The estimators' ``history_['train_loss']`` is the mean loss of the mini-batches trained
on since the previous evaluation (weights changing all along); the optimiser's own
objective is the loss of the current weights on the whole training set.
:class:`TrainingSetLoss` is a callback (:mod:`skkfac.callbacks`) that evaluates a fixed
set of training rows (all of them by default) whenever the estimator writes a row of
``history_``, with the training clock paused like for the ``eval_set``, and stores the
value in that row: ``history_['train_set_loss']``.
"""

from __future__ import annotations

import numpy as np

from skkfac.callbacks import Callback


def training_rows(n_rows: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """Indices of the training rows evaluated: all, or a seeded sample of ``limit``."""
    if limit is None or limit >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.RandomState(seed).choice(n_rows, limit, replace=False))


class TrainingSetLoss(Callback):
    """Write ``loss(estimator, X, y)`` into every history row as ``train_set_loss``.

    Parameters
    ----------
    loss : callable
        ``loss(estimator, X, y) -> float``, e.g. :meth:`benchmarks.problems.Problem.loss`.
    X, y : array-like
        The training rows (``y`` None for an autoencoder).
    limit : int or None, default=None
        Evaluate a fixed seeded sample of this many rows instead of all of them.
    """

    def __init__(self, loss, X, y=None, *, limit: int | None = None):
        rows = training_rows(len(X), limit)
        self.loss = loss
        self.X = X[rows]
        self.y = None if y is None else np.asarray(y)[rows]

    def on_evaluate(self, event) -> None:
        """Evaluate the training rows at the current weights; store it in the row."""
        event.row["train_set_loss"] = float(self.loss(event.estimator, self.X, self.y))
