"""The training loop shared by every estimator and solver.

Responsibilities: shuffling with the estimator's random state, mini-batches held as
tensor slices on the device (with their sample weights, when there are any), artificial
batches (several micro-batches per update), the epoch / wall-clock budgets, the
evaluation schedule for learning curves, sklearn's convergence and early-stopping
rules, and rejections: the trainer alone counts and records them, from the solvers'
:class:`~skkfac.solvers.spec.StepReport` and from a non-finite loss after an update
(which it undoes, so that NaN weights are never left behind); a loss that blows up stops
training with the best weights seen (see :mod:`skkfac.divergence`).

Host reads are kept to one per update on a GPU: the batch's loss is read together with
the previous step's report (:meth:`StepReport.fetch`); a report is otherwise only read
when a history row is written. Sample weights add one read per micro-batch (the
solver's sums of the weights).

Training time is measured with the clock paused while evaluating, as in the study;
``deadline`` bounds the wall-clock time of the whole call, evaluations included.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from skkfac.callbacks import FitEvent
from skkfac.divergence import BLOW_UP_FACTOR, DivergenceMonitor
from skkfac.solvers.base import Solver
from skkfac.solvers.spec import StepReport

#: Consecutive rejected updates after which training gives up. K-FAC triples its damping
#: at each (:data:`skkfac.curvature.control.REJECTION_DAMPING_FACTOR`): 16 span seven
#: and a half decades of damping, enough to make any finite step short.
MAX_CONSECUTIVE_REJECTIONS = 16
#: A fit whose last epoch loss is more than ``LOSS_ROSE_FACTOR`` times its best one, and
#: higher by more than ``LOSS_ROSE_MARGIN`` times the constant prediction's loss, blew up.
LOSS_ROSE_FACTOR = 2.0
LOSS_ROSE_MARGIN = 0.1
#: Step-report fields recorded in every history row (NaN when a solver omits them).
REPORT_COLUMNS = ("damping", "rho", "step_size", "momentum")


class TrainingClock:
    """Accumulates training seconds; evaluation happens outside ``running()``."""

    def __init__(self, device: torch.device, elapsed: float = 0.0):
        self.device = device
        self.elapsed = elapsed

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self):
        self._sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.elapsed += time.perf_counter() - self._start
        return False


@dataclass
class TrainingConfig:
    """What the trainer needs to know from the estimator's parameters."""

    batch_size: int
    artificial_batch_size: int | None = None
    max_epochs: int = 200
    max_time: float | None = None
    tol: float = 1e-4
    n_iter_no_change: int = 10
    early_stopping: bool = False
    eval_every: int | None = None
    eval_interval: float | None = None
    shuffle: bool = True
    #: ``time.perf_counter()`` value past which the call stops (``max_wall_time``).
    deadline: float | None = None
    #: Loss of the best constant prediction of the targets (scale for blow-ups).
    reference_loss: float = 0.0

    @property
    def update_size(self) -> int:
        return self.artificial_batch_size or self.batch_size


@dataclass
class TrainingProgress:
    """Everything that carries over between ``fit``/``partial_fit`` calls."""

    n_epochs: int = 0
    n_updates: int = 0
    samples_seen: int = 0
    train_time: float = 0.0
    loss_curve: list = field(default_factory=list)
    history: list = field(default_factory=list)
    validation_scores: list = field(default_factory=list)
    best_loss: float = math.inf
    best_validation_score: float = -math.inf
    no_improvement_count: int = 0
    n_rejected_updates: int = 0
    stop_reason: str = ""
    #: Loss of the network's first mini-batch (scale for blow-ups, kept across calls).
    initial_loss: float = math.nan
    #: Summed loss of micro-batches accumulated towards an update not yet made (kept
    #: between ``partial_fit`` calls, like the solver's accumulated gradients).
    pending_loss: float = 0.0


