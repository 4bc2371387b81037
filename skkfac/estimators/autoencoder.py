"""``KFACAutoencoder``: a mirrored deep autoencoder trained on reconstruction error."""

from __future__ import annotations

from numbers import Integral
from typing import ClassVar

import numpy as np
from sklearn.base import ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_array
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from skkfac.estimators._checks import as_layer_sizes
from skkfac.estimators.base import BaseKFACEstimator, store_parameters, weighted_mean
from skkfac.estimators.docs import document


@document
class KFACAutoencoder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseKFACEstimator):
    """Deep autoencoder trained by K-FAC, Nesterov SGD or Adam.

    The network is ``n_features → encoder_layer_sizes → mirrored decoder → n_features``;
    the default is the study's (and Hinton & Salakhutdinov's) MNIST autoencoder
    784-1000-500-250-30-250-500-1000-784. Every hidden layer, the code layer included,
    applies ``activation``; the output layer is linear. The loss is the per-feature mean
    squared reconstruction error.

    Parameters
    ----------
    <parameters>

    Attributes
    ----------
    <fitted attributes>

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skkfac import KFACAutoencoder
    >>> X = load_digits().data / 16.0
    >>> ae = KFACAutoencoder(encoder_layer_sizes=(32, 8), max_iter=20, random_state=0)
    >>> ae.fit(X).transform(X).shape
    (1797, 8)
    >>> bool(ae.score(X) > -0.1)   # negative mean squared reconstruction error
    True
    """

    _parameter_constraints: ClassVar[dict] = {
        **BaseKFACEstimator._parameter_constraints,
        "encoder_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
    }
    _loss_name = "squared_error"
    _supervised = False
    _network_parameters = ("encoder_layer_sizes", "activation", "dtype")

    def __init__(self, encoder_layer_sizes=(1000, 500, 250, 30), activation="tanh", *,
                 solver="kfac", alpha="auto", batch_size="auto", artificial_batch_size=None,
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

    def _layer_sizes(self):
        encoder = as_layer_sizes(self.encoder_layer_sizes)
        return encoder + encoder[-2::-1]

    def _validate_layer_sizes(self):
        encoder = as_layer_sizes(self.encoder_layer_sizes)
        if not encoder or any(not isinstance(s, Integral) or s < 1 for s in encoder):
            raise ValueError("encoder_layer_sizes must be a non-empty tuple of positive "
                             f"integers, got {self.encoder_layer_sizes!r}.")

    def fit(self, X, y=None, sample_weight=None, eval_set=None):
        """Train to reconstruct ``X``; ``eval_set=X_val`` records learning curves.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training samples (inputs and targets).
        y : None
            Ignored.
        <sample_weight>
        eval_set : array-like, tuple or None, default=None
            Held-out inputs ``X_val`` (or ``(X_val,)``/``(X_val, None)``), evaluated into
            ``history_``; never trained on.

        Returns
        -------
        self : KFACAutoencoder
        """
        self._validate_params()
        return self._fit(X, None, sample_weight=sample_weight, eval_set=eval_set)

    def partial_fit(self, X, y=None, sample_weight=None):
        """One epoch over ``X``, continuing from the current state.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input samples.
        y : None
            Ignored.
        <sample_weight>

        Returns
        -------
        self : KFACAutoencoder
        """
        if not hasattr(self, "model_"):
            self._validate_params()
        return self._fit(X, None, sample_weight=sample_weight, incremental=True)

    def _encode_targets(self, y):
        return y

    def _n_outputs(self, y_encoded):
        return y_encoded.shape[1]

    def _split_eval_set(self, eval_set):
        if isinstance(eval_set, (tuple, list)) and len(eval_set) in (1, 2):
            return eval_set[0], None
        return eval_set, None

    def _score_outputs(self, output, target, weight=None):
        if weight is None:
            return -float((output - target).square().mean())
        return -float(weighted_mean((output - target).square().mean(dim=1), weight))

    @property
    def _n_features_out(self) -> int:
        """Code size: ``get_feature_names_out`` names the codes ``kfacautoencoder0``..."""
        check_is_fitted(self, "model_")
        return self._code_size

    @property
    def _n_encoder_modules(self) -> int:
        # Each encoder layer is a Linear followed by its activation.
        return 2 * len(self._built_with["encoder_layer_sizes"])

    @property
    def _code_size(self) -> int:
        # Of the fitted network, whatever set_params has changed since.
        return self._built_with["encoder_layer_sizes"][-1]

    def transform(self, X):
        """The code (output of the last encoder layer, after its activation).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input samples.

        Returns
        -------
        code : ndarray of shape (n_samples, encoder_layer_sizes[-1])
        """
        check_is_fitted(self, "model_")
        self._follow_device()  # before taking the encoder out of the network
        return self._predict_outputs(X, self.model_[:self._n_encoder_modules])

    def inverse_transform(self, X):
        """Decode codes back to the input space.

        Parameters
        ----------
        X : array-like of shape (n_samples, encoder_layer_sizes[-1])
            Codes, as :meth:`transform` returns them.

        Returns
        -------
        X_reconstructed : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self, "model_")
        self._follow_device()
        codes = self._check_codes(X)
        return self._forward(self._to_tensor(codes),
                             self.model_[self._n_encoder_modules:]).cpu().numpy()

    def _check_codes(self, X):
        codes = check_array(X, dtype=(np.float64, np.float32))
        if codes.shape[1] != self._code_size:
            raise ValueError(f"X has {codes.shape[1]} features, but the code size of this "
                             f"autoencoder is {self._code_size}.")
        return codes

    def predict(self, X):
        """Reconstruction of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input samples.

        Returns
        -------
        X_reconstructed : ndarray of shape (n_samples, n_features)
        """
        return self._predict_outputs(X)

    def score(self, X, y=None, sample_weight=None):
        """Negative mean squared reconstruction error (higher is better).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input samples.
        y : None
            Ignored.
        sample_weight : array-like of shape (n_samples,) or None, default=None
            Weights of the samples' errors.

        Returns
        -------
        score : float
        """
        reconstruction = self.predict(X)
        X = np.asarray(X, dtype=reconstruction.dtype)
        errors = ((reconstruction - X) ** 2).mean(axis=1)
        return -float(np.average(errors, weights=sample_weight))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        # Outputs are in the network's dtype, whatever the input's.
        tags.transformer_tags.preserves_dtype = [self.dtype]
        return tags
