"""Callbacks: code that runs at fixed points of training, outside the training clock.

A callback is any object with some of these methods (:class:`Callback` has them all,
doing nothing); each receives one :class:`FitEvent`:

``on_fit_begin(event)``
    Once per ``fit``/``partial_fit`` call, before the first update.
``on_update(event)``
    After every update (``event.loss``: the batch's mean loss; ``event.report``: the
    solver's :class:`~skkfac.solvers.spec.StepReport`, not read yet).
``on_evaluate(event)``
    After every row of ``history_`` is written (``event.row``), with or without an
    ``eval_set``.
``on_epoch_end(event)``
    After every epoch (``event.loss``: the epoch's mean training loss).
``on_fit_end(event)``
    Once, when training stops (``event.progress.stop_reason`` says why).

Pass them as ``callbacks=[...]`` to any estimator. They run with the training clock
paused, so they do not count against ``max_time``. On a GPU, ``on_update`` should not
read device values (``event.report.fetch()`` does), since every read waits for the
device.

Built in: :class:`LogProgress` (what ``verbose=True`` uses), :class:`ProgressBar` and
:class:`Checkpoint`.

Examples
--------
>>> from sklearn.datasets import load_iris
>>> from skkfac import KFACClassifier
>>> from skkfac.callbacks import Callback
>>> class CountUpdates(Callback):
...     def on_fit_begin(self, event):
...         self.n = 0
...     def on_update(self, event):
...         self.n += 1
>>> counter = CountUpdates()
>>> X, y = load_iris(return_X_y=True)
>>> clf = KFACClassifier(hidden_layer_sizes=(8,), max_iter=3, batch_size=50,
...                      callbacks=[counter], random_state=0)
>>> _ = clf.fit(X, y)
>>> counter.n == clf.n_updates_
True
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The methods a callback may have.
HOOKS = ("on_fit_begin", "on_update", "on_evaluate", "on_epoch_end", "on_fit_end")

logger = logging.getLogger("skkfac")


@dataclass
class FitEvent:
    """What a callback method receives.

    Attributes
    ----------
    estimator : object or None
        The estimator being trained (``None`` when a :class:`~skkfac.training.Trainer`
        runs without one).
    progress : skkfac.training.TrainingProgress
        Live counters: ``n_epochs``, ``n_updates``, ``samples_seen``, ``train_time``,
        ``history`` (rows so far), ``n_rejected_updates``, ``stop_reason``...
    config : skkfac.training.TrainingConfig
        Batch sizes, budgets and the evaluation schedule of this fit.
    max_epochs : int
        Epochs this call may run (1 for ``partial_fit``).
    n_samples : int
        Training samples per epoch.
    incremental : bool
        True for ``partial_fit``.
    loss : float or None
        ``on_update``: the batch's mean loss; ``on_epoch_end``: the epoch's mean loss.
    row : dict or None
        ``on_evaluate``: the history row just written.
    report : skkfac.solvers.spec.StepReport or None
        ``on_update``: what the solver's step reported (values may be device tensors).
    """

    estimator: Any
    progress: Any
    config: Any
    max_epochs: int
    n_samples: int
    incremental: bool = False
    loss: float | None = None
    row: dict | None = None
    report: Any = None


class Callback:
    """Base class with every hook doing nothing; override the ones you need."""

    def on_fit_begin(self, event: FitEvent) -> None:
        """Called before the first update of a ``fit``/``partial_fit`` call."""

    def on_update(self, event: FitEvent) -> None:
        """Called after every update."""

    def on_evaluate(self, event: FitEvent) -> None:
        """Called after every history row."""

    def on_epoch_end(self, event: FitEvent) -> None:
        """Called after every epoch."""

    def on_fit_end(self, event: FitEvent) -> None:
        """Called when training stops."""


def check_callbacks(callbacks) -> list:
    """The callbacks as a list; a clear error for an object with none of the hooks."""
    callbacks = list(callbacks or [])
    for i, callback in enumerate(callbacks):
        if not any(callable(getattr(callback, hook, None)) for hook in HOOKS):
            raise ValueError(f"callbacks[{i}] = {callback!r} has none of the methods "
                             f"{', '.join(HOOKS)}.")
    return callbacks


class LogProgress(Callback):
    """Log one line per epoch and per evaluation to the ``'skkfac'`` logger (INFO level).

    This is what ``verbose=True`` adds. Configure the logger as any other
    (``logging.getLogger("skkfac")``); with ``verbose=True`` and no logging configured,
    the lines go to standard output (see :func:`verbose_logging`).
    """

    def on_epoch_end(self, event: FitEvent) -> None:
        """Log the epoch's loss, the updates so far and the training time."""
        progress = event.progress
        logger.info("Epoch %d, loss = %.8f, updates = %d, time = %.2fs", progress.n_epochs,
                    event.loss, progress.n_updates, progress.train_time)

    def on_evaluate(self, event: FitEvent) -> None:
        """Log the held-out loss and score, when there is an ``eval_set``."""
        row = event.row
        if not math.isnan(row["eval_loss"]):
            logger.info("  update %d: eval loss = %.6g, eval score = %.6g at %.2fs",
                        row["update"], row["eval_loss"], row["eval_score"], row["time"])