class Trainer:
    """Runs a :class:`~skkfac.solvers.base.Solver` over a data set.

    Parameters
    ----------
    config : TrainingConfig
    evaluate : callable, optional
        ``evaluate() -> (loss, score)`` on the held-out ``eval_set``, called on the
        evaluation schedule with the training clock paused.
    validate : callable, optional
        ``validate() -> score`` on the early-stopping split, once per epoch.
    callbacks : list, optional
        Objects with some of the methods of :class:`skkfac.callbacks.Callback`, called
        with a :class:`skkfac.callbacks.FitEvent`, with the training clock paused.
    estimator : object, optional
        The estimator being trained, passed on to the callbacks.
    """

    def __init__(self, config: TrainingConfig, *, evaluate: Callable | None = None,
                 validate: Callable | None = None, callbacks=(), estimator=None):
        self.config = config
        self.evaluate = evaluate
        self.validate = validate
        self.callbacks = list(callbacks)
        self.estimator = estimator

    def _notify(self, hook: str, **fields) -> None:
        """Call ``hook`` on every callback that has it."""
        if not self.callbacks:
            return
        event = FitEvent(self.estimator, self._progress, self.config, **self._event_fields,
                         **fields)
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(event)

    def run(self, solver: Solver, X: torch.Tensor, y: torch.Tensor,
            progress: TrainingProgress, *, rng: np.random.RandomState,
            max_epochs: int | None = None, incremental: bool = False,
            sample_weight: torch.Tensor | None = None) -> TrainingProgress:
        """Train for at most ``max_epochs`` epochs (default: the config's).

        ``incremental=True`` (``partial_fit``) skips sklearn's stopping rules and keeps
        an artificial batch that is not complete yet for the next call.
        ``sample_weight`` (one per row of ``X``, or ``None``) follows the rows through
        the shuffles and mini-batches; the batch and epoch losses are then weighted means.
        """
        config = self.config
        _check_data_parallel(solver)
        epochs = config.max_epochs if max_epochs is None else max_epochs
        self._progress = progress
        self._event_fields = dict(max_epochs=epochs, n_samples=X.shape[0],
                                  incremental=incremental)
        self._sample_weight = sample_weight
        # What the epoch's mean divides by: its rows, or their total weight.
        self._epoch_count = (X.shape[0] if sample_weight is None
                             else float(sample_weight.sum(dtype=torch.float64)))
        clock = TrainingClock(X.device, progress.train_time)
        self._window_loss, self._window_count = 0.0, 0
        self._best_weights = None
        self._best_epoch_weights = None
        self._pending_loss = torch.full((), progress.pending_loss, dtype=X.dtype,
                                        device=X.device)
        self._consecutive_rejections = 0
        self._updates_at_start = progress.n_updates
        self._monitor: DivergenceMonitor | None = None
        self._last_batch = None
        self._report: StepReport | None = None  # the last step's report, not read yet
        self._report_values = dict.fromkeys(REPORT_COLUMNS, math.nan)
        self._last_eval = (progress.n_updates, progress.train_time)
        if not incremental:
            # Nothing may be pending at the start of a fit (a checkpoint written in the
            # middle of an artificial batch holds no gradients).
            solver.discard()
            self._pending_loss.zero_()
        progress.stop_reason = ""
        self._notify("on_fit_begin")
        if not progress.history:
            self._record(solver, progress)
        for _ in range(epochs):
            epoch_loss = self._run_epoch(solver, X, y, progress, clock, rng)
            if epoch_loss is None:  # stopped within the epoch
                break
            progress.n_epochs += 1
            progress.loss_curve.append(epoch_loss)
            if config.eval_every is None and config.eval_interval is None:
                self._record(solver, progress)
            converged = not incremental and self._converged(solver, progress, epoch_loss)
            self._notify("on_epoch_end", loss=epoch_loss)
            if converged:
                progress.stop_reason = "converged"
                break
            if self._past_deadline(solver):
                progress.stop_reason = "max_wall_time"
                break
        else:
            progress.stop_reason = "max_iter"
        if not incremental and not config.early_stopping:
            self._check_loss_rose(solver, progress)
        self._finish(solver, progress, keep_accumulated=incremental)
        self._notify("on_fit_end")
        return progress

    # -- one epoch -----------------------------------------------------------------------
    def _run_epoch(self, solver, X, y, progress, clock, rng):
        config = self.config
        n = X.shape[0]
        weight = self._sample_weight
        if config.shuffle:
            order = torch.from_numpy(rng.permutation(n)).to(X.device)
            X, y = X[order], y[order]
            weight = None if weight is None else weight[order]
        # The epoch's loss sums the losses of this epoch's own samples, micro-batch by
        # micro-batch, on the device: an update's batch may straddle two epochs (a
        # partial batch is carried over), and counting whole updates made every epoch
        # cover a different set of samples, a wobble of a few % that fired the tol rule.
        epoch_sum = torch.zeros((), dtype=torch.float64, device=X.device)
        updated = False
        # Summed loss of the micro-batches of the update in progress (which may have
        # started in the previous epoch); kept on the device until the update.
        pending_loss = self._pending_loss
        for start in range(0, n, config.batch_size):
            X_batch = X[start:start + config.batch_size]
            y_batch = y[start:start + config.batch_size]
            # Without weights, the solver is called as before: a solver written without
            # sample_weight still trains.
            weighted = {} if weight is None else {
                "sample_weight": weight[start:start + config.batch_size]}
            with clock:
                micro_batch_loss = solver.accumulate(X_batch, y_batch, **weighted)
                pending_loss += micro_batch_loss
                epoch_sum += micro_batch_loss
                progress.samples_seen += X_batch.shape[0]
                if solver.n_accumulated >= config.update_size:
                    total, count = _batch_sum(solver, pending_loss)
                    batch_loss = self._read_loss(total / count, progress)
                    pending_loss.zero_()
                    if not self._update(solver, progress, batch_loss):
                        progress.train_time = clock.elapsed
                        return None
                    self._last_batch = (X_batch, y_batch, weighted.get("sample_weight"))
                    self._window_loss += batch_loss * count
                    self._window_count += count
                    updated = True
            _agree_on_time(solver, clock)
            progress.train_time = clock.elapsed
            if updated:
                updated = False
                self._notify("on_update", loss=batch_loss, report=self._report)
            if config.max_time is not None and clock.elapsed >= config.max_time:
                progress.stop_reason = "max_time"
                return None
            if self._evaluation_due(progress):
                self._record(solver, progress)
            if self._past_deadline(solver):
                progress.stop_reason = "max_wall_time"
                return None
        total, count = _batch_sum(solver, epoch_sum, self._epoch_count)
        return float(total) / count

    def _update(self, solver: Solver, progress: TrainingProgress, batch_loss: float) -> bool:
        """Check the loss at the current weights, then step. False means stop training."""
        if self._consecutive_rejections >= MAX_CONSECUTIVE_REJECTIONS:
            return self._give_up(solver, progress, f"{self._consecutive_rejections} "
                                 "consecutive updates were rejected")
        if solver.is_rejected(batch_loss):
            if progress.n_updates == self._updates_at_start and not math.isfinite(batch_loss):
                solver.discard()
                raise ValueError(self._unscaled_message(solver, batch_loss))
            return self._reject(solver, progress, batch_loss)
        if self._observe(solver, progress, batch_loss):
            return self._give_up(solver, progress, f"the mini-batch loss reached "
                                 f"{batch_loss:.4g}, more than {BLOW_UP_FACTOR:g} times "
                                 f"{self._monitor.reference_loss:.4g}")
        solver.backup()
        report = solver.step()
        self._report = report
        progress.n_updates += 1
        return True

    def _read_loss(self, loss: torch.Tensor, progress: TrainingProgress) -> float:
        """The batch's mean loss, read with the previous step's report in one transfer."""
        if self._report is None:
            return float(loss)
        values = self._report.fetch(loss)
        self._take_report(values, progress)
        return values["extra"][0]

    def _read_report(self, progress: TrainingProgress) -> None:
        if self._report is not None:
            self._take_report(self._report.fetch(), progress)

    def _take_report(self, values: dict, progress: TrainingProgress) -> None:
        """Count a read step report's rejection and keep its fields for the history."""
        self._report = None
        if values["accepted"]:
            self._consecutive_rejections = 0
        else:
            progress.n_rejected_updates += 1
            self._consecutive_rejections += 1
        self._report_values = {name: math.nan if values[name] is None else values[name]
                               for name in REPORT_COLUMNS}

    def _reject(self, solver, progress, batch_loss) -> bool:
        """Undo the update after which the loss became non-finite."""
        has_backup = solver.has_backup
        if has_backup:
            solver.restore()
        else:
            solver.discard()
        progress.n_rejected_updates += 1
        self._consecutive_rejections += 1
        if solver.recovers_from_divergence and has_backup:
            return True
        return self._give_up(solver, progress, f"the loss became {batch_loss:.4g}")

    # -- divergence --------------------------------------------------------------------------
    def _observe(self, solver, progress, batch_loss: float) -> bool:
        """Show a finite loss to the divergence monitor; True on a blow-up."""
        if self._monitor is None:
            if math.isnan(progress.initial_loss):
                progress.initial_loss = batch_loss
            reference = max(self.config.reference_loss, progress.initial_loss)
            self._monitor = DivergenceMonitor(solver.params, reference)
        return self._monitor.observe(batch_loss, progress.n_updates)

    def _give_up(self, solver, progress, why: str) -> bool:
        """Stop as diverged: put back the best weights of this call, say what to do."""
        progress.stop_reason = "diverged"
        kept = "the last weights with a finite loss were kept"
        if self._monitor is not None and self._monitor.restore_best():
            kept = (f"the weights with the lowest mini-batch loss "
                    f"({self._monitor.best_loss:.4g}, before update "
                    f"{self._monitor.best_update + 1}) were restored")
            solver.discard()
            solver.on_restore()
        warnings.warn(
            f"Training diverged at update {progress.n_updates}: {why}; {kept}. Lower "
            "learning_rate_init (or raise damping for K-FAC), and check that the inputs "
            "and targets are scaled.", RuntimeWarning, stacklevel=5)
        return False

    def _check_last_update(self, solver, progress) -> None:
        """No mini-batch follows the last update to judge it: check it on its own batch."""
        if self._last_batch is None or progress.stop_reason == "diverged":
            return
        X, y, weight = self._last_batch
        with torch.no_grad():
            losses = solver.loss.per_example(solver.model(X), y)
            loss = float(losses.mean() if weight is None
                         else (losses * weight).sum() / weight.sum())
        reference = math.inf if self._monitor is None else self._monitor.reference_loss
        if not math.isfinite(loss) or loss > BLOW_UP_FACTOR * reference:
            self._give_up(solver, progress, f"the loss after the last update is {loss:.4g}")

    @staticmethod
    def _unscaled_message(solver, batch_loss: float) -> str:
        dtype = str(solver.params[0].dtype).removeprefix("torch.")
        return (
            f"The loss is {batch_loss:.4g} at the weights training starts from, before any "
            f"update: the inputs or targets are too large for dtype={dtype!r} (their "
            "squared errors overflow). Scale the targets (e.g. TransformedTargetRegressor "
            "with a StandardScaler) and the inputs (StandardScaler), or use "
            "dtype='float64'.")

    def _past_deadline(self, solver) -> bool:
        """Whether ``max_wall_time`` has run out; data-parallel, on any rank (each rank's
        clock started on its own: deciding alone, one rank left the others waiting in a
        collective, which died with "Connection reset by peer")."""
        if self.config.deadline is None:
            return False
        past = time.perf_counter() >= self.config.deadline
        communicator = _active_communicator(solver)
        return past if communicator is None else communicator.max(float(past)) > 0

    # -- evaluation and stopping rules ----------------------------------------------------
    def _evaluation_due(self, progress: TrainingProgress) -> bool:
        config = self.config
        last_update, last_time = self._last_eval
        if config.eval_every is not None and progress.n_updates - last_update >= config.eval_every:
            return True
        return (config.eval_interval is not None
                and progress.train_time - last_time >= config.eval_interval)

    def _record(self, solver, progress) -> None:
        train_loss = (self._window_loss / self._window_count
                      if self._window_count else math.nan)
        eval_loss = eval_score = math.nan
        if self.evaluate is not None:
            eval_loss, eval_score = self.evaluate()
        row = {"update": progress.n_updates, "epoch": progress.n_epochs,
               "samples": progress.samples_seen, "time": progress.train_time,
               "train_loss": train_loss, "eval_loss": eval_loss, "eval_score": eval_score}
        self._read_report(progress)
        row.update(self._report_values)
        row.update({f"time_{phase}": seconds for phase, seconds in solver.phase_times.items()})
        progress.history.append(row)
        self._window_loss, self._window_count = 0.0, 0
        self._last_eval = (progress.n_updates, progress.train_time)
        self._notify("on_evaluate", row=row)

    def _converged(self, solver, progress, epoch_loss) -> bool:
        """sklearn's MLP rule: no improvement larger than ``tol`` for n_iter_no_change epochs."""
        tol = self.config.tol
        if self.config.early_stopping:
            score = self.validate()
            progress.validation_scores.append(score)
            improved = score >= progress.best_validation_score + tol
            if score > progress.best_validation_score:
                progress.best_validation_score = score
                self._best_weights = [p.detach().clone() for p in solver.params]
        else:
            improved = epoch_loss <= progress.best_loss - tol
            if epoch_loss < progress.best_loss:
                progress.best_loss = epoch_loss
                self._keep_best_epoch(solver)
        progress.no_improvement_count = 0 if improved else progress.no_improvement_count + 1
        return progress.no_improvement_count > self.config.n_iter_no_change

    @staticmethod
    def _stopped_within_epoch(progress) -> bool:
        return progress.stop_reason in ("max_time", "max_wall_time")

    def _keep_best_epoch(self, solver) -> None:
        """Copy the weights at the end of the epoch with the lowest training loss."""
        with torch.no_grad():
            if self._best_epoch_weights is None:
                self._best_epoch_weights = [p.detach().clone() for p in solver.params]
            else:
                torch._foreach_copy_(self._best_epoch_weights,
                                     [p.detach() for p in solver.params])

    def _check_loss_rose(self, solver, progress) -> None:
        """A fit that ends on its epoch rule (``tol`` or ``max_iter``) with an epoch loss
        far above its best one blew up on the way: that is no convergence. Put back the
        weights of the best epoch and stop as diverged (K-FAC at batch 32 on digits went
        0.40 → 0.08 → 2.69 and was reported as converged)."""
        if (self._best_epoch_weights is None or not progress.loss_curve
                or progress.stop_reason not in ("converged", "max_iter")):
            return
        last, best = progress.loss_curve[-1], progress.best_loss
        margin = LOSS_ROSE_MARGIN * max(self.config.reference_loss, best)
        if math.isfinite(last) and not (last > LOSS_ROSE_FACTOR * best and last - best > margin):
            return
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in solver.params], self._best_epoch_weights)
        solver.discard()
        solver.on_restore()
        progress.stop_reason = "diverged"
        warnings.warn(
            f"Training diverged: the epoch loss rose from {best:.4g} to {last:.4g}; the "
            f"weights of the epoch with the lowest loss were restored. Lower "
            "learning_rate_init (or raise damping for K-FAC), or use larger batches.",
            RuntimeWarning, stacklevel=4)

    def _finish(self, solver, progress, *, keep_accumulated: bool) -> None:
        self._read_report(progress)
        if self._best_weights is not None and self._stopped_within_epoch(progress):
            # The weights reached since the last epoch's validation may be the best yet.
            score = self.validate()
            if score >= progress.best_validation_score:
                progress.best_validation_score = score
                self._best_weights = None
        if self._best_weights is None:
            self._check_last_update(solver, progress)
        with torch.no_grad():
            if self._best_weights is not None:
                torch._foreach_copy_([p.data for p in solver.params], self._best_weights)
            elif not all(torch.isfinite(p).all() for p in solver.params):
                restored = self._monitor is not None and self._monitor.restore_best()
                if not restored:
                    solver.restore()
        if keep_accumulated and progress.stop_reason != "diverged":
            progress.pending_loss = float(self._pending_loss)
            solver.copy_pending_data()
        else:
            solver.discard()
            progress.pending_loss = 0.0
        if progress.history[-1]["update"] != progress.n_updates or self._window_count:
            self._record(solver, progress)


