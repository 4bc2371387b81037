"""The fit logic shared by the three estimators.

Subclasses only say how targets are encoded (:meth:`_encode_targets`), how many outputs
the network has, which loss it trains and how a held-out set is scored.
"""

from __future__ import annotations

import math
import time
import warnings
from numbers import Integral, Real
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import check_scoring
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from skkfac import devices
from skkfac._threads import torch_threads
from skkfac.callbacks import LogProgress, check_callbacks, verbose_logging
from skkfac.devices import resolve_device
from skkfac.divergence import constant_prediction_loss
from skkfac.estimators._checks import (
    as_layer_sizes,
    check_n_outputs,
    check_representable,
    check_same_network,
)
from skkfac.estimators._refit import EvidenceRefit
from skkfac.estimators._regularisation import automatic_alpha
from skkfac.estimators._transaction import fit_transaction
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


class BaseKFACEstimator(EvidenceRefit, BaseEstimator):
    """Shared parameters, validation, fitting, prediction and learning curves."""

    _parameter_constraints: ClassVar[dict] = {
        "activation": [StrOptions(set(ACTIVATIONS))],
        "solver": [RegisteredSolver()],
        "alpha": [Interval(Real, 0, None, closed="left"), StrOptions({"auto", "prior"})],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "artificial_batch_size": [None, Interval(Integral, 1, None, closed="left")],
        # The solvers' options, from their declarations (skkfac.solvers.spec).
        **{name: parameter.constraints
           for name, parameter in estimator_parameters().items()},
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "max_time": [None, Interval(Real, 0, None, closed="neither")],
        "max_wall_time": [None, Interval(Real, 0, None, closed="neither")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": [StrOptions({"auto"}), "boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        # 'auto', 'loss', a scikit-learn scorer name (checked at fit), a callable or None.
        "scoring": [str, callable, None],
        "shuffle": ["boolean"],
        "eval_every": [None, Interval(Integral, 1, None, closed="left")],
        "eval_interval": [None, Interval(Real, 0, None, closed="neither")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callbacks": [None, list],
        "warm_start": ["boolean"],
        "device": [str, torch.device],
        "dtype": [StrOptions(set(DTYPES))],
        "n_threads": [None, Interval(Integral, None, -1, closed="right"),
                      Interval(Integral, 1, None, closed="left")],
    }

    # -- hooks for subclasses --------------------------------------------------------------
    _loss_name = "squared_error"
    #: The parameters that shape the network: a continuing fit must not change them.
    _network_parameters = ("hidden_layer_sizes", "activation", "dtype")

    def _layer_sizes(self) -> tuple[int, ...]:
        return as_layer_sizes(self.hidden_layer_sizes)

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

    def _score_outputs(self, output: torch.Tensor, target: torch.Tensor,
                       weight: torch.Tensor | None = None) -> float:
        """The estimator's ``score`` computed from network outputs (higher is better),
        with the rows weighted by ``weight`` when given."""
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
        if isinstance(self.scoring, str) and self.scoring not in ("auto", "loss"):
            try:
                check_scoring(self, scoring=self.scoring)
            except ValueError as error:
                raise ValueError(
                    f"scoring={self.scoring!r} is not 'auto', 'loss', None, a callable "
                    "or a scikit-learn scorer name (sklearn.metrics.get_scorer_names())."
                ) from error

    def _effective_batch_size(self, n_samples: int) -> int:
        if self.batch_size == "auto":
            # An update may not hold fewer samples than one mini-batch.
            return min(self.solver_.preferred_batch_size(), n_samples,
                       self.artificial_batch_size or n_samples)
        if self.batch_size > n_samples:
            warnings.warn(f"Got batch_size={self.batch_size} larger than the number of "
                          f"samples ({n_samples}); using {n_samples}.", UserWarning,
                          stacklevel=4)
        return min(self.batch_size, n_samples)

    #: ``early_stopping='auto'`` holds out a validation split only when it gets at least
    #: this many samples.
    MIN_AUTO_VALIDATION_SAMPLES = 10

    def _automatic_batch_size(self, X, y=None) -> int:
        """The mini-batch ``batch_size='auto'`` would give a fit on ``(X, y)``, found by
        building the network and solver of a copy (nothing is trained)."""
        probe = clone(self)
        X, y = probe._validate_training_data(X, y, reset=True)
        probe._learn_target_encoding(y)
        y_encoded = probe._encode_targets(y)
        probe.alpha_ = 0.0  # the solver's preferred batch does not depend on it
        probe._initialize(X.shape[1], probe._n_outputs(y_encoded), check_random_state(0))
        return probe.set_params(batch_size="auto")._effective_batch_size(X.shape[0])

    def _early_stopping_enabled(self, y_encoded) -> bool:
        """``early_stopping``, with ``'auto'`` resolved for the solver and the data."""
        if self.early_stopping != "auto":
            if self.early_stopping and _data_parallel():
                raise ValueError("early_stopping=True is not supported in data-parallel "
                                 "training: every rank would hold out and score its own "
                                 "validation split, and stop on its own.")
            return bool(self.early_stopping)
        if (self._loss_name not in get_solver(self.solver).early_stopping_losses
                or _data_parallel()):  # data-parallel: every rank would hold its own split
            return False
        n_validation = math.ceil(self.validation_fraction * len(y_encoded))
        if self._loss_name == "cross_entropy" and not _stratifiable(
                y_encoded, n_validation):
            return False
        return n_validation >= self.MIN_AUTO_VALIDATION_SAMPLES

    def _validation_scoring(self) -> str | None:
        """``scoring``, with ``'auto'`` resolved: the validation loss for a classifier
        (its cross-entropy, in nats whatever the data), the estimator's score (R²) for
        the squared error, whose own scale, and so ``tol``'s meaning, follows the
        targets'."""
        if self.scoring != "auto":
            return self.scoring
        return "loss" if self._loss_name == "cross_entropy" else None

    def _effective_update_size(self, batch_size: int, n_samples: int) -> int | None:
        """``artificial_batch_size``, or the solver's :attr:`min_update_size` (capped at
        ``n_samples``) when mini-batches are smaller than that and none was given.
        Data-parallel, sizes are this rank's share, and so is the minimum."""
        if self.artificial_batch_size is not None:
            return self.artificial_batch_size
        share = -(-self.solver_.min_update_size // _world_size())
        smallest = min(share, n_samples)
        if batch_size >= smallest:
            return None
        warnings.warn(
            f"solver={self.solver!r} makes updates of at least "
            f"{self.solver_.min_update_size} samples (it estimates the curvature on "
            f"them): mini-batches of batch_size={batch_size} are accumulated into "
            f"updates of {smallest} samples. Set artificial_batch_size to choose the "
            "number of samples per update.", UserWarning, stacklevel=4)
        return smallest

    def _to_tensor(self, array, *, integer: bool = False) -> torch.Tensor:
        # The fitted network's dtype, whatever set_params has changed since.
        dtype = torch.int64 if integer else next(self.model_.parameters()).dtype
        array = np.asarray(array)
        if not array.flags.writeable:  # torch cannot share read-only memory
            array = array.copy()
        return torch.as_tensor(array, dtype=dtype, device=self.device_)

    # -- building ------------------------------------------------------------------------
    def _initialize(self, n_features: int, n_outputs: int, rng) -> None:
        self.device_ = resolve_device(self.device)
        init_generator = torch.Generator().manual_seed(int(rng.randint(2**31 - 1)))
        self.model_ = build_mlp(n_features, self._layer_sizes(), n_outputs, self.activation,
                                generator=init_generator, dtype=DTYPES[self.dtype],
                                device=self.device_)
        self.n_outputs_ = n_outputs
        self._built_with = {name: getattr(self, name) for name in self._network_parameters}
        sizes = self._network_parameters[0]
        self._built_with[sizes] = as_layer_sizes(self._built_with[sizes])
        self.solver_ = self._make_solver(rng)
        self._shuffle_rng = np.random.RandomState(rng.randint(2**31 - 1))
        self._progress = TrainingProgress()

    def _make_solver(self, rng):
        """The chosen solver, built from the parameters it declares."""
        cls = get_solver(self.solver)
        arguments = solver_arguments(cls, self.get_params(deep=False))
        if cls.takes_random_state:  # K-FAC's sampled targets
            arguments["random_state"] = int(rng.randint(2**31 - 1))
        return cls(self.model_, self._loss_name, alpha=self.alpha_, **arguments)

    def _resolve_alpha(self, y_encoded, sample_weight, incremental: bool) -> float:
        """``alpha``, with ``'auto'`` resolved for the training rows
        (:func:`~skkfac.estimators._regularisation.automatic_alpha`, rows counted by
        their weights; data-parallel, the ranks' rows together, so that every rank
        trains the same objective). ``partial_fit`` does not know how many rows will
        come: there ``'auto'`` is 0."""
        if self.alpha not in ("auto", "prior"):
            return float(self.alpha)
        if incremental:
            return 0.0
        return automatic_alpha(self._loss_name, y_encoded, sample_weight,
                               total=self._sum_over_ranks)

    def _sum_over_ranks(self, values: np.ndarray) -> np.ndarray:
        """``values`` summed over the data-parallel ranks (themselves in one process)."""
        if not _data_parallel():
            return values
        import torch.distributed as dist

        summed = torch.as_tensor(values, dtype=torch.float64,
                                 device=resolve_device(self.device))
        dist.all_reduce(summed)
        return summed.cpu().numpy()

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
        X, y = validate_data(self, X, y, reset=reset, dtype=(np.float64, np.float32),
                             multi_output=self._multi_output,
                             y_numeric=self._loss_name != "cross_entropy",
                             ensure_min_samples=2)
        if self._loss_name != "cross_entropy" and y.dtype.kind not in "fiub":
            y = y.astype(np.float64)  # strings: numbers or scikit-learn's ValueError
        return X, y

    def _fit(self, X, y, *, sample_weight=None, eval_set=None, incremental: bool = False,
             classes=None):
        """Fit, or leave the estimator as it was if the call raises or is interrupted."""
        deadline = (None if self.max_wall_time is None
                    else time.perf_counter() + self.max_wall_time)
        continuing = hasattr(self, "model_") and (self.warm_start or incremental)
        with fit_transaction(self, continuing=continuing), torch_threads(self.n_threads):
            return self._fit_unguarded(X, y, sample_weight=sample_weight, eval_set=eval_set,
                                       incremental=incremental, classes=classes,
                                       first_fit=not continuing, deadline=deadline)

    def _fit_unguarded(self, X, y, *, sample_weight, eval_set, incremental, classes,
                       first_fit, deadline):
        X, y = self._validate_training_data(X, y, reset=first_fit)
        X, y, sample_weight = self._weighted_rows(X, y, sample_weight)
        self._check_fit_params()
        if not first_fit and hasattr(self, "_built_with"):
            check_same_network(self, self._built_with,
                               "partial_fit" if incremental else "warm_start=True")
        if first_fit:
            self._learn_target_encoding(y, classes)
        y_encoded = self._encode_targets(y)
        check_representable(X, np.dtype(self.dtype), "X")
        if self._supervised:
            check_representable(y_encoded, np.dtype(self.dtype), "y",
                                squared=self._loss_name == "squared_error")
        rng = check_random_state(self.random_state)
        if not first_fit:  # set_params may have changed it since the last fit
            self._follow_device()
        if first_fit:
            self.alpha_ = self._resolve_alpha(y_encoded, sample_weight, incremental)
            self._initialize(X.shape[1], self._n_outputs(y_encoded), rng)
        else:
            if y_encoded.ndim == 2:
                check_n_outputs(self.n_outputs_, y_encoded)
            if self.solver_.name != self.solver:
                self.solver_ = self._make_solver(rng)

        X_train, y_train, w_train = X, y_encoded, sample_weight
        validate = None
        self.do_early_stopping_ = not incremental and self._early_stopping_enabled(y_encoded)
        if self.do_early_stopping_:
            split = self._validation_split(X, y_encoded, rng, sample_weight)
            X_train, X_val, y_train, y_val = split[:4]
            held_out = [self._to_tensor(X_val),
                        self._to_tensor(y_val, integer=self._loss_name == "cross_entropy")]
            w_val = None
            if sample_weight is not None:  # the held-out rows keep their weights
                w_train, w_val = split[4], split[5]
                held_out.append(self._to_tensor(w_val))
            validate = self._make_validator(held_out, (X_val, y_val, w_val))
        evaluate = self._make_evaluator(eval_set)
        X_t = self._to_tensor(X_train)
        y_t = self._to_tensor(y_train, integer=self._loss_name == "cross_entropy")
        w_t = None if w_train is None else self._to_tensor(w_train)

        batch_size = self._effective_batch_size(X_train.shape[0])
        config = TrainingConfig(
            batch_size=batch_size,
            artificial_batch_size=self._effective_update_size(batch_size, X_train.shape[0]),
            max_epochs=self.max_iter,
            max_time=self.max_time, tol=self.tol, n_iter_no_change=self.n_iter_no_change,
            early_stopping=validate is not None, eval_every=self.eval_every,
            eval_interval=self.eval_interval, shuffle=self.shuffle, deadline=deadline,
            reference_loss=constant_prediction_loss(
                y_t, classification=self._loss_name == "cross_entropy", weight=w_t))
        callbacks = [LogProgress()] if self.verbose else []
        callbacks += check_callbacks(self.callbacks)
        trainer = Trainer(config, evaluate=evaluate, validate=validate, callbacks=callbacks,
                          estimator=self)
        if first_fit:
            self.evidence_alpha_ = None
        initial_weights = ([p.detach().clone() for p in self.model_.parameters()]
                           if self._evidence_refit_possible(first_fit) else None)
        with verbose_logging(bool(self.verbose)):
            started = time.perf_counter()
            progress = self._train(trainer, X_t, y_t, w_t, incremental)
            if initial_weights is not None:
                progress = self._refit_with_evidence(
                    trainer, (X_t, y_t, w_t), rng, initial_weights, progress,
                    time.perf_counter() - started)
        self._publish(progress, incremental)
        return self

    def _train(self, trainer, X, y, sample_weight, incremental) -> TrainingProgress:
        """One training run of the solver from the network's current weights."""
        self.model_.train()
        try:
            return trainer.run(self.solver_, X, y, self._progress, rng=self._shuffle_rng,
                               max_epochs=1 if incremental else None,
                               incremental=incremental, sample_weight=sample_weight)
        finally:
            self.model_.eval()

    def _make_validator(self, held_out, arrays):
        """The early-stopping score of the held-out rows, higher is better: computed on
        the tensors ``held_out`` (``X, y[, weight]``) for the estimator's score and the
        negative loss, else by the scikit-learn scorer ``scoring`` names (or is) on the
        arrays ``(X, y_encoded, weight)``, with the targets as ``fit`` got them."""
        scoring = self._validation_scoring()
        if scoring is None and self._loss_name == "squared_error" and bool(
                (held_out[1] == held_out[1][:1]).all()):
            scoring = "loss"  # R² of constant targets is 1 at a perfect fit, else 0
        if scoring == "loss":
            return lambda: -self._evaluate_tensors(*held_out)[0]
        if scoring is None:
            return lambda: self._evaluate_tensors(*held_out)[1]
        scorer = check_scoring(self, scoring=scoring)
        X_val, y_val, w_val = arrays
        y_val = self._decode_targets(y_val)
        weights = {} if w_val is None else {"sample_weight": w_val}
        return lambda: float(scorer(self, X_val, y_val, **weights))

    def _decode_targets(self, y_encoded):
        """The targets as ``fit`` was given them, from :meth:`_encode_targets`'s array."""
        return y_encoded

    def _validation_split(self, X, y, rng, sample_weight=None):
        """``[X_train, X_val, y_train, y_val]``, then ``w_train, w_val`` when there are
        sample weights: the same rows are held out with or without weights."""
        stratify = y if self._loss_name == "cross_entropy" else None
        arrays = (X, y) if sample_weight is None else (X, y, sample_weight)
        return train_test_split(*arrays, test_size=self.validation_fraction,
                                random_state=rng.randint(2**31 - 1), stratify=stratify)

    def _weighted_rows(self, X, y, sample_weight):
        """Validate ``sample_weight`` (finite, non-negative, one per row, not all zero)
        and leave out the rows of weight 0, so that fitting with a zero weight is fitting
        without the row. Weights that are all equal are the unweighted fit (``None``).

        Data-parallel, every rank keeps its rows and its weights, zeros and equal
        weights included: the ranks must run the same mini-batches and the same
        reductions (:func:`skkfac.distributed.fit_data_parallel` leaves out the rows of
        weight 0 before sharding).
        """
        if sample_weight is None:
            return X, y, None
        sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64,
                                             ensure_non_negative=True)
        if _data_parallel():
            return X, y, sample_weight
        kept = sample_weight > 0
        if not kept.all():
            X, y, sample_weight = X[kept], y[kept], sample_weight[kept]
        if np.all(sample_weight == sample_weight[0]):
            return X, y, None
        return X, y, sample_weight

    def _make_evaluator(self, eval_set):
        if eval_set is None:
            return None
        X_eval, y_eval = self._split_eval_set(eval_set)
        X_eval, y_eval = self._validate_training_data(X_eval, y_eval, reset=False)
        y_eval = self._encode_targets(y_eval)
        if self._supervised and y_eval.ndim == 2:
            check_n_outputs(self.n_outputs_, y_eval, "eval_set's y")
        X_t = self._to_tensor(X_eval)
        y_t = self._to_tensor(y_eval, integer=self._loss_name == "cross_entropy")
        return lambda: self._evaluate_tensors(X_t, y_t)

    def _split_eval_set(self, eval_set):
        if not (isinstance(eval_set, (tuple, list)) and len(eval_set) == 2):
            raise ValueError("eval_set must be a pair (X_val, y_val).")
        return eval_set

    @torch.no_grad()
    def _evaluate_tensors(self, X: torch.Tensor, y: torch.Tensor,
                          weight: torch.Tensor | None = None) -> tuple[float, float]:
        """(mean loss, score) of the current network on a held-out set, weighted by
        ``weight`` when given."""
        was_training = self.model_.training
        self.model_.eval()
        output = self._forward(X)
        loss = float(weighted_mean(get_loss(self._loss_name).per_example(output, y), weight))
        score = self._score_outputs(output, y, weight)
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
        if self.do_early_stopping_:
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
        self._follow_device()
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        with torch_threads(self.n_threads):
            return self._forward(self._to_tensor(X), module).cpu().numpy()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = str(self.device) != "cpu" and torch.cuda.is_available()
        return tags

    # -- devices -------------------------------------------------------------------------
    def _follow_device(self) -> None:
        """Move the fitted network and solver to the device ``device`` names now.

        Lets ``set_params(device=...)`` take effect at the next ``predict`` or fit: the
        solver's whole state moves too, so ``warm_start``/``partial_fit`` continue
        exactly where they stopped.
        """
        wanted = devices.target_device(self.device, self.device_)
        if wanted != self.device_:
            self._unpack(self._pack({"model_": self.model_, "solver_": self.solver_}), wanted)
            self.device_ = wanted

    def __getstate__(self):
        """Pickle the fitted state through ``torch.save`` so it can load on any machine."""
        state = dict(super().__getstate__())  # may be self.__dict__ itself
        if "model_" not in state:
            return state
        # A pickle taken mid-update (a checkpoint) must not carry the whole data set.
        self.solver_.copy_pending_data()
        parameters = self.get_params(deep=False)
        fitted = {name: state.pop(name) for name in list(state) if name not in parameters}
        state["_fitted_device"] = str(fitted["device_"])
        state["_fitted_state"] = self._pack(fitted)
        return state

    def __setstate__(self, state):
        """Unpickle, with the tensors on the device ``device`` names on this machine.

        When that device does not exist here (a GPU asked for by name, on a CPU-only
        machine), the tensors load on the CPU and a warning says so.
        """
        packed = state.pop("_fitted_state", None)
        fitted_device = torch.device(state.pop("_fitted_device", "cpu"))
        state.setdefault("scoring", "auto")  # pickled before the parameter existed
        super().__setstate__(state)
        if packed is None:
            return
        try:
            target = devices.target_device(self.device, fitted_device)
        except ValueError as error:
            target = torch.device("cpu")
            warnings.warn(f"This estimator was fitted on {fitted_device}; {error} Its "
                          "tensors were loaded on the CPU: call set_params(device='cpu') "
                          "(or another device) before predicting or fitting.",
                          UserWarning, stacklevel=2)
        self._unpack(packed, target)
        self.device_ = target
        if not hasattr(self, "evidence_alpha_"):  # fitted before the evidence refit existed
            self.evidence_alpha_ = None

    def _pack(self, fitted: dict) -> bytes:
        """Serialise fitted attributes (``torch.save``), tensors on the devices they are on."""
        # Parameters pickle without their .grad, which holds the gradient of an update
        # not finished yet (partial_fit with an artificial batch): keep it alongside.
        gradients = [p.grad for p in self.model_.parameters()]
        return devices.dumps({**fitted, "_gradients": gradients})

    def _unpack(self, packed: bytes, device: torch.device) -> None:
        """Set the attributes :meth:`_pack` saved, with every tensor on ``device``."""
        fitted = devices.loads(packed, device)
        gradients = fitted.pop("_gradients")
        self.__dict__.update(fitted)
        for parameter, gradient in zip(self.model_.parameters(), gradients):
            parameter.grad = gradient


def weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``values`` over their rows (dimension 0), weighted by ``weight``."""
    if weight is None:
        return values.mean(dim=0)
    weight = weight.to(values.dtype).reshape(-1, *(1,) * (values.dim() - 1))
    return (values * weight).sum(dim=0) / weight.sum()


def _world_size() -> int:
    """The number of ranks of the torch.distributed group of this process (1 without)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _data_parallel() -> bool:
    """Whether this process is one of several ranks of a torch.distributed group."""
    return _world_size() > 1


def _stratifiable(y_encoded, n_validation: int) -> bool:
    """Whether ``train_test_split`` can stratify the class indices ``y_encoded`` with
    ``n_validation`` rows held out: every class needs two rows, and each side at least
    one row per class."""
    counts = np.bincount(np.asarray(y_encoded, dtype=np.int64))
    n_classes = int(np.count_nonzero(counts))
    return (counts[counts > 0].min() >= 2 and n_validation >= n_classes
            and len(y_encoded) - n_validation >= n_classes)
