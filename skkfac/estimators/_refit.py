"""``alpha='auto'``'s second training run with the penalty the data ask for.

After a first fit with the weak prior's penalty, :func:`~skkfac.estimators._evidence.
evidence_alpha` estimates the penalty that maximises the evidence; when it is at least
:attr:`EvidenceRefit.EVIDENCE_REFIT_RATIO` times the prior's (noisy targets), the
network is trained again, from the same initial weights and with the same split. A time
budget is shared by both runs: the second runs only when the first left it at least as
much time as it took, and is dropped, with the first run's weights, solver and progress
put back, if the budget cuts it short.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from skkfac.callbacks import logger
from skkfac.estimators._evidence import evidence_alpha
from skkfac.training import Trainer, TrainingProgress

#: Stops after which no second run is made, and for which a second run is dropped.
BUDGET_STOPS = ("max_time", "max_wall_time")


class EvidenceRefit:
    """The estimator's side of the refit (mixed into the estimators' base class)."""

    #: Whether ``alpha='auto'`` refits with the evidence's penalty (the regressor's).
    _refits_with_evidence = False

    #: ``alpha='auto'`` refits when the evidence's penalty is at least this many times the
    #: prior's. Below, the fit would barely change (``alpha`` up to 10x the prior's moved
    #: no test R² beyond its spread, ``benchmarks/results/defaults/small_noisy_levers.txt``)
    #: and the refit would double the fit time for nothing.
    EVIDENCE_REFIT_RATIO = 5.0

    def _evidence_refit_possible(self, first_fit: bool) -> bool:
        """Whether this fit may end with :meth:`_refit_with_evidence`: a first fit with
        ``alpha='auto'`` and an early-stopping split, which catches the first run's
        overfitting (its weights are the ones the estimate reads)."""
        return (self._refits_with_evidence and first_fit and self.alpha == "auto"
                and self.do_early_stopping_)

    def _refit_with_evidence(self, trainer: Trainer, data, rng, initial_weights,
                             first: TrainingProgress, first_seconds: float):
        """The progress of the run whose weights the estimator keeps: the first run's
        (``first``, which took ``first_seconds`` of wall time), or a second one with the
        evidence's penalty. ``data`` is ``(X, y, sample_weight)`` of the training rows."""
        if first.stop_reason == "diverged" or first.stop_reason in BUDGET_STOPS:
            return first
        remaining = None if self.max_time is None else self.max_time - first.train_time
        deadline = trainer.config.deadline
        if ((remaining is not None and remaining < first.train_time)
                or (deadline is not None and deadline - time.perf_counter() < first_seconds)):
            return first
        estimate = evidence_alpha(self.model_, *data, self.alpha_, rng)
        if estimate is None or not math.isfinite(estimate[0]):
            return first
        self.evidence_alpha_, n_well_determined = estimate
        # alpha_ is 0 only for constant targets, which have no noise to penalise.
        if not self.evidence_alpha_ >= self.EVIDENCE_REFIT_RATIO * self.alpha_ > 0:
            return first
        logger.info("alpha=%.3g: the evidence asks for alpha=%.3g (%.0f well-determined "
                    "parameters); training again with it", self.alpha_,
                    self.evidence_alpha_, n_well_determined)
        parameters = list(self.model_.parameters())
        kept = (self.solver_, self._progress, self.alpha_,
                [p.detach().clone() for p in parameters])
        with torch.no_grad():
            torch._foreach_copy_(parameters, initial_weights)
        self.alpha_ = self.evidence_alpha_
        self.solver_ = self._make_solver(rng)
        self._progress = TrainingProgress()
        second_trainer = Trainer(dataclasses.replace(trainer.config, max_time=remaining),
                                 evaluate=trainer.evaluate, validate=trainer.validate,
                                 callbacks=trainer.callbacks, estimator=self)
        second = self._train(second_trainer, *data, incremental=False)
        if second.stop_reason not in BUDGET_STOPS:
            return second
        logger.info("the time budget cut the second run short: the first run is kept")
        self.solver_, self._progress, self.alpha_, weights = kept
        with torch.no_grad():
            torch._foreach_copy_(parameters, weights)
        return first
