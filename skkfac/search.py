"""Ready-made hyper-parameter search spaces for scikit-optimize, one per solver.

The spaces follow the reference study's Bayesian optimisation (section 6.7: K-FAC tuned
learning rate, batch size, ``m_rate`` and ``m_max``; SGD tuned learning rate, batch size
and momentum), with two changes (Adam, which the study did not use, tunes its learning
rate, batch size and ``beta_1``):

* K-FAC also tunes its initial ``damping`` λ, log-uniformly: our default
  ``damping_scheme='tikhonov'`` is factored Tikhonov damping adapted by the
  Levenberg–Marquardt rule, whose starting value still matters for short budgets
  (the study used a fixed divide-by-max normalisation without a damping value).
* Batch-size ranges are capped to the number of training samples, so the spaces can
  be used on small data sets too.

Every function returns a ``dict`` mapping estimator parameter names to
:mod:`skopt.space` dimensions, the format :class:`skopt.BayesSearchCV` takes as
``search_spaces`` and that ``skopt.Optimizer`` takes as ``list(space.values())``.

Compatibility: :class:`skopt.BayesSearchCV` 0.10.2 works unchanged with
scikit-learn 1.9 and the skkfac estimators (checked by ``tests/test_benchmarks.py``);
no shim is needed. The benchmark suite (``python -m benchmarks tune``) nevertheless
drives ``skopt.Optimizer`` through its ask/tell interface so that an interrupted search
can be resumed from its CSV log (see ``benchmarks/tune.py``).
"""

from __future__ import annotations

from numbers import Integral

from skopt.space import Integer, Real

from skkfac.solvers import SOLVERS

__all__ = [
    "ADAM_BATCH_SIZE_RANGE",
    "ADAM_BETA_1_RANGE",
    "ADAM_LEARNING_RATE_RANGE",
    "KFAC_BATCH_SIZE_RANGE",
    "KFAC_DAMPING_RANGE",
    "KFAC_LEARNING_RATE_RANGE",
    "KFAC_MOMENTUM_MAX_RANGE",
    "KFAC_MOMENTUM_RATE_RANGE",
    "SEARCH_SPACES",
    "SGD_BATCH_SIZE_RANGE",
    "SGD_LEARNING_RATE_RANGE",
    "SGD_MOMENTUM_RANGE",
    "adam_search_space",
    "kfac_search_space",
    "search_space",
    "sgd_search_space",
]

#: K-FAC learning rate, log-uniform. With the default ``adaptive_step`` it multiplies the
#: step that minimises the exact quadratic model (1 = that optimum), so the range sits
#: around 1 (the study's fixed learning rates were 0.04-0.29, with max-normalised steps).
KFAC_LEARNING_RATE_RANGE = (0.2, 1.5)
#: K-FAC batch size, log-uniform, upper end capped to the data (study: 4,400-13,900 on a
#: GPU; on a 2-core CPU and 20 s budgets, batches above ~8,000 leave too few updates).
KFAC_BATCH_SIZE_RANGE = (250, 8000)
#: K-FAC ``momentum_rate`` (``m_rate``), uniform (study's best values: 0.5-1.9).
KFAC_MOMENTUM_RATE_RANGE = (0.1, 2.0)
#: K-FAC ``momentum_max`` (``m_max``), uniform (study's best values: 0.31-0.94).
KFAC_MOMENTUM_MAX_RANGE = (0.1, 0.95)
#: K-FAC initial Tikhonov damping λ relative to the curvature's scale, log-uniform
#: (default 0.1).
KFAC_DAMPING_RANGE = (1e-3, 1.0)
#: SGD learning rate, log-uniform (study's best values: 0.006-1.99).
SGD_LEARNING_RATE_RANGE = (1e-3, 3.0)
#: SGD batch size, log-uniform, upper end capped to the data (study: 122-3,523).
SGD_BATCH_SIZE_RANGE = (32, 4000)
#: SGD (Nesterov) momentum, uniform (study's best values: 0.22-0.99).
SGD_MOMENTUM_RANGE = (0.1, 0.99)
#: Adam learning rate, log-uniform, around scikit-learn's default 1e-3.
ADAM_LEARNING_RATE_RANGE = (1e-4, 3e-2)
#: Adam batch size, log-uniform, upper end capped to the data (as SGD's).
ADAM_BATCH_SIZE_RANGE = (32, 4000)
#: Adam ``beta_1`` (decay of the gradient's running mean), uniform (default 0.9).
ADAM_BETA_1_RANGE = (0.5, 0.99)


