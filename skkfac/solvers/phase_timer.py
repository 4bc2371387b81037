"""Seconds spent in each phase of an update, without synchronising the device per phase.

On the CPU the phases are timed with the host clock (work is synchronous there). On a
GPU each phase records a pair of CUDA events, and the elapsed times are read only when
:attr:`PhaseTimer.totals` is asked for (when the trainer writes a history row), so the
update itself never waits for the device.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


class PhaseTimer:
    """Accumulates the time of named phases.

    Parameters
    ----------
    phases : iterable of str
        The phase names, reported even when a phase has not run yet.
    device : torch.device
        Where the work runs: CUDA devices are timed with events.
    enabled : bool, default=True
        ``False`` makes :meth:`phase` a no-op.

    Examples
    --------
    >>> import torch
    >>> timer = PhaseTimer(["work"], torch.device("cpu"))
    >>> with timer.phase("work"):
    ...     _ = sum(range(1000))
    >>> timer.totals["work"] >= 0.0
    True
    """

    def __init__(self, phases, device: torch.device, *, enabled: bool = True):
        self.device = torch.device(device)
        self.enabled = enabled
        self._totals = dict.fromkeys(phases, 0.0)
        self._pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    @contextmanager
    def phase(self, name: str):
        if not self.enabled:
            yield
            return
        if self.device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._pending.append((name, start, end))
            return
        begin = time.perf_counter()
        yield
        self._totals[name] += time.perf_counter() - begin

    @property
    def totals(self) -> dict[str, float]:
        """Seconds per phase so far (reads the recorded CUDA events, if any)."""
        if self._pending:
            self._pending[-1][2].synchronize()
            for name, start, end in self._pending:
                self._totals[name] += start.elapsed_time(end) / 1000.0
            self._pending.clear()
        return dict(self._totals)

    def reset(self) -> None:
        self._pending.clear()
        self._totals = dict.fromkeys(self._totals, 0.0)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_totals"] = self.totals  # CUDA events do not pickle
        state["_pending"] = []
        state["device"] = str(self.device)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.device = torch.device(self.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            self.device = torch.device("cpu")
