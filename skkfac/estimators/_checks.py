"""Checks that keep a fitted network and the data or parameters it is given in step."""

from __future__ import annotations

from numbers import Integral

import numpy as np


def as_layer_sizes(value) -> tuple:
    """``hidden_layer_sizes``/``encoder_layer_sizes`` as a tuple (an int is one layer)."""
    if isinstance(value, (Integral, np.integer)):
        return (value,)
    return tuple(value)


def check_same_network(estimator, built_with: dict, how: str) -> None:
    """Refuse to continue training a network built with other structural parameters.

    ``built_with`` maps each parameter that shapes the network (layer sizes, activation,
    dtype) to its value when the network was built.
    """
    for name, built in built_with.items():
        current = getattr(estimator, name)
        if name.endswith("layer_sizes"):
            current = as_layer_sizes(current)
        if current != built:
            raise ValueError(
                f"{name}={current!r}, but the fitted network was built with "
                f"{name}={built!r} and {how} continues training that network. Call fit "
                f"with warm_start=False to train a new network, or set {name} back.")


def check_n_outputs(n_outputs: int, y_encoded: np.ndarray, what: str = "y") -> None:
    """The targets must have one column per output of the fitted network."""
    n_columns = y_encoded.shape[1]
    if n_columns != n_outputs:
        plural = "" if n_outputs == 1 else "s"
        raise ValueError(
            f"The network has {n_outputs} output{plural} but {what} has {n_columns} "
            f"columns. Pass targets with {n_outputs} column{plural}, or fit a new network "
            "(warm_start=False) for another number of outputs.")


def check_representable(array: np.ndarray, dtype, what: str, *, squared: bool = False) -> None:
    """Values must stay finite in ``dtype``; with ``squared``, so must their squares.

    Squared-error targets need the second: the loss sums their squares (a margin of a
    million samples keeps the sum finite). Inputs only need the first: a saturating
    network can train on them, and K-FAC guards statistics that overflow.
    """
    largest = float(np.abs(array).max()) if array.size else 0.0
    limit = float(np.finfo(dtype).max)
    if squared:
        limit = float(np.sqrt(limit)) / 1e3
    if largest > limit:
        advice = ("Scale the targets (e.g. TransformedTargetRegressor with a "
                  "StandardScaler)" if what == "y" else f"Scale {what} (e.g. StandardScaler)")
        overflow = ("their squares, which the loss sums, overflow" if squared
                    else "they overflow")
        raise ValueError(
            f"{what} has values up to {largest:.3g}: {overflow} {np.dtype(dtype).name} "
            f"beyond about {limit:.2g}. {advice}, or use dtype='float64'.")
