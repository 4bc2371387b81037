"""The fit logic shared by the three estimators.

Subclasses only say how targets are encoded (:meth:`_encode_targets`), how many outputs
the network has, which loss it trains and how a held-out set is scored.
"""

from __future__ import annotations

import inspect
import warnings
from numbers import Integral, Real
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from skkfac.callbacks import LogProgress, check_callbacks, verbose_logging
from skkfac.losses import get_loss
from skkfac.nn import ACTIVATIONS, build_mlp
from skkfac.solvers import get_solver
from skkfac.solvers.spec import RegisteredSolver, estimator_parameters, solver_arguments
from skkfac.training import Trainer, TrainingConfig, TrainingProgress

#: Rows per forward pass when predicting or evaluating (bounds memory).
PREDICT_CHUNK = 8192
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def store_parameters(estimator, arguments: dict) -> None:
    """Keep every constructor argument unchanged as an attribute (sklearn's rule).

    Called as ``store_parameters(self, locals())`` first thing in ``__init__``, so the
    long parameter lists are written once, in the signatures sklearn introspects.
    """
    for name, value in arguments.items():
        if name not in ("self", "__class__"):
            setattr(estimator, name, value)


def resolve_device(device: str) -> torch.device:
    """``'auto'`` → the first CUDA device when one is available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available.")
    return resolved


class BaseKFACEstimator(BaseEstimator):
    """Shared parameters, validation, fitting, prediction and learning curves."""

    _parameter_constraints: ClassVar[dict] = {
        "activation": [StrOptions(set(ACTIVATIONS))],
        "solver": [RegisteredSolver()],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "artificial_batch_size": [None, Interval(Integral, 1, None, closed="left")],
        # The solvers' options, from their declarations (skkfac.solvers.spec).
        **{name: parameter.constraints
           for name, parameter in estimator_parameters().items()},
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "max_time": [None, Interval(Real, 0, None, closed="neither")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "shuffle": ["boolean"],
        "eval_every": [None, Interval(Integral, 1, None, closed="left")],
        "eval_interval": [None, Interval(Real, 0, None, closed="neither")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callbacks": [None, list],
        "warm_start": ["boolean"],
        "device": [str],
        "dtype": [StrOptions(set(DTYPES))],
    }

    # -- hooks for subclasses --------------------------------------------------------------
    _loss_name = "squared_error"

    def _layer_sizes(self) -> tuple[int, ...]:
        return tuple(self.hidden_layer_sizes)

    def _validate_layer_sizes(self) -> None:
        sizes = self._layer_sizes()
        if any(not isinstance(s, (Integral, np.integer)) or s < 1 for s in sizes):
            raise ValueError(f"Layer sizes must be positive integers, got {sizes!r}.")

    def _learn_target_encoding(self, y, classes=None) -> None:
        """Remember how targets are encoded (classes, output shape) at the first fit."""

    def _encode_targets(self, y):  # pragma: no cover - abstract
        """Return the targets as a numpy array ready for the loss."""
        raise NotImplementedError

    def _n_outputs(self, y_encoded) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _score_outputs(self, output: torch.Tensor, target: torch.Tensor) -> float:
        """The estimator's ``score`` computed from network outputs (higher is better)."""
        raise NotImplementedError  # pragma: no cover - abstract

    # -- validation ------------------------------------------------------------------------
    def _check_fit_params(self) -> None:
        self._validate_layer_sizes()
        if (self.artificial_batch_size is not None and self.batch_size != "auto"
                and self.artificial_batch_size < self.batch_size):
            raise ValueError(
                f"artificial_batch_size={self.artificial_batch_size} must be >= "
                f"batch_size={self.batch_size}: it is the number of samples per update.")
        resolve_device(self.device)
        check_callbacks(self.callbacks)

    def _effective_batch_size(self, n_samples: int) -> int:
        if self.batch_size == "auto":
            return min(self.solver_.preferred_batch_size(), n_samples)
        if self.batch_size > n_samples:
            warnings.warn(f"Got batch_size={self.batch_size} larger than the number of "
                          f"samples ({n_samples}); using {n_samples}.", UserWarning,
                          stacklevel=4)
        return min(self.batch_size, n_samples)

    def _to_tensor(self, array, *, integer: bool = False) -> torch.Tensor:
        dtype = torch.int64 if integer else DTYPES[self.dtype]
        return torch.as_tensor(np.asarray(array), dtype=dtype, device=self.device_)

    # -- building ------------------------------------------------------------------------
    def _initialize(self, n_features: int, n_outputs: int, rng) -> None:
        self.device_ = resolve_device(self.device)
        init_generator = torch.Generator().manual_seed(int(rng.randint(2**31 - 1)))
        self.model_ = build_mlp(n_features, self._layer_sizes(), n_outputs, self.activation,
                                generator=init_generator, dtype=DTYPES[self.dtype],
                                device=self.device_)
        self.n_outputs_ = n_outputs
        self.solver_ = self._make_solver(rng)
        self._shuffle_rng = np.random.RandomState(rng.randint(2**31 - 1))
        self._progress = TrainingProgress()

    def _make_solver(self, rng):
        """The chosen solver, built from the parameters it declares."""
        cls = get_solver(self.solver)
        arguments = solver_arguments(cls, self.get_params(deep=False))
        if "random_state" in inspect.signature(cls).parameters:  # K-FAC's sampling
            arguments["random_state"] = int(rng.randint(2**31 - 1))
        return cls(self.model_, self._loss_name, alpha=self.alpha, **arguments)

    # -- fitting -----------------------------------------------------------------------------
    #: False for the autoencoder: its targets are its inputs.
    _supervised = True
    #: Whether ``y`` may have several columns (regression).
    _multi_output = False

    def _validate_training_data(self, X, y, *, reset: bool):
        if not self._supervised:
            X = validate_data(self, X, reset=reset, dtype=(np.float64, np.float32),
                              ensure_min_samples=2)
            return X, X
        return validate_data(self, X, y, reset=reset, dtype=(np.float64, np.float32),
                             multi_output=self._multi_output,
                             y_numeric=self._loss_name != "cross_entropy",
                             ensure_min_samples=2)

    def _fit(self, X, y, *, eval_set=None, incremental: bool = False, classes=None):
        first_fit = not (hasattr(self, "model_") and (self.warm_start or incremental))
        X, y = self._validate_training_data(X, y, reset=first_fit)
        self._check_fit_params()
        if first_fit:
            self._learn_target_encoding(y, classes)
        y_encoded = self._encode_targets(y)
        rng = check_random_state(self.random_state)
        if first_fit:
            self._initialize(X.shape[1], self._n_outputs(y_encoded), rng)
        elif self.solver_.name != self.solver:
            self.solver_ = self._make_solver(rng)

        X_train, y_train = X, y_encoded
        validate = None
        if self.early_stopping and not incremental:
            X_train, X_val, y_train, y_val = self._validation_split(X, y_encoded, rng)
            X_val_t = self._to_tensor(X_val)
            y_val_t = self._to_tensor(y_val, integer=self._loss_name == "cross_entropy")
            validate = lambda: self._evaluate_tensors(X_val_t, y_val_t)[1]  # noqa: E731
        evaluate = self._make_evaluator(eval_set)

        config = TrainingConfig(
            batch_size=self._effective_batch_size(X_train.shape[0]),
            artificial_batch_size=self.artificial_batch_size, max_epochs=self.max_iter,
            max_time=self.max_time, tol=self.tol, n_iter_no_change=self.n_iter_no_change,
            early_stopping=validate is not None, eval_every=self.eval_every,
            eval_interval=self.eval_interval, shuffle=self.shuffle)
        callbacks = [LogProgress()] if self.verbose else []
        callbacks += check_callbacks(self.callbacks)
        trainer = Trainer(config, evaluate=evaluate, validate=validate, callbacks=callbacks,
                          estimator=self)
        X_t = self._to_tensor(X_train)
        y_t = self._to_tensor(y_train, integer=self._loss_name == "cross_entropy")
        self.model_.train()
        with verbose_logging(bool(self.verbose)):
            progress = trainer.run(self.solver_, X_t, y_t, self._progress,
                                   rng=self._shuffle_rng,
                                   max_epochs=1 if incremental else None,
                                   incremental=incremental)
        self.model_.eval()
        self._publish(progress, incremental)
        return self

    def _validation_split(self, X, y, rng):
        from sklearn.model_selection import train_test_split

        stratify = y if self._loss_name == "cross_entropy" else None
        return train_test_split(X, y, test_size=self.validation_fraction,
                                random_state=rng.randint(2**31 - 1), stratify=stratify)

    def _make_evaluator(self, eval_set):
        if eval_set is None:
            return None
        X_eval, y_eval = self._split_eval_set(eval_set)
        X_eval, y_eval = self._validate_training_data(X_eval, y_eval, reset=False)
        y_eval = self._encode_targets(y_eval)
        X_t = self._to_tensor(X_eval)
        y_t = self._to_tensor(y_eval, integer=self._loss_name == "cross_entropy")
        return lambda: self._evaluate_tensors(X_t, y_t)

    def _split_eval_set(self, eval_set):
        if not (isinstance(eval_set, (tuple, list)) and len(eval_set) == 2):
            raise ValueError("eval_set must be a pair (X_val, y_val).")
        return eval_set

    @torch.no_grad()
    def _evaluate_tensors(self, X: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """(mean loss, score) of the current network on a held-out set."""
        was_training = self.model_.training
        self.model_.eval()
        output = self._forward(X)
        loss = float(get_loss(self._loss_name).per_example(output, y).mean())
        score = self._score_outputs(output, y)
        self.model_.train(was_training)
        return loss, score

    def _publish(self, progress: TrainingProgress, incremental: bool, *,
                 warn: bool = True) -> None:
        """Expose the training progress as sklearn-style fitted attributes.

        Also called during training by :class:`skkfac.callbacks.Checkpoint`
        (``warn=False``).
        """
        self.n_iter_ = progress.n_epochs
        self.n_updates_ = progress.n_updates
        self.t_ = progress.samples_seen
        self.train_time_ = progress.train_time
        self.loss_curve_ = list(progress.loss_curve)
        self.loss_ = self.loss_curve_[-1] if self.loss_curve_ else float("nan")
        self.n_rejected_updates_ = progress.n_rejected_updates
        self.stop_reason_ = progress.stop_reason
        self.history_ = pd.DataFrame(progress.history)
        if self.early_stopping and not incremental:
            self.validation_scores_ = list(progress.validation_scores)
            self.best_validation_score_ = progress.best_validation_score
            self.best_loss_ = None
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self.best_loss_ = progress.best_loss
        if warn and progress.stop_reason == "max_iter" and not incremental:
            warnings.warn(f"Stochastic optimizer: maximum iterations ({self.max_iter}) "
                          "reached and the optimization hasn't converged yet.",
                          ConvergenceWarning, stacklevel=4)

    # -- prediction ------------------------------------------------------------------------
    @torch.no_grad()
    def _forward(self, X: torch.Tensor, module=None) -> torch.Tensor:
        module = self.model_ if module is None else module
        return torch.cat([module(X[i:i + PREDICT_CHUNK])
                          for i in range(0, X.shape[0], PREDICT_CHUNK)] or
                         [module(X)])

    def _predict_outputs(self, X, module=None) -> np.ndarray:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        return self._forward(self._to_tensor(X), module).cpu().numpy()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.device != "cpu" and torch.cuda.is_available()
        return tags
