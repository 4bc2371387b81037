"""What every solver shares: micro-batch accumulation, L2 penalty, backup/restore.

A solver sees training as ``accumulate(X, y)`` called on one or more micro-batches,
then ``step()``. Gradients (and, for K-FAC, curvature statistics) are *summed* over
examples while accumulating and divided by the example count in ``step``, so an
artificial batch made of several micro-batches gives exactly the update of the
concatenated batch.
"""

from __future__ import annotations

import math

import torch
import torch._dynamo  # for its side effect, see below
from torch import nn

from skkfac.losses import get_loss
from skkfac.nn import linear_layers

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
    """

    #: Whether a diverged update can be undone and training continued.
    recovers_from_divergence = False

    def __init__(self, model: nn.Module, loss="squared_error", *, alpha: float = 0.0):
        self.model = model
        self.loss = get_loss(loss)
        self.alpha = float(alpha)
        self.layers = linear_layers(model)
        if not self.layers:
            raise ValueError("The model has no nn.Linear layer to train.")
        self.params = [p for layer in self.layers for p in layer.parameters()]
        self.n_accumulated = 0
        self.phase_times: dict[str, float] = {}
        self._backup: list[torch.Tensor] | None = None

    # -- accumulation --------------------------------------------------------------
    def accumulate(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward and backward on one micro-batch; returns the summed loss (detached)."""
        output = self.model(X)
        loss_sum = self.loss.per_example(output, y).sum()
        loss_sum.backward()
        self.n_accumulated += X.shape[0]
        return loss_sum.detach()

    def _mean_gradients(self) -> None:
        """Turn the summed gradients into the mean-loss gradient plus the L2 term."""
        scale = 1.0 / self.n_accumulated
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
        for p in self.params:
            p.grad = None

    def discard(self) -> None:
        """Drop what has been accumulated since the last step."""
        self._reset_accumulation()

    def step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

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
