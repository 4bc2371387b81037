"""The benchmark problems: data, network, estimator and loss of each.

=============  =======================================================================
``mnist_ae``   :class:`~skkfac.KFACAutoencoder` 784-1000-500-250-30-250-500-1000-784
               (tanh) on MNIST; loss = per-pixel mean squared reconstruction error.
``regression`` :class:`~skkfac.KFACRegressor`, hidden 500-750-500-250-100, on the UCI
               CT-slice data when present, else UCI ``keggundirected`` (every output
               says which); loss = mean squared error.
``protein``    the same regressor on UCI ``protein`` (CASP, 9 features): a second
               regression stand-in, not floor-limited like ``keggundirected``.
``cifar10``    :class:`~skkfac.KFACClassifier`, hidden 3000-2000-1500-1000-250, on
               CIFAR-10; loss = cross-entropy, plus accuracy.
``digits``     :class:`~skkfac.KFACAutoencoder` 64-64-32-16-8-16-32-64-64 on
               scikit-learn's bundled 8x8 digits (no download): the quick problem.
=============  =======================================================================

Splits. The loaders give a training and a test set. The benchmark holds out a seeded
*validation* split of the training set: hyper-parameter search trains on the rest and
scores on it (the study scored its search on the test set itself); ``compare`` and the
batch-size experiments retrain on the whole training set and evaluate on the full test
set, as the study did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from skkfac.study import STUDY_TABLES

#: Parameters every benchmark estimator gets: time is the only stopping rule.
BENCH_ESTIMATOR_DEFAULTS = dict(max_iter=10**9, n_iter_no_change=10**9, tol=0.0,
                                early_stopping=False,
                                dtype="float32")

MNIST_ENCODER = (1000, 500, 250, 30)
REGRESSION_HIDDEN = (500, 750, 500, 250, 100)
CIFAR10_HIDDEN = (3000, 2000, 1500, 1000, 250)
DIGITS_ENCODER = (64, 32, 16, 8)

#: Bundled in scikit-learn: needs no data folder.
BUNDLED = ("digits",)


@dataclass
class Data:
    """Train / validation / test arrays of one problem (``y_*`` is None for autoencoders).

    ``note`` is a caveat that every output of the problem repeats (e.g. which data set
    stood in for a missing one); ``description`` is the loader's full description.
    """

    X_train: np.ndarray
    y_train: np.ndarray | None
    X_val: np.ndarray
    y_val: np.ndarray | None
    X_test: np.ndarray
    y_test: np.ndarray | None
    dataset: str
    description: str = ""
    note: str = ""

    @property
    def X_full(self) -> np.ndarray:
        """Training plus validation rows (what ``compare`` retrains on)."""
        return np.concatenate([self.X_train, self.X_val])

    @property
    def y_full(self):
        if self.y_train is None:
            return None
        return np.concatenate([self.y_train, self.y_val])

    def summary(self) -> str:
        text = (f"{self.dataset}: {len(self.X_train)} train / {len(self.X_val)} validation "
                f"/ {len(self.X_test)} test rows, {self.X_train.shape[1]} features")
        return f"{text}. NOTE: {self.note}" if self.note else text


@dataclass(frozen=True)
class Problem:
    """One benchmark problem.

    Parameters
    ----------
    name : str
    kind : {'autoencoder', 'regression', 'classification'}
    layers : tuple of int
        Encoder sizes (autoencoder) or hidden sizes.
    title : str
        Human-readable name used in tables and figures.
    loss_name : str
        What the loss is, for labels.
    n_val : int or float
        Size of the validation split held out of the training set.
    """

    name: str
    kind: str
    layers: tuple
    title: str
    loss_name: str
    n_val: float = 0.1
    study: dict = field(default_factory=dict, compare=False)

    @property
    def is_classifier(self) -> bool:
        return self.kind == "classification"

    def architecture(self, n_features: int, n_outputs: int | None = None) -> str:
        if self.kind == "autoencoder":
            sizes = (n_features, *self.layers, *self.layers[-2::-1], n_features)
        else:
            sizes = (n_features, *self.layers, n_outputs or 1)
        return "-".join(map(str, sizes))

    def network(self, data: Data) -> str:
        """The architecture as trained on ``data`` (outputs: classes or targets)."""
        y = data.y_full
        if y is None:
            outputs = None
        elif self.is_classifier:
            outputs = len(np.unique(y))
        else:
            outputs = 1 if np.ndim(y) == 1 else np.shape(y)[1]
        return self.architecture(data.X_full.shape[1], outputs)

    # -- estimators -------------------------------------------------------------------
    def make_estimator(self, solver: str, **params):
        """The problem's estimator with the benchmark defaults, ``solver`` and ``params``."""
        import torch

        from skkfac import KFACAutoencoder, KFACClassifier, KFACRegressor

        # The estimators use one thread unless told otherwise: follow the suite's --threads.
        kwargs = {**BENCH_ESTIMATOR_DEFAULTS, "solver": solver,
                  "n_threads": torch.get_num_threads(), **params}
        if self.kind == "autoencoder":
            return KFACAutoencoder(encoder_layer_sizes=self.layers, **kwargs)
        if self.kind == "regression":
            return KFACRegressor(hidden_layer_sizes=self.layers, **kwargs)
        return KFACClassifier(hidden_layer_sizes=self.layers, **kwargs)

    def fit_all(self, estimator, data: Data):
        """Fit ``estimator`` on every training row of ``data`` (inputs only for an
        autoencoder); returns it."""
        if data.y_full is None:
            return estimator.fit(data.X_full)
        return estimator.fit(data.X_full, data.y_full)

    # -- metrics -------------------------------------------------------------------------
    def test_score(self, estimator, data: Data) -> tuple[float, str]:
        """The headline test score and its name: accuracy for classification (higher is
        better), else the test loss of :meth:`loss` (lower is better)."""
        if self.is_classifier:
            return self.accuracy(estimator, data.X_test, data.y_test), "test accuracy"
        return self.loss(estimator, data.X_test, data.y_test), "test loss"

    def loss(self, estimator, X, y=None) -> float:
        """The test loss the study reports (lower is better)."""
        if self.kind == "autoencoder":
            return -float(estimator.score(X))
        if self.kind == "regression":
            prediction = estimator.predict(X)
            return float(np.mean((np.asarray(prediction, dtype=np.float64)
                                  - np.asarray(y, dtype=np.float64).reshape(
                                      np.shape(prediction))) ** 2))
        from sklearn.metrics import log_loss

        return float(log_loss(y, estimator.predict_proba(X), labels=estimator.classes_))

    def accuracy(self, estimator, X, y=None) -> float:
        """Classification accuracy (NaN for other problems)."""
        if not self.is_classifier:
            return math.nan
        return float(np.mean(estimator.predict(X) == y))

    def baseline_loss(self, data: Data) -> float:
        """Loss of a constant predictor fitted on the training set (a scale for losses)."""
        if self.kind == "autoencoder":
            mean = data.X_train.mean(axis=0)
            return float(np.mean((data.X_val - mean) ** 2))
        if self.kind == "regression":
            return float(np.mean((data.y_val - data.y_train.mean()) ** 2))
        return math.log(len(np.unique(data.y_train)))

    # -- data ----------------------------------------------------------------------------
    def load(self, data_home=None, *, regression_data: str = "auto") -> Data:
        """Load the problem's data (``regression_data`` only matters for ``regression``)."""
        loader = _LOADERS[self.name]
        if self.name == "regression":
            data = loader(data_home, regression_data)
        else:
            data = loader(data_home)
        return _hold_out(data, self.n_val)


