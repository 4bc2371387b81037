"""Decay factors of the running averages of the Kronecker factors.

``A_k = alpha_k A_{k-1} + (1 - alpha_k) A_batch`` at update ``k`` (1-based), with

* ``'linear'`` (the study's eq. 54): ``alpha_k = min(0.05 k m_rate, m_max)``;
* ``'martens'`` (Martens & Grosse 2015): ``alpha_k = min(1 - 1/k, 0.95)``.

The study reuses ``alpha_k`` as the momentum of the update; so does :class:`skkfac.KFAC`
unless it is given a fixed momentum.
"""

from __future__ import annotations


def linear_decay(k: int, momentum_rate: float, momentum_max: float) -> float:
    return min(0.05 * k * momentum_rate, momentum_max)


def martens_decay(k: int, momentum_rate: float = 0.0, momentum_max: float = 0.95) -> float:
    return min(1.0 - 1.0 / k, momentum_max)


STAT_DECAY_SCHEDULES = {"linear": linear_decay, "martens": martens_decay}


def stat_decay(schedule: str, k: int, momentum_rate: float, momentum_max: float) -> float:
    """The decay factor ``alpha_k`` of ``schedule`` at update ``k >= 1``.

    Parameters
    ----------
    schedule : {'linear', 'martens'}
        ``'linear'``: ``min(0.05 k m_rate, m_max)``; ``'martens'``: ``min(1 - 1/k, m_max)``.
    k : int
        Update number, counted from 1.
    momentum_rate : float
        ``m_rate`` of the linear schedule (ignored by ``'martens'``).
    momentum_max : float
        ``m_max``, the cap of either schedule.

    Returns
    -------
    float
        The weight of the old running average in ``A_k = alpha_k A_(k-1) + (1 - alpha_k)
        A_batch``.

    Examples
    --------
    >>> from skkfac.curvature import stat_decay
    >>> [round(stat_decay("linear", k, momentum_rate=1.0, momentum_max=0.6), 2)
    ...  for k in (1, 5, 20)]
    [0.05, 0.25, 0.6]
    >>> [round(stat_decay("martens", k, momentum_rate=1.0, momentum_max=0.95), 2)
    ...  for k in (1, 5, 20)]
    [0.0, 0.8, 0.95]
    """
    if k < 1:
        raise ValueError(f"Updates are counted from 1, got k={k}.")
    return STAT_DECAY_SCHEDULES[schedule](k, momentum_rate, momentum_max)
