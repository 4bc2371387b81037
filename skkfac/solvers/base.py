"""What every solver shares: micro-batch accumulation, L2 penalty, backup/restore.

A solver sees training as ``accumulate(X, y)`` called on one or more micro-batches,
then ``step()``, which returns a :class:`~skkfac.solvers.spec.StepReport`. Gradients
(and, for K-FAC, curvature statistics) are *summed* over examples while accumulating and
divided by the example count in ``step``, so an artificial batch made of several
micro-batches gives exactly the update of the concatenated batch (under
``precision='bf16-mixed'``, up to the bfloat16 rounding of each micro-batch's gradient).
With ``accumulate(X, y, sample_weight)`` the sums are weighted and the divisor is the sum
of the weights: the objective is the weighted mean loss ``Σ wᵢ ℓᵢ / Σ wᵢ``, and an
integer weight is the same as repeating the row.

:class:`TorchOptimizerSolver` adapts any ``torch.optim`` optimizer to this interface
(SGD and Adam are declarations on top of it).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch._dynamo  # for its side effect, see below
from sklearn.utils._param_validation import validate_parameter_constraints
from torch import nn

from skkfac.curvature.precision import reduced_precision_active
from skkfac.losses import get_loss
from skkfac.nn import linear_layers
from skkfac.solvers.mixed_precision import resolve_precision, training_autocast
from skkfac.solvers.spec import Hyperparameter, StepReport

# torch.optim.Optimizer imports torch._dynamo the first time an optimizer is built: about
# a second that would otherwise fall on the first fit of the process, outside its
# training clock. Importing it with the package puts that cost where imports are paid.


class Solver:
    """Base class of the solvers driven by :class:`skkfac.training.Trainer`.

    Parameters
    ----------
    model : torch.nn.Module
        The network; its ``nn.Linear`` layers are the trainable parameters.
    loss : str or loss object
        ``'squared_error'`` or ``'cross_entropy'`` (see :mod:`skkfac.losses`).
    alpha : float
        L2 penalty: the objective gains ``alpha / 2 * sum(W**2)`` over the weight
        matrices (biases are not penalised).
    precision : {'float32', 'bf16-mixed', 'auto'}, default='float32'
        Precision of the training passes (:mod:`skkfac.solvers.mixed_precision`).
    """

    #: The name it is registered under (set by :func:`~skkfac.solvers.spec.register_solver`).
    name: ClassVar[str]
    #: The keyword arguments the estimators pass, each declared once.
    hyperparameters: ClassVar[tuple[Hyperparameter, ...]] = ()
    #: Keyword arguments of the solver used on its own that the estimators do not offer,
    #: declared and checked the same way.
    internal_hyperparameters: ClassVar[tuple[Hyperparameter, ...]] = ()
    #: Whether the constructor takes ``random_state`` (the estimators pass one then).
    takes_random_state: ClassVar[bool] = False
    #: The reductions of data-parallel training (:class:`skkfac.distributed.Communicator`);
    #: ``None`` for a solver that trains in one process only.
    communicator = None
    #: ``batch_size='auto'`` in the estimators is ``min(auto_batch_size, n_samples)``
    #: (unless the solver's :meth:`preferred_batch_size` says otherwise).
    auto_batch_size: ClassVar[int] = 200
    #: How ``batch_size='auto'`` is chosen, for the estimators' docs (``None``: the line
    #: above).
    auto_batch_size_rule: ClassVar[str | None] = None
    #: Whether a diverged update can be undone and training continued.
    recovers_from_divergence = False
    #: Fewest samples an update should hold. When ``batch_size`` is smaller and no
    #: ``artificial_batch_size`` is given, the estimators accumulate mini-batches into
    #: updates of this size (at most ``n_samples``) and say so.
    min_update_size: ClassVar[int] = 1
    #: The losses (:mod:`skkfac.losses` names) for which the estimators'
    #: ``early_stopping='auto'`` holds out a validation split with this solver.
    early_stopping_losses: ClassVar[tuple[str, ...]] = ()
    #: Total weight accumulated since the last step, once a weighted micro-batch came
    #: (``None`` before: see :attr:`weight_accumulated`).
    _weight_total: float | None = None
    #: ``precision`` resolved: ``'float32'`` (the network's dtype) or ``'bf16-mixed'``
    #: (a class default for solvers pickled before it existed).
    training_precision: str = "float32"

    def __init__(self, model: nn.Module, loss="squared_error", *, alpha: float = 0.0,
                 precision: str = "float32"):
        self.model = model
        self.loss = get_loss(loss)
        self.alpha = float(alpha)
        self.layers = linear_layers(model)
        if not self.layers:
            raise ValueError("The model has no nn.Linear layer to train.")
        _check_only_linear_layers_train(model, self.layers)
        self.params = [p for layer in self.layers for p in layer.parameters()]
        self.precision = precision
        self.training_precision = resolve_precision(precision, self.params[0].dtype,
                                                    type(self).__name__,
                                                    self.params[0].device)
        #: Rows accumulated since the last step.
        self.n_accumulated = 0
        self.phase_times: dict[str, float] = {}
        self._backup: list[torch.Tensor] | None = None

    def preferred_batch_size(self) -> int:
        """The mini-batch size ``batch_size='auto'`` asks for (before the ``n_samples``
        cap): :attr:`auto_batch_size`."""
        return self.auto_batch_size

    # -- accumulation --------------------------------------------------------------
    def _forward(self, model: nn.Module, X: torch.Tensor) -> torch.Tensor:
        """``model(X)`` in the training precision, returned in the weights' dtype: under
        bf16-mixed the output is cast to float32, so that the loss (computed outside
        autocast) is float32. The backward pass is made outside autocast too (as PyTorch
        advises); it runs in the dtypes the forward pass chose."""
        with training_autocast(self.training_precision, self.params[0].device):
            output = model(X)
        return output.to(self.params[0].dtype)

    def forward_is_exact(self) -> bool:
        """Whether training forward passes now run in the weights' full precision (not
        under ``'bf16-mixed'``, autocast, TF32 or reduced-precision float32 matmuls)."""
        return (self.training_precision == "float32"
                and not reduced_precision_active(self.params[0].device))

    def accumulate(self, X: torch.Tensor, y: torch.Tensor,
                   sample_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Forward and backward on one micro-batch; returns the summed loss (detached).

        Parameters
        ----------
        X : torch.Tensor of shape (n_rows, n_features)
            Inputs of the micro-batch.
        y : torch.Tensor
            Their targets, as the loss takes them.
        sample_weight : torch.Tensor of shape (n_rows,) or None, default=None
            Non-negative weights of the rows: the loss summed is ``Σ wᵢ ℓᵢ`` and the
            update's mean divides by ``Σ wᵢ`` (``None``: every weight is 1).

        Returns
        -------
        loss_sum : torch.Tensor
            The (weighted) summed loss of the micro-batch, a detached 0-d tensor.
        """
        weight = self._check_sample_weight(sample_weight, X)
        total = None if weight is None else weight_sums(weight)[-1]
        output = self._forward(self.model, X)
        loss_sum = weighted_sum(self.loss.per_example(output, y), weight)
        loss_sum.backward()
        self._count(X.shape[0], total)
        return loss_sum.detach()

    def _check_sample_weight(self, sample_weight, X: torch.Tensor) -> torch.Tensor | None:
        """``sample_weight`` as a tensor of the network's dtype on ``X``'s device, one
        weight per row (``None`` stays ``None``)."""
        if sample_weight is None:
            return None
        weight = torch.as_tensor(sample_weight, device=X.device).to(self.params[0].dtype)
        if weight.shape != (X.shape[0],):
            raise ValueError(f"sample_weight has shape {tuple(weight.shape)}; expected one "
                             f"weight per row of X, ({X.shape[0]},).")
        return weight

    @property
    def weight_accumulated(self) -> int | float:
        """Total weight of the rows accumulated since the last step, the divisor of the
        update's means: :attr:`n_accumulated` until a weighted micro-batch comes (so a
        solver that only counts rows stays correct), then a float."""
        return self.n_accumulated if self._weight_total is None else self._weight_total

    def _count(self, n_rows: int, total: float | None) -> None:
        """Count ``n_rows`` accumulated rows of total weight ``total`` (``None``:
        unweighted, ``n_rows``)."""
        if total is not None or self._weight_total is not None:
            self._weight_total = self.weight_accumulated + (n_rows if total is None else total)
        self.n_accumulated += n_rows

    def _mean_gradients(self) -> None:
        """Turn the summed gradients into the mean-loss gradient plus the L2 term."""
        scale = 1.0 / self.weight_accumulated
        for layer in self.layers:
            for p in layer.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                else:
                    p.grad.mul_(scale)
            if self.alpha:
                layer.weight.grad.add_(layer.weight.detach(), alpha=self.alpha)

    def _reset_accumulation(self) -> None:
        self.n_accumulated = 0
        self._weight_total = None
        for p in self.params:
            p.grad = None

    def discard(self) -> None:
        """Drop what has been accumulated since the last step."""
        self._reset_accumulation()

    def copy_pending_data(self) -> None:
        """Keep copies, not views, of the training rows held for the next ``step``.

        Called when training pauses in the middle of an update (``partial_fit``): the
        micro-batches are views into the trainer's shuffled copy of the whole data set,
        which must not stay alive (nor be pickled) for the sake of a few rows.
        """

    def step(self) -> StepReport:  # pragma: no cover - abstract
        """One update from everything accumulated since the last step."""
        raise NotImplementedError

    @classmethod
    def check_hyperparameters(cls, **values) -> None:
        """Raise a clear error when a value breaks its declared constraints."""
        declared = {h.name: h.constraints
                    for h in (*cls.hyperparameters, *cls.internal_hyperparameters)}
        validate_parameter_constraints(
            {name: declared[name] for name in values}, values, caller_name=cls.__name__)

    # -- divergence handling -----------------------------------------------------------
    def backup(self) -> None:
        """Remember the current weights (called by the trainer before each step)."""
        with torch.no_grad():
            if self._backup is None:
                self._backup = [p.detach().clone() for p in self.params]
            else:
                torch._foreach_copy_(self._backup, [p.detach() for p in self.params])

    @property
    def has_backup(self) -> bool:
        return self._backup is not None

    def restore(self) -> None:
        """Put back the weights saved by the last :meth:`backup`."""
        if self._backup is None:
            return
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in self.params], self._backup)
        self._reset_accumulation()
        self.on_restore()

    def on_restore(self) -> None:
        """Hook for solvers to react to a rejected update (e.g. raise damping)."""

    def is_rejected(self, batch_loss: float) -> bool:
        """Whether the loss seen after the last update means that update must be undone."""
        return not math.isfinite(batch_loss)


