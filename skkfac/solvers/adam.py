"""Adam (Kingma & Ba 2015), with scikit-learn's MLP names and defaults."""

from __future__ import annotations

from numbers import Real

import torch
from sklearn.utils._param_validation import Interval

from skkfac.solvers.base import TorchOptimizerSolver
from skkfac.solvers.mixed_precision import PRECISION
from skkfac.solvers.spec import Hyperparameter, register_solver

_UNIT_INTERVAL = [Interval(Real, 0, 1, closed="left")]


@register_solver("adam")
class Adam(TorchOptimizerSolver):
    """Adam on top of :class:`torch.optim.Adam`, the default solver of scikit-learn's MLP.

    The L2 penalty ``alpha`` is added to the gradient before Adam's moments, as in
    scikit-learn (not decoupled weight decay), and only on the weight matrices.

    Parameters
    ----------
    model : torch.nn.Module
        The network; its ``nn.Linear`` layers are trained.
    loss : {'squared_error', 'cross_entropy'} or loss object, default='squared_error'
        Per-example loss (:mod:`skkfac.losses`).
    lr : float, default=0.001
        Step size.
    beta_1 : float, default=0.9
        Decay rate of the running mean of the gradient, in ``[0, 1)``.
    beta_2 : float, default=0.999
        Decay rate of the running mean of the squared gradient, in ``[0, 1)``.
    epsilon : float, default=1e-8
        Added to the square root of the second moment (numerical stability).
    alpha : float, default=0.0
        L2 penalty on the weights (see :class:`skkfac.solvers.Solver`).
    precision : {'float32', 'bf16-mixed', 'auto'}, default='float32'
        Precision of the training passes (:data:`~skkfac.solvers.mixed_precision.PRECISION`).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skkfac.solvers import Adam
    >>> _ = torch.manual_seed(0)
    >>> X, y = torch.randn(256, 4), torch.randint(0, 3, (256,))
    >>> model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    >>> adam = Adam(model, loss="cross_entropy", lr=0.01)
    >>> first = float(adam.accumulate(X, y))
    >>> adam.step().accepted
    True
    >>> for _ in range(50):
    ...     last = float(adam.accumulate(X, y))
    ...     _ = adam.step()
    >>> last < first
    True
    """

    hyperparameters = (
        Hyperparameter("lr", 0.001, [Interval(Real, 0, None, closed="neither")],
                       "the step size.", estimator_name="learning_rate_init"),
        Hyperparameter("beta_1", 0.9, _UNIT_INTERVAL,
                       "Adam's decay rate of the running mean of the gradient."),
        Hyperparameter("beta_2", 0.999, _UNIT_INTERVAL,
                       "Adam's decay rate of the running mean of the squared gradient."),
        Hyperparameter("epsilon", 1e-8, [Interval(Real, 0, None, closed="neither")],
                       "Added to the root of Adam's second moment, for stability."),
        PRECISION,
    )
    auto_batch_size = 200  # scikit-learn's MLP: min(200, n_samples)

    def __init__(self, model, loss="squared_error", *, lr=0.001, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, alpha=0.0, precision="float32"):
        super().__init__(model, loss, alpha=alpha, precision=precision)
        self.check_hyperparameters(lr=lr, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=(beta_1, beta_2),
                                          eps=epsilon)
