"""The constructor shared by the regressor and the classifier (one parameter list)."""

from __future__ import annotations

from numbers import Integral
from typing import ClassVar

from sklearn.utils._param_validation import Interval

from skkfac.estimators.base import BaseKFACEstimator, store_parameters


class MLPEstimator(BaseKFACEstimator):
    """A network ``n_features → hidden_layer_sizes → n_outputs`` (see the subclasses)."""

    _parameter_constraints: ClassVar[dict] = {
        **BaseKFACEstimator._parameter_constraints,
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="tanh", *, solver="kfac",
                 alpha="auto", batch_size="auto", artificial_batch_size=None,
                 learning_rate_init=None, momentum=0.9, nesterovs_momentum=True,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 damping=0.1, damping_scheme="tikhonov", adapt_damping=True,
                 adaptive_step=True, kl_clip=None, stat_decay="linear", momentum_rate=1.0,
                 momentum_max=0.6, momentum_type="heavy_ball", inv_update_freq=10,
                 fisher="sampled",
                 curvature_batch_size=128, precondition_precision="auto",
                 rejection_ratio=2.0,
                 max_iter=200, max_time=None, max_wall_time=None, tol=1e-4,
                 n_iter_no_change=10, early_stopping="auto", validation_fraction=0.1,
                 scoring="auto", shuffle=True, eval_every=None, eval_interval=None,
                 random_state=None, verbose=False, callbacks=None, warm_start=False,
                 device="auto",
                 dtype="float32", precision="float32", n_threads=None):
        store_parameters(self, locals())