class TorchOptimizerSolver(Solver):
    """A first-order solver: a ``torch.optim`` optimizer applied to the mean gradient.

    Subclasses build ``self.optimizer`` over ``self.params`` in their constructor and
    may say which optimizer option is the step's momentum (:attr:`momentum_option`).
    Updates are never rejected by the solver itself; a diverged loss is handled by the
    trainer (:class:`skkfac.training.Trainer`).
    """

    #: The optimizer option reported as :attr:`StepReport.momentum` (None: not reported).
    momentum_option: ClassVar[str | None] = None

    optimizer: torch.optim.Optimizer

    def step(self) -> StepReport:
        """Apply the optimizer to the mean gradient of what was accumulated."""
        if self.n_accumulated == 0:
            raise RuntimeError("step() needs accumulate(X, y) first: nothing accumulated.")
        if self.weight_accumulated == 0:
            self._reset_accumulation()
            raise ValueError(_ZERO_WEIGHT_MESSAGE)
        self._mean_gradients()
        self.optimizer.step()
        self._reset_accumulation()
        group = self.optimizer.param_groups[0]
        momentum = group[self.momentum_option] if self.momentum_option else None
        return StepReport(accepted=True, step_size=group["lr"], momentum=momentum)

    def on_restore(self) -> None:
        """After a rejected update: forget the optimizer's running state (momentum)."""
        self.optimizer.state.clear()


