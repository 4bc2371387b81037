"""The estimators' thread policy: torch's CPU threads set for one call, then restored.

PyTorch runs CPU operations on a process-wide pool of threads (``torch.set_num_threads``).
On a machine shared with other processes, threads that wait for a busy core make small
operations orders of magnitude slower, so the estimators use one thread unless told
otherwise (scikit-learn's ``n_jobs=None`` habit) and put the process's setting back when
the call returns or raises.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from numbers import Integral

import torch


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_n_threads(n_threads: int | None) -> int:
    """The thread count meant by an estimator's ``n_threads``.

    ``None`` means 1; a positive ``k`` means ``k``; ``-1`` means every available CPU and
    ``-k`` all but ``k - 1`` of them (at least one), as scikit-learn's ``n_jobs``.
    """
    if n_threads is None:
        return 1
    if isinstance(n_threads, bool) or not isinstance(n_threads, Integral) or n_threads == 0:
        raise ValueError(f"n_threads must be None or a non-zero integer, got {n_threads!r}.")
    if n_threads > 0:
        return int(n_threads)
    return max(1, available_cpus() + 1 + int(n_threads))


@contextmanager
def torch_threads(n_threads: int | None):
    """Run the block with ``resolve_n_threads(n_threads)`` torch CPU threads.

    The previous setting is restored on exit, also when the block raises.
    """
    wanted = resolve_n_threads(n_threads)
    previous = torch.get_num_threads()
    if wanted != previous:
        torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
