"""The tabular suite of ``defaults``: small data sets fitted the way a user would.

Every set is split by ``train_test_split(test_size=0.25, random_state=seed)``
(stratified for classification) and fitted with no time limit, each estimator at its
defaults (only ``random_state``, and ``n_threads`` for skkfac, are set):

* regressors as ``TransformedTargetRegressor(make_pipeline(StandardScaler(), est),
  transformer=StandardScaler())``, scored by the test R²;
* classifiers as ``make_pipeline(StandardScaler(), est)``, scored by the test accuracy
  (and the test cross-entropy, recorded as ``eval_loss``).

Methods: every registered skkfac solver (``KFACRegressor``/``KFACClassifier`` with
``solver=...``) and two scikit-learn references, ``MLPRegressor``/``MLPClassifier`` and
``HistGradientBoostingRegressor``/``Classifier``. scikit-learn's own thread pools (the
gradient boosting's OpenMP, BLAS) are limited to the same number of threads as skkfac's
torch.

Data: scikit-learn's bundled ``diabetes`` (regression), ``breast_cancer``, ``digits``
and ``wine`` (classification), and UCI regression tables read by
:func:`skkfac.datasets.load_uci_regression` from ``<data home>/uci/<name>.csv[.gz]``
(constant columns dropped).
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import nullcontext

import numpy as np

from benchmarks.solvers import label, registered_solvers

#: scikit-learn's bundled sets: name -> (kind, loader name in sklearn.datasets).
BUNDLED_SETS = {"diabetes": ("regression", "load_diabetes"),
                "breast_cancer": ("classification", "load_breast_cancer"),
                "digits": ("classification", "load_digits"),
                "wine": ("classification", "load_wine")}
#: UCI regression tables (files ``<data home>/uci/<name>.csv.gz``) with their row counts
#: (used only to estimate the running time).
UCI_SETS = {"energy": 768, "concrete": 1030, "airfoil": 1503, "yacht": 308, "housing": 506,
            "autompg": 392, "forest": 517, "stock": 536, "gas": 2565, "parkinsons": 5875,
            "pol": 15000, "elevators": 16599, "bike": 17379}
BUNDLED_ROWS = {"diabetes": 442, "breast_cancer": 569, "digits": 1797, "wine": 178}
#: The scikit-learn references (method names as they appear in runs.csv).
REFERENCES = ("sklearn_mlp", "sklearn_hgb")
REFERENCE_LABELS = {"sklearn_mlp": "sklearn MLP", "sklearn_hgb": "sklearn HGB"}
TEST_SIZE = 0.25
#: Seconds per (set, seed) for all methods together on 2 idle cores: a + b * rows.
SECONDS_PER_SET, SECONDS_PER_ROW = 1.5, 1.8e-3


def tabular_methods() -> tuple[str, ...]:
    return (*registered_solvers(), *REFERENCES)


def method_label(method: str) -> str:
    """A method's name in tables and figures: a solver's label, or a reference's."""
    return REFERENCE_LABELS.get(method, label(method))


def estimate_seconds(rows: int, n_methods: int = 1) -> float:
    """Rough seconds of ``n_methods`` methods' runs on a set of ``rows`` rows (one seed)."""
    return (SECONDS_PER_SET + SECONDS_PER_ROW * rows) * n_methods / len(tabular_methods())


def drop_constant_columns(X: np.ndarray) -> np.ndarray:
    """``X`` without the columns that take a single value."""
    keep = np.ptp(X, axis=0) > 0
    return X[:, keep]


def load_tabular(name: str, data_home=None):
    """``(X, y, kind)`` of a tabular set; raises ``DatasetNotFoundError`` if missing."""
    if name in BUNDLED_SETS:
        import sklearn.datasets

        kind, loader = BUNDLED_SETS[name]
        X, y = getattr(sklearn.datasets, loader)(return_X_y=True)
        return np.asarray(X, dtype=np.float64), y, kind
    from skkfac.datasets import load_uci_regression

    bunch = load_uci_regression(name, data_home, test_size=0)  # all rows: split below
    X = drop_constant_columns(bunch.X_train.astype(np.float64))
    return X, bunch.y_train.astype(np.float64), "regression"


