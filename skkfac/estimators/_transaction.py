"""A fit that does not complete leaves the estimator as it found it.

``fit`` and ``partial_fit`` run inside :func:`fit_transaction`. When the call raises,
or is interrupted (``KeyboardInterrupt``), every attribute that is not a constructor
parameter is put back: a first fit leaves the estimator unfitted, a refit leaves the
previous model, its solver state and its fitted attributes. A new fit builds a new
network and solver, so the previous ones only need to be remembered; a continuing fit
(``warm_start`` or ``partial_fit``) changes them in place, so they are copied first.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager


@contextmanager
def fit_transaction(estimator, *, continuing: bool):
    """Restore ``estimator``'s fitted state if the block raises (``BaseException``).

    Parameters
    ----------
    estimator : BaseEstimator
    continuing : bool
        Whether the block trains the existing network in place (then the state is
        deep-copied beforehand: one copy of the network and of the solver's state).
    """
    parameters = estimator.get_params(deep=False)
    saved = {name: value for name, value in vars(estimator).items()
             if name not in parameters}
    if continuing:
        saved = copy.deepcopy(saved)  # one memo: the solver keeps pointing at model_
    try:
        yield
    except BaseException:
        for name in [name for name in vars(estimator) if name not in parameters]:
            delattr(estimator, name)
        vars(estimator).update(saved)
        raise