# -- data-parallel training: every rank must take the same decisions -----------------------
def _active_communicator(solver):
    """The solver's communicator when it spans several ranks, else ``None``."""
    communicator = solver.communicator
    return communicator if communicator is not None and communicator.active else None


def _batch_sum(solver, loss_sum: torch.Tensor, count: int | float | None = None
               ) -> tuple[torch.Tensor, int | float]:
    """Summed loss and number of samples (or their total weight) behind it (default:
    the update's batch), over all ranks of a data-parallel solver."""
    count = solver.weight_accumulated if count is None else count
    communicator = _active_communicator(solver)
    if communicator is None:
        return loss_sum, count
    return communicator.global_sum(loss_sum, count)


def _check_data_parallel(solver) -> None:
    """Refuse to train a solver without reductions on several ranks (models would differ)."""
    import torch.distributed as dist

    if (solver.communicator is None and dist.is_available()
            and dist.is_initialized() and dist.get_world_size() > 1):
        raise RuntimeError(f"{type(solver).__name__} does not train data-parallel: use "
                           "solver='kfac' in a torch.distributed process group.")


def _agree_on_time(solver, clock: TrainingClock) -> None:
    """Set every rank's training clock to the slowest rank's (one max_time decision)."""
    communicator = _active_communicator(solver)
    if communicator is not None:
        clock.elapsed = communicator.max(clock.elapsed)