@contextmanager
def verbose_logging(enabled: bool):
    """Make the ``'skkfac'`` logger's INFO lines visible for the duration of a fit.

    When ``enabled``: a logger whose level is not set gets INFO, and when no handler is
    configured anywhere (``logging`` not set up), a plain handler to standard output is
    added. Both are undone afterwards; a user's own logging configuration is left as it
    is.
    """
    if not enabled:
        yield
        return
    previous_level = logger.level
    handler = None
    if previous_level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not logger.hasHandlers():
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    try:
        yield
    finally:
        logger.setLevel(previous_level)
        if handler is not None:
            logger.removeHandler(handler)


class ProgressBar(Callback):
    """A :mod:`tqdm` progress bar over the training budget.

    The bar counts training seconds when the estimator has a ``max_time``, otherwise
    samples over ``max_iter`` epochs; its postfix shows the last epoch's loss and the
    last held-out loss. Needs the ``tqdm`` package.

    Parameters
    ----------
    **tqdm_options
        Passed to :class:`tqdm.tqdm` (``file``, ``leave``, ``desc``, ``mininterval``...).

    Examples
    --------
    >>> import io
    >>> from sklearn.datasets import load_iris
    >>> from skkfac import KFACClassifier
    >>> from skkfac.callbacks import ProgressBar
    >>> X, y = load_iris(return_X_y=True)
    >>> out = io.StringIO()
    >>> clf = KFACClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0,
    ...                      callbacks=[ProgressBar(file=out, desc="iris")])
    >>> _ = clf.fit(X, y)
    >>> "iris: 100%" in out.getvalue()
    True
    """

    def __init__(self, **tqdm_options):
        try:
            import tqdm  # noqa: F401
        except ImportError as error:
            raise ImportError("ProgressBar needs the tqdm package: "
                              "python -m pip install tqdm") from error
        self.tqdm_options = tqdm_options
        self._bar = None

    def __getstate__(self):
        # An open bar holds a stream and a lock: neither pickles nor copies.
        return {**self.__dict__, "_bar": None}

    def _position(self, event: FitEvent) -> float:
        progress = event.progress
        if event.config.max_time is not None:
            return min(progress.train_time - self._start, event.config.max_time)
        return progress.samples_seen - self._start

    def on_fit_begin(self, event: FitEvent) -> None:
        """Open the bar."""
        from tqdm.auto import tqdm

        if event.config.max_time is not None:
            total, unit, self._start = event.config.max_time, "s", event.progress.train_time
        else:
            total = event.max_epochs * event.n_samples
            unit, self._start = "samples", event.progress.samples_seen
        self._bar = tqdm(total=total, unit=unit, **self.tqdm_options)

    def on_update(self, event: FitEvent) -> None:
        """Advance the bar (tqdm redraws at most every ``mininterval`` seconds)."""
        self._bar.update(self._position(event) - self._bar.n)

    def on_epoch_end(self, event: FitEvent) -> None:
        """Show the epoch's loss."""
        self._bar.set_postfix(loss=f"{event.loss:.4g}", refresh=False)

    def on_evaluate(self, event: FitEvent) -> None:
        """Show the held-out loss, when there is one."""
        if not math.isnan(event.row["eval_loss"]):
            self._bar.set_postfix(eval_loss=f"{event.row['eval_loss']:.4g}", refresh=False)

    def on_fit_end(self, event: FitEvent) -> None:
        """Complete and close the bar."""
        if event.progress.stop_reason == "max_iter" or (
                event.config.max_time is None and event.incremental):
            self._bar.update(self._bar.total - self._bar.n)  # every sample was seen
        else:
            self._bar.update(self._position(event) - self._bar.n)
        self._bar.close()
        self._bar = None


