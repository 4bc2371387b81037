"""``KFACClassifier``: softmax cross-entropy classification."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets, unique_labels

from skkfac.estimators._params import MLPEstimator
from skkfac.estimators.base import weighted_mean
from skkfac.estimators.docs import document


@document
class KFACClassifier(ClassifierMixin, MLPEstimator):
    """Multi-layer perceptron classifier trained by K-FAC, Nesterov SGD or Adam.

    The network has one output per class, a softmax and the cross-entropy loss; labels
    may be any hashable values (strings, integers).

    Parameters
    ----------
    <parameters>

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels.
    <fitted attributes>

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from skkfac import KFACClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = KFACClassifier(hidden_layer_sizes=(16,), max_iter=100, random_state=0)
    >>> clf.fit(X, y).score(X, y) > 0.9
    True
    """

    _loss_name = "cross_entropy"

    def fit(self, X, y, sample_weight=None, eval_set=None):
        """Train on ``(X, y)``; ``eval_set=(X_val, y_val)`` records learning curves.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input samples.
        y : array-like of shape (n_samples,)
            Class labels (any hashable values).
        <sample_weight>
        eval_set : tuple (X_val, y_val) or None, default=None
            Held-out data evaluated on the schedule of ``eval_every``/``eval_interval``
            (once per epoch by default) into ``history_``; never trained on.

        Returns
        -------
        self : KFACClassifier
        """
        self._validate_params()
        return self._fit(X, y, sample_weight=sample_weight, eval_set=eval_set)

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over ``(X, y)``; ``classes`` is required on the first call.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input samples.
        y : array-like of shape (n_samples,)
            Class labels.
        <sample_weight>
        classes : array-like of shape (n_classes,) or None, default=None
            Every class that may appear; required on the first call, ignored after.

        Returns
        -------
        self : KFACClassifier
        """
        if not hasattr(self, "model_"):
            self._validate_params()
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
        elif classes is not None and not np.array_equal(self.classes_, unique_labels(classes)):
            raise ValueError(f"classes={list(classes)!r} is not the same as on the first call "
                             f"to partial_fit, {self.classes_.tolist()!r}; fit a new model "
                             "to change the classes.")
        return self._fit(X, y, sample_weight=sample_weight, incremental=True,
                         classes=classes)

    def _learn_target_encoding(self, y, classes=None):
        check_classification_targets(y)
        self.classes_ = unique_labels(y if classes is None else classes)
        if len(self.classes_) < 2:
            raise ValueError("The classifier needs samples of at least 2 classes in the "
                             f"data, got one class: {self.classes_.tolist()}.")

    def _encode_targets(self, y):
        check_classification_targets(y)
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.ravel()
        unseen = np.setdiff1d(unique_labels(y), self.classes_)
        if unseen.size:
            raise ValueError(f"y contains labels not seen before: {unseen.tolist()}; "
                             f"known classes are {self.classes_.tolist()}.")
        return np.searchsorted(self.classes_, y)

    def _n_outputs(self, y_encoded):
        return len(self.classes_)

    def _decode_targets(self, y_encoded):
        return self.classes_[y_encoded]

    def _score_outputs(self, output, target, weight=None):
        return float(weighted_mean((output.argmax(dim=1) == target).to(torch.float64),
                                   weight))

    def predict_proba(self, X):
        """Class probabilities.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input samples.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Columns follow ``classes_``.
        """
        logits = torch.from_numpy(self._predict_outputs(X)).double()
        return torch.softmax(logits, dim=1).numpy()

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`, computed stably.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input samples.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
        """
        logits = torch.from_numpy(self._predict_outputs(X)).double()
        return torch.log_softmax(logits, dim=1).numpy()

    def predict(self, X):
        """Most probable class per sample.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input samples.

        Returns
        -------
        y : ndarray of shape (n_samples,)
        """
        indices = self._predict_outputs(X).argmax(axis=1)
        return self.classes_[indices]
