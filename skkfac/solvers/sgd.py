"""Stochastic gradient descent with Nesterov momentum (the study's baseline, §6.6)."""

from __future__ import annotations

import torch

from skkfac.solvers.base import Solver


class NesterovSGD(Solver):
    """SGD with (Nesterov) momentum on top of :class:`torch.optim.SGD`.

    Parameters
    ----------
    model, loss, alpha
        See :class:`skkfac.solvers.base.Solver`.
    lr : float
        Learning rate.
    momentum : float
        Momentum factor in ``[0, 1)``.
    nesterov : bool
        Nesterov's look-ahead momentum (requires ``momentum > 0``).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skkfac.solvers import NesterovSGD
    >>> _ = torch.manual_seed(0)
    >>> X, y = torch.randn(256, 4), torch.randint(0, 3, (256,))
    >>> model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    >>> sgd = NesterovSGD(model, loss="cross_entropy", lr=0.1, momentum=0.9)
    >>> first = float(sgd.accumulate(X, y))
    >>> sgd.step()
    >>> for _ in range(20):
    ...     last = float(sgd.accumulate(X, y))
    ...     sgd.step()
    >>> last < first
    True
    """

    def __init__(self, model, loss="squared_error", *, lr=0.01, momentum=0.9,
                 nesterov=True, alpha=0.0):
        super().__init__(model, loss, alpha=alpha)
        self.optimizer = torch.optim.SGD(self.params, lr=lr, momentum=momentum,
                                         nesterov=bool(nesterov and momentum > 0))

    def step(self) -> None:
        if self.n_accumulated == 0:
            return
        self._mean_gradients()
        self.optimizer.step()
        self._reset_accumulation()

    def on_restore(self) -> None:
        self.optimizer.state.clear()