_ZERO_WEIGHT_MESSAGE = (
    "Every row accumulated for this update has sample_weight 0: the weighted mean loss "
    "is undefined. What was accumulated is dropped; accumulate rows of positive weight.")


def rows_of(weight: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    """The weights of rows ``start:stop`` (``None`` without weights)."""
    return None if weight is None else weight[start:stop]


def weighted_sum(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """``Σ wᵢ vᵢ`` over the rows (``Σ vᵢ`` without weights)."""
    return values.sum() if weight is None else (values * weight).sum()


def weight_sums(weight: torch.Tensor, *firsts: int) -> list[float]:
    """``Σ w`` over the first ``n`` rows for each ``n`` in ``firsts``, then over all rows,
    in float64 and read from the device in one transfer. Negative or non-finite weights
    raise a ValueError.

    Examples
    --------
    >>> import torch
    >>> weight_sums(torch.tensor([1.0, 2.0, 0.5]), 2)
    [3.0, 3.5]
    """
    weight = weight.to(torch.float64)
    if not weight.numel():
        return [0.0] * (len(firsts) + 1)
    *sums, smallest = torch.stack([weight[:n].sum() for n in firsts]
                                  + [weight.sum(), weight.min()]).tolist()
    if not (math.isfinite(sums[-1]) and smallest >= 0):
        raise ValueError("sample_weight must hold finite, non-negative numbers; got a "
                         f"{'negative' if smallest < 0 else 'non-finite'} weight.")
    return sums


def copy_tensors(obj, device: torch.device | None = None):
    """``obj`` (tensors in dicts, lists and tuples, named or not) with every tensor copied,
    to ``device`` when one is given (dtypes kept)."""
    if isinstance(obj, torch.Tensor):
        return obj.clone() if device is None else obj.to(device=device, copy=True)
    if isinstance(obj, dict):
        return {key: copy_tensors(item, device) for key, item in obj.items()}
    if isinstance(obj, list):
        return [copy_tensors(item, device) for item in obj]
    if isinstance(obj, tuple):
        items = [copy_tensors(item, device) for item in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    return obj


def _check_only_linear_layers_train(model: nn.Module, layers: list[nn.Linear]) -> None:
    """Refuse a model with trainable parameters outside its ``nn.Linear`` layers: the
    solvers update only those layers, so the others would silently never move."""
    owned = {id(p) for layer in layers for p in layer.parameters()}
    others = [name for name, p in model.named_parameters()
              if p.requires_grad and id(p) not in owned]
    if others:
        raise ValueError(
            f"The model has trainable parameters outside its nn.Linear layers "
            f"({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}), which this "
            "solver would never update: it trains nn.Linear layers only. Freeze them "
            "(requires_grad_(False)) or train them with another optimizer.")