def make_model(method: str, kind: str, seed: int, threads: int):
    """The pipeline a user would write around ``method``'s estimator at its defaults."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    regression = kind == "regression"
    if method in registered_solvers():
        from skkfac import KFACClassifier, KFACRegressor

        cls = KFACRegressor if regression else KFACClassifier
        estimator = cls(solver=method, random_state=seed, n_threads=threads)
    elif method == "sklearn_mlp":
        from sklearn.neural_network import MLPClassifier, MLPRegressor

        estimator = (MLPRegressor if regression else MLPClassifier)(random_state=seed)
    elif method == "sklearn_hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        estimator = (HistGradientBoostingRegressor if regression
                     else HistGradientBoostingClassifier)(random_state=seed)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {tabular_methods()}")
    pipeline = make_pipeline(StandardScaler(), estimator)
    if regression:
        return TransformedTargetRegressor(pipeline, transformer=StandardScaler())
    return pipeline


def final_estimator(model):
    """The fitted estimator inside :func:`make_model`'s wrapper."""
    pipeline = getattr(model, "regressor_", model)
    return pipeline[-1]


def timed_fit(estimator, *args, threads: int | None = None, **kwargs) -> tuple[float, int]:
    """Fit; return ``(seconds, ConvergenceWarnings raised)``.

    ConvergenceWarnings are counted and not shown; other warnings are shown as usual.
    ``threads`` limits scikit-learn's thread pools (OpenMP, BLAS) during the fit: for the
    scikit-learn references only; skkfac's estimators set torch's threads themselves
    (``n_threads``), and a threadpoolctl limit around them made small fits 3-50x slower.
    """
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        with threadpool_limits(limits=threads) if threads else nullcontext():
            start = time.perf_counter()
            estimator.fit(*args, **kwargs)
            seconds = time.perf_counter() - start
    converged = 0
    for item in caught:
        if issubclass(item.category, ConvergenceWarning):
            converged += 1
        else:
            warnings.showwarning(item.message, item.category, item.filename, item.lineno)
    return seconds, converged


def classification_scores(estimator, X, y) -> tuple[float, float]:
    """``(accuracy, cross-entropy)`` from one ``predict_proba`` pass."""
    from sklearn.metrics import log_loss

    proba = estimator.predict_proba(X)
    classes = estimator.classes_
    accuracy = float(np.mean(classes[np.argmax(proba, axis=1)] == np.asarray(y)))
    return accuracy, float(log_loss(y, proba, labels=classes))


def updates_of(estimator) -> float:
    """skkfac's ``n_updates_``, else scikit-learn's ``n_iter_`` (NaN without either)."""
    for name in ("n_updates_", "n_iter_"):
        value = getattr(estimator, name, None)
        if value is not None:
            return float(value)
    return math.nan


def fit_tabular(X, y, kind: str, method: str, seed: int, threads: int, *,
                model_factory=make_model) -> dict:
    """Split, fit and score one method on one set with one seed: a runs.csv row's values.

    ``model_factory(method, kind, seed, threads)`` builds the model (default
    :func:`make_model`; :mod:`benchmarks.default_ablation` changes a parameter)."""
    from sklearn.model_selection import train_test_split

    stratify = y if kind == "classification" else None
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_SIZE, random_state=seed, stratify=stratify)
    model = model_factory(method, kind, seed, threads)
    seconds, warned = timed_fit(model, X_train, y_train,
                                threads=threads if method in REFERENCES else None)
    inner = final_estimator(model)
    if kind == "classification":
        score, eval_loss = classification_scores(model, X_test, y_test)
        score_name = "test accuracy"
    else:
        score, eval_loss, score_name = float(model.score(X_test, y_test)), math.nan, "test R2"
    return {"score": score, "score_name": score_name, "higher_is_better": True,
            "eval_loss": eval_loss, "fit_seconds": seconds,
            "train_seconds": getattr(inner, "train_time_", None), "updates": updates_of(inner),
            "stop_reason": getattr(inner, "stop_reason_", None),
            "convergence_warnings": warned, "n_train": len(X_train), "n_test": len(X_test)}