def _batch_size_dimension(low: int, high: int, n_samples) -> Integer:
    """Log-uniform integer batch size in ``[low, min(high, n_samples)]``.

    When the data are smaller than ``low`` the lower end shrinks to ``high // 8`` (at
    least 1) so the range stays non-empty.
    """
    if n_samples is not None:
        if not isinstance(n_samples, Integral) or isinstance(n_samples, bool):
            raise TypeError(f"n_samples must be an integer or None, got {n_samples!r}.")
        if n_samples < 2:
            raise ValueError(f"n_samples must be at least 2, got {n_samples}.")
        high = min(high, int(n_samples))
        if high <= low:
            low = max(1, high // 8)
    return Integer(low, high, prior="log-uniform", name="batch_size")


def kfac_search_space(n_samples=None):
    """Search space of ``solver='kfac'``: learning rate, batch size, momentum, damping.

    Parameters
    ----------
    n_samples : int or None, default=None
        Number of training samples; the batch-size range is capped to it. ``None``
        keeps the full range 250-8,000.

    Returns
    -------
    space : dict of str to skopt.space.Dimension
        ``learning_rate_init`` (log-uniform 0.2-1.5, a multiplier of the adaptive
        step), ``batch_size`` (log-uniform integer 250-min(8000, n_samples)),
        ``momentum_rate`` (uniform 0.1-2), ``momentum_max`` (uniform 0.1-0.95) and
        ``damping`` (relative, log-uniform 1e-3-1). The keys are parameters of every
        skkfac estimator.

    See Also
    --------
    sgd_search_space, search_space

    Examples
    --------
    >>> from skkfac.search import kfac_search_space
    >>> space = kfac_search_space(n_samples=1200)
    >>> sorted(space)
    ['batch_size', 'damping', 'learning_rate_init', 'momentum_max', 'momentum_rate']
    >>> space["batch_size"].bounds
    (250, 1200)
    >>> space["learning_rate_init"].prior
    'log-uniform'
    """
    lr_low, lr_high = KFAC_LEARNING_RATE_RANGE
    return {
        "learning_rate_init": Real(lr_low, lr_high, prior="log-uniform",
                                   name="learning_rate_init"),
        "batch_size": _batch_size_dimension(*KFAC_BATCH_SIZE_RANGE, n_samples),
        "momentum_rate": Real(*KFAC_MOMENTUM_RATE_RANGE, name="momentum_rate"),
        "momentum_max": Real(*KFAC_MOMENTUM_MAX_RANGE, name="momentum_max"),
        "damping": Real(*KFAC_DAMPING_RANGE, prior="log-uniform", name="damping"),
    }


def sgd_search_space(n_samples=None):
    """Search space of ``solver='sgd'``: learning rate, batch size and momentum.

    Parameters
    ----------
    n_samples : int or None, default=None
        Number of training samples; the batch-size range is capped to it. ``None``
        keeps the range 32-4,000.

    Returns
    -------
    space : dict of str to skopt.space.Dimension
        ``learning_rate_init`` (log-uniform 1e-3-3), ``batch_size`` (log-uniform integer
        32-min(4000, n_samples)) and ``momentum`` (uniform 0.1-0.99). Nesterov momentum
        is the estimators' default (``nesterovs_momentum=True``).

    See Also
    --------
    kfac_search_space, search_space

    Examples
    --------
    >>> from skkfac.search import sgd_search_space
    >>> space = sgd_search_space(n_samples=60000)
    >>> {name: dim.bounds for name, dim in space.items()}
    {'learning_rate_init': (0.001, 3.0), 'batch_size': (32, 4000), 'momentum': (0.1, 0.99)}
    """
    return {
        "learning_rate_init": Real(*SGD_LEARNING_RATE_RANGE, prior="log-uniform",
                                   name="learning_rate_init"),
        "batch_size": _batch_size_dimension(*SGD_BATCH_SIZE_RANGE, n_samples),
        "momentum": Real(*SGD_MOMENTUM_RANGE, name="momentum"),
    }


def adam_search_space(n_samples=None):
    """Search space of ``solver='adam'``: learning rate, batch size and ``beta_1``.

    Parameters
    ----------
    n_samples : int or None, default=None
        Number of training samples; the batch-size range is capped to it. ``None``
        keeps the range 32-4,000.

    Returns
    -------
    space : dict of str to skopt.space.Dimension
        ``learning_rate_init`` (log-uniform 1e-4-3e-2), ``batch_size`` (log-uniform
        integer 32-min(4000, n_samples)) and ``beta_1`` (uniform 0.5-0.99);
        ``beta_2`` and ``epsilon`` keep scikit-learn's defaults.

    See Also
    --------
    kfac_search_space, sgd_search_space, search_space

    Examples
    --------
    >>> from skkfac.search import adam_search_space
    >>> space = adam_search_space(n_samples=1000)
    >>> {name: dim.bounds for name, dim in space.items()}
    {'learning_rate_init': (0.0001, 0.03), 'batch_size': (32, 1000), 'beta_1': (0.5, 0.99)}
    """
    return {
        "learning_rate_init": Real(*ADAM_LEARNING_RATE_RANGE, prior="log-uniform",
                                   name="learning_rate_init"),
        "batch_size": _batch_size_dimension(*ADAM_BATCH_SIZE_RANGE, n_samples),
        "beta_1": Real(*ADAM_BETA_1_RANGE, name="beta_1"),
    }


#: The search-space function of each solver, by name; one entry per registered solver
#: (tests/test_architecture.py checks it against :data:`skkfac.solvers.SOLVERS`).
SEARCH_SPACES = {
    "kfac": kfac_search_space,
    "sgd": sgd_search_space,
    "adam": adam_search_space,
}


def search_space(solver, n_samples=None):
    """The search space of a registered ``solver``.

    Parameters
    ----------
    solver : str
        The estimators' ``solver`` parameter: a key of :data:`SEARCH_SPACES`, which has
        one entry per registered solver (:data:`skkfac.solvers.SOLVERS`).
    n_samples : int or None, default=None
        Number of training samples (caps the batch-size range).

    Returns
    -------
    space : dict of str to skopt.space.Dimension
        :func:`kfac_search_space`, :func:`sgd_search_space` or
        :func:`adam_search_space`.

    Examples
    --------
    Tune an SGD-trained regressor with :class:`skopt.BayesSearchCV`, every candidate
    trained for a fixed time budget and scored on a fixed validation split:

    >>> import numpy as np
    >>> from sklearn.datasets import make_regression
    >>> from sklearn.model_selection import PredefinedSplit
    >>> from skopt import BayesSearchCV
    >>> from skkfac import KFACRegressor
    >>> from skkfac.search import search_space
    >>> X, y = make_regression(n_samples=300, n_features=5, random_state=0)
    >>> y = y / y.std()
    >>> fold = np.r_[np.full(240, -1), np.zeros(60, dtype=int)]  # last 60 rows validate
    >>> search = BayesSearchCV(
    ...     KFACRegressor(hidden_layer_sizes=(16,), solver="sgd", max_time=0.2,
    ...                   random_state=0),
    ...     search_space("sgd", n_samples=240), n_iter=3, cv=PredefinedSplit(fold),
    ...     scoring="neg_mean_squared_error", refit=False, random_state=0)
    >>> search.fit(X, y).best_params_.keys()  # doctest: +ELLIPSIS
    odict_keys([...'learning_rate_init'...])
    """
    if solver in SOLVERS and solver not in SEARCH_SPACES:
        raise ValueError(f"No search space is defined for solver {solver!r}; pass your "
                         "own dimensions to the search.")
    if solver not in SEARCH_SPACES:
        raise ValueError(f"solver must be one of {sorted(SEARCH_SPACES)}, got {solver!r}.")
    return SEARCH_SPACES[solver](n_samples)
