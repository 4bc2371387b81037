"""Stochastic gradient descent with Nesterov momentum (the study's baseline, §6.6)."""

from __future__ import annotations

from numbers import Real

import torch
from sklearn.utils._param_validation import Interval

from skkfac.solvers.base import TorchOptimizerSolver
from skkfac.solvers.mixed_precision import PRECISION
from skkfac.solvers.spec import Hyperparameter, register_solver


@register_solver("sgd")
class NesterovSGD(TorchOptimizerSolver):
    """SGD with (Nesterov) momentum on top of :class:`torch.optim.SGD`.

    Parameters
    ----------
    model : torch.nn.Module
        The network; its ``nn.Linear`` layers are trained.
    loss : {'squared_error', 'cross_entropy'} or loss object, default='squared_error'
        Per-example loss (:mod:`skkfac.losses`).
    lr : float, default=0.01
        Learning rate.
    momentum : float, default=0.9
        Momentum factor in ``[0, 1)``.
    nesterov : bool, default=True
        Nesterov's look-ahead momentum (requires ``momentum > 0``).
    alpha : float, default=0.0
        L2 penalty on the weights (see :class:`skkfac.solvers.Solver`).
    precision : {'float32', 'bf16-mixed', 'auto'}, default='float32'
        Precision of the training passes (:data:`~skkfac.solvers.mixed_precision.PRECISION`).

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
    >>> report = sgd.step()   # a StepReport
    >>> report.step_size, report.momentum
    (0.1, 0.9)
    >>> for _ in range(20):
    ...     last = float(sgd.accumulate(X, y))
    ...     report = sgd.step()
    >>> last < first
    True
    """

    hyperparameters = (
        Hyperparameter("lr", 0.01, [Interval(Real, 0, None, closed="neither")],
                       "the step size.", estimator_name="learning_rate_init"),
        Hyperparameter("momentum", 0.9, [Interval(Real, 0, 1, closed="left")],
                       "Momentum of the SGD update."),
        Hyperparameter("nesterov", True, ["boolean"], "Use Nesterov's momentum (SGD).",
                       estimator_name="nesterovs_momentum"),
        PRECISION,
    )
    auto_batch_size = 200
    momentum_option = "momentum"

    def __init__(self, model, loss="squared_error", *, lr=0.01, momentum=0.9,
                 nesterov=True, alpha=0.0, precision="float32"):
        super().__init__(model, loss, alpha=alpha, precision=precision)
        self.check_hyperparameters(lr=lr, momentum=momentum, nesterov=nesterov)
        self.optimizer = torch.optim.SGD(self.params, lr=lr, momentum=momentum,
                                         nesterov=bool(nesterov and momentum > 0))