def _hold_out(data: Data, n_val) -> Data:
    """Move a seeded validation split out of the training rows (if not split already)."""
    if data.X_val is not None:
        return data
    n = len(data.X_train)
    n_val = math.ceil(n_val * n) if isinstance(n_val, float) else int(n_val)
    order = np.random.RandomState(12345).permutation(n)
    val, train = order[:n_val], order[n_val:]
    y = data.y_train
    return Data(data.X_train[train], None if y is None else y[train],
                data.X_train[val], None if y is None else y[val],
                data.X_test, data.y_test, data.dataset, data.description, data.note)


def _load_mnist(data_home) -> Data:
    from skkfac.datasets import load_mnist

    bunch = load_mnist(data_home)
    return Data(bunch.X_train, None, None, None, bunch.X_test, None, "MNIST",
                bunch.DESCR)


def _load_cifar10(data_home) -> Data:
    from skkfac.datasets import load_cifar10

    bunch = load_cifar10(data_home)
    note = ""
    if "jpeg" in bunch.DESCR.lower():
        note = ("CIFAR-10 read from a lossy JPEG (q75) re-encoding: results are "
                "'CIFAR-10 (JPEG q75)', not directly comparable to published numbers.")
    return Data(bunch.X_train, bunch.y_train, None, None, bunch.X_test, bunch.y_test,
                "CIFAR-10", bunch.DESCR, note)


