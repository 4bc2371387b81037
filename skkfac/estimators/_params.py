"""The constructor shared by the regressor and the classifier (one parameter list)."""

from __future__ import annotations

from skkfac.estimators.base import BaseKFACEstimator


class MLPEstimator(BaseKFACEstimator):
    """A network ``n_features → hidden_layer_sizes → n_outputs`` (see the subclasses)."""

    def __init__(self, hidden_layer_sizes=(100,), activation="tanh", *, solver="kfac",
                 alpha=0.0, batch_size="auto", artificial_batch_size=None,
                 learning_rate_init=None, momentum=0.9, nesterovs_momentum=True,
                 damping=0.1, damping_scheme="tikhonov", adapt_damping=True,
                 adaptive_step=True, kl_clip=None,
                 stat_decay="linear", momentum_rate=1.0, momentum_max=0.6,
                 inv_update_freq=10, fisher="sampled", curvature_batch_size=256,
                 max_iter=200, max_time=None, tol=1e-4, n_iter_no_change=10,
                 early_stopping=False, validation_fraction=0.1, shuffle=True,
                 eval_every=None, eval_interval=None, random_state=None, verbose=False,
                 warm_start=False, device="auto", dtype="float32"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.artificial_batch_size = artificial_batch_size
        self.learning_rate_init = learning_rate_init
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.damping = damping
        self.damping_scheme = damping_scheme
        self.adapt_damping = adapt_damping
        self.adaptive_step = adaptive_step
        self.kl_clip = kl_clip
        self.stat_decay = stat_decay
        self.momentum_rate = momentum_rate
        self.momentum_max = momentum_max
        self.inv_update_freq = inv_update_freq
        self.fisher = fisher
        self.curvature_batch_size = curvature_batch_size
        self.max_iter = max_iter
        self.max_time = max_time
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.shuffle = shuffle
        self.eval_every = eval_every
        self.eval_interval = eval_interval
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.device = device
        self.dtype = dtype