class Checkpoint(Callback):
    """Save the estimator to a file during training; ``warm_start=True`` resumes it.

    The file is a pickle of the whole estimator (network, solver state, random state,
    progress), written atomically at the end of every ``every`` epochs and when training
    stops. Load it with :meth:`Checkpoint.load`, then fit again with
    ``warm_start=True`` to continue where it stopped. The saved estimator has
    ``callbacks=None``: pass them again to the resumed fit if you want them. Pickles are
    only safe to load from sources you trust; a model saved on a GPU also loads on a
    CPU-only machine (:doc:`/user_guide/gpus`).

    Parameters
    ----------
    path : str or path-like
        The file. It may contain ``{epoch}`` and ``{update}``, filled in at each save
        (one file per save); otherwise each save replaces the previous one.
    every : int, default=1
        Save after every this many epochs (counted over the estimator's life).
    at_end : bool, default=True
        Also save when training stops.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from skkfac import KFACClassifier
    >>> from skkfac.callbacks import Checkpoint
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = KFACClassifier(hidden_layer_sizes=(8,), max_iter=4, random_state=0,
    ...                      callbacks=[Checkpoint("iris-{epoch}.pkl", every=2)])
    >>> _ = clf.fit(X, y)
    >>> resumed = Checkpoint.load("iris-2.pkl")
    >>> _ = resumed.set_params(warm_start=True, max_iter=2).fit(X, y)
    """

    def __init__(self, path, every=1, at_end=True):
        self.path = path
        self.every = every
        self.at_end = at_end
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(f"every must be a positive integer, got {every!r}.")

    def on_epoch_end(self, event: FitEvent) -> None:
        """Save every ``every`` epochs."""
        if event.progress.n_epochs % self.every == 0:
            self.save(event)

    def on_fit_end(self, event: FitEvent) -> None:
        """Save the final state."""
        if self.at_end:
            self.save(event)

    def save(self, event: FitEvent) -> Path:
        """Write the estimator of ``event`` to the file; returns the file's path."""
        estimator = event.estimator
        if estimator is None:
            raise ValueError("Checkpoint saves an estimator: the trainer has none.")
        progress = event.progress
        path = Path(os.fspath(self.path).format(epoch=progress.n_epochs,
                                                update=progress.n_updates))
        # The fitted attributes (history_, n_iter_...) as they are now.
        estimator._publish(progress, event.incremental, warn=False)
        partial = path.with_name(path.name + ".partial")
        # Saved without its callbacks: they belong to the running program (and a class
        # defined in a notebook or an open stream may not pickle).
        callbacks, estimator.callbacks = estimator.callbacks, None
        try:
            with open(partial, "wb") as file:
                pickle.dump(estimator, file, protocol=pickle.HIGHEST_PROTOCOL)
        finally:
            estimator.callbacks = callbacks
        os.replace(partial, path)
        return path

    @staticmethod
    def load(path):
        """The estimator saved in ``path`` (unpickled: load only files you trust).

        Parameters
        ----------
        path : str or path-like
            A file written by :meth:`save`.

        Returns
        -------
        estimator : object
            The estimator, ready to predict or to resume with ``warm_start=True``.
        """
        with open(path, "rb") as file:
            return pickle.load(file)
