"""When training has diverged, and which weights to keep when it has.

The trainer shows a :class:`DivergenceMonitor` the loss of every mini-batch, measured at
the weights the next update starts from. The monitor keeps a copy of the weights with
the lowest such loss seen in the current call, and reports a *blow-up*: the loss above
``BLOW_UP_FACTOR`` times a reference loss on ``BLOW_UP_PATIENCE`` consecutive
mini-batches. The reference is the larger of

* the loss of the best constant prediction on the training targets (the mean for
  squared error, the class frequencies for cross-entropy): a network a hundred times
  worse than that has learned nothing worth keeping;
* the loss of the network's first mini-batch, so that a network that starts far off
  (unscaled inputs) is not called diverged before it had a chance to learn.

Requiring several consecutive batches keeps a single outlier batch from stopping
training. Non-finite losses are handled before the monitor sees them (the update is
undone, see :class:`skkfac.training.Trainer`).
"""

from __future__ import annotations

import math

import torch

#: A mini-batch loss above this multiple of the reference loss is a blow-up.
BLOW_UP_FACTOR = 100.0
#: Consecutive blown-up mini-batches after which training is declared diverged.
BLOW_UP_PATIENCE = 3


class DivergenceMonitor:
    """Tracks the best weights of a training call and detects loss blow-ups.

    Parameters
    ----------
    params : list of torch.Tensor
        The trained parameters (copied when a new lowest loss is seen).
    reference_loss : float
        The loss that the blow-up factor multiplies (see the module docstring).
    """

    def __init__(self, params: list[torch.Tensor], reference_loss: float):
        self.params = params
        self.reference_loss = reference_loss
        self.best_loss = math.inf
        self.best_update: int | None = None
        self._best_weights: list[torch.Tensor] | None = None
        self._blown_up = 0

    def observe(self, loss: float, n_updates: int) -> bool:
        """Record the finite ``loss`` of the current weights; True on a blow-up."""
        if loss < self.best_loss:
            self.best_loss, self.best_update = loss, n_updates
            with torch.no_grad():
                if self._best_weights is None:
                    self._best_weights = [p.detach().clone() for p in self.params]
                else:
                    torch._foreach_copy_(self._best_weights, [p.detach() for p in self.params])
        if loss > BLOW_UP_FACTOR * self.reference_loss:
            self._blown_up += 1
        else:
            self._blown_up = 0
        return self._blown_up >= BLOW_UP_PATIENCE

    def restore_best(self) -> bool:
        """Put back the weights with the lowest loss seen; False if none was seen."""
        if self._best_weights is None:
            return False
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in self.params], self._best_weights)
        return True


def constant_prediction_loss(y: torch.Tensor, *, classification: bool,
                             weight: torch.Tensor | None = None) -> float:
    """Mean loss of the best constant prediction of ``y`` (the reference scale), with the
    rows weighted by ``weight`` when given.

    Squared error (``mean_j (z_j - y_j)**2``): the mean over outputs of the variance of
    each column. Cross-entropy: the entropy of the class frequencies.
    """
    if weight is not None:
        weight = weight.to(torch.float64)
    if classification:
        counts = torch.bincount(y.reshape(-1), weights=weight).to(torch.float64)
        frequencies = counts / (y.numel() if weight is None else weight.sum())
        frequencies = frequencies[frequencies > 0]
        return float(-(frequencies * frequencies.log()).sum())
    y = y.to(torch.float64).reshape(y.shape[0], -1)
    if weight is None:
        return float(y.var(dim=0, unbiased=False).mean())
    weight = weight[:, None] / weight.sum()
    mean = (weight * y).sum(dim=0)
    return float((weight * (y - mean).square()).sum(dim=0).mean())
