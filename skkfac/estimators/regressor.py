"""``KFACRegressor``: squared-error regression, one or several outputs."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import RegressorMixin

from skkfac.estimators._params import MLPEstimator
from skkfac.estimators.base import weighted_mean
from skkfac.estimators.docs import document


@document
class KFACRegressor(RegressorMixin, MLPEstimator):
    """Multi-layer perceptron regressor trained by K-FAC, Nesterov SGD or Adam.

    The loss is the mean squared error over samples and outputs. ``predict`` returns a
    1-d array when ``y`` was 1-d at fit time, else ``(n_samples, n_outputs)``.

    Parameters
    ----------
    <parameters>

    Attributes
    ----------
    <fitted attributes>

    Examples
    --------
    >>> from sklearn.datasets import make_regression
    >>> from skkfac import KFACRegressor
    >>> X, y = make_regression(n_samples=200, n_features=5, noise=0.1, random_state=0)
    >>> reg = KFACRegressor(hidden_layer_sizes=(16,), max_iter=50, random_state=0)
    >>> reg.fit(X, y / y.std()).score(X, y / y.std()) > 0.9
    True
    """

    _loss_name = "squared_error"
    _multi_output = True
    _refits_with_evidence = True

    def fit(self, X, y, sample_weight=None, eval_set=None):
        """Train on ``(X, y)``; ``eval_set=(X_val, y_val)`` records learning curves.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input samples.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets.
        <sample_weight>
        eval_set : tuple (X_val, y_val) or None, default=None
            Held-out data evaluated on the schedule of ``eval_every``/``eval_interval``
            (once per epoch by default) into ``history_``; never trained on.

        Returns
        -------
        self : KFACRegressor
        """
        self._validate_params()
        return self._fit(X, y, sample_weight=sample_weight, eval_set=eval_set)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over ``(X, y)``, continuing from the current state.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input samples.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets.
        <sample_weight>

        Returns
        -------
        self : KFACRegressor
        """
        if not hasattr(self, "model_"):
            self._validate_params()
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def _learn_target_encoding(self, y, classes=None):
        self._y_was_1d = np.ndim(y) == 1

    def _encode_targets(self, y):
        y = np.asarray(y)
        return y.reshape(len(y), -1)

    def _decode_targets(self, y_encoded):
        return y_encoded.ravel() if self._y_was_1d else y_encoded

    def _n_outputs(self, y_encoded):
        return y_encoded.shape[1]

    def _score_outputs(self, output, target, weight=None):
        residual = weighted_mean((target - output).square(), weight)
        total = weighted_mean((target - weighted_mean(target, weight)).square(), weight)
        r2 = torch.where(total > 0, 1 - residual / total.clamp_min(1e-300),
                         torch.where(residual > 0, torch.zeros_like(total),
                                     torch.ones_like(total)))
        return float(r2.mean())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def predict(self, X):
        """Predicted targets.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input samples.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_outputs)
        """
        output = self._predict_outputs(X).astype(np.float64, copy=False)
        return output.ravel() if self._y_was_1d else output