def _load_regression(data_home, regression_data: str = "auto") -> Data:
    """CT slices when present (or asked for), else a UCI stand-in.

    The CT data are used as the study did (target / 180, features as they are). A UCI
    table gets its features standardised and its target min-max scaled into [0, 1] with
    statistics of the training rows, like the study's target scaling.
    """
    from skkfac.datasets import DatasetNotFoundError, load_ct_slices, load_uci_regression

    fallback_note = ""
    if regression_data in ("auto", "ct", "ct_slices"):
        try:
            bunch = load_ct_slices(data_home)
            return Data(bunch.X_train.astype(np.float32), bunch.y_train.astype(np.float32),
                        None, None, bunch.X_test.astype(np.float32),
                        bunch.y_test.astype(np.float32), "CT slices", bunch.DESCR)
        except DatasetNotFoundError:
            if regression_data != "auto":
                raise
        regression_data = "keggundirected"
        fallback_note = "the CT-slice data were not found in the data home, so "
    bunch = load_uci_regression(regression_data, data_home)
    mean, std = bunch.X_train.mean(axis=0), bunch.X_train.std(axis=0)
    std[std == 0] = 1.0
    low, high = float(bunch.y_train.min()), float(bunch.y_train.max())
    scale = (high - low) or 1.0

    def features(X):
        return ((X - mean) / std).astype(np.float32)

    def target(y):
        return ((y - low) / scale).astype(np.float32)

    note = (f"regression data: {fallback_note}UCI '{bunch.name}' stands in for the study's "
            "CT slices (features standardised, target min-max scaled into [0, 1] on the "
            "training rows); losses are not comparable to the study's CT numbers.")
    return Data(features(bunch.X_train), target(bunch.y_train), None, None,
                features(bunch.X_test), target(bunch.y_test), f"UCI {bunch.name}",
                bunch.DESCR, note)


def _load_digits(data_home=None) -> Data:
    from sklearn.datasets import load_digits

    X = (load_digits().data / 16.0).astype(np.float32)
    order = np.random.RandomState(0).permutation(len(X))
    test, train = order[:360], order[360:]
    return Data(X[train], None, None, None, X[test], None, "scikit-learn digits",
                "scikit-learn's bundled 8x8 digits (1,797 images), pixels / 16; 360 "
                "test images held out by a seeded shuffle.")


def _load_protein(data_home) -> Data:
    return _load_regression(data_home, "protein")


_LOADERS = {"mnist_ae": _load_mnist, "regression": _load_regression,
            "protein": _load_protein, "cifar10": _load_cifar10, "digits": _load_digits}

#: The study's tables (skkfac.study, the one source); protein stands in for its CT slices.
_PROTEIN_STUDY = {**STUDY_TABLES["regression"],
                  "budget": "5 s on a GTX 980, 4 repeats, CT slices (not protein)"}

PROBLEMS = {
    "mnist_ae": Problem(
        "mnist_ae", "autoencoder", MNIST_ENCODER, "MNIST autoencoder",
        "test loss (per-pixel MSE)", n_val=10000,
        study=STUDY_TABLES["mnist_ae"]),
    "regression": Problem(
        "regression", "regression", REGRESSION_HIDDEN, "Regression",
        "test loss (MSE)", n_val=0.1,
        study=STUDY_TABLES["regression"]),
    "protein": Problem(
        "protein", "regression", REGRESSION_HIDDEN, "Regression (UCI protein)",
        "test loss (MSE)", n_val=0.1,
        study=_PROTEIN_STUDY),
    "cifar10": Problem(
        "cifar10", "classification", CIFAR10_HIDDEN, "CIFAR-10 classification",
        "test loss (cross-entropy)", n_val=5000,
        study=STUDY_TABLES["cifar10"]),
    "digits": Problem(
        "digits", "autoencoder", DIGITS_ENCODER, "digits autoencoder (quick)",
        "test loss (per-pixel MSE)", n_val=0.2),
}


def get_problem(name: str) -> Problem:
    try:
        return PROBLEMS[name]
    except KeyError:
        raise ValueError(f"unknown problem {name!r}; choose from {sorted(PROBLEMS)}") from None
