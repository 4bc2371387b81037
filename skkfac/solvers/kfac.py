"""K-FAC: natural-gradient descent with a Kronecker-factored Fisher (Martens & Grosse 2015).

Usable in two ways:

* through the estimators (``solver='kfac'``), driven by :class:`skkfac.training.Trainer`;
* on its own over any PyTorch model whose trainable layers are ``nn.Linear``::

      opt = KFAC(model, loss="cross_entropy")
      for X, y in batches:
          opt.accumulate(X, y)   # forward, curvature statistics, backward
          opt.step()

``accumulate`` may be called on several micro-batches before one ``step`` (the study's
artificial batch size): the update equals the one of the concatenated batch. This module
orchestrates an update (damping, step, acceptance, momentum, state); the Kronecker
factors are :class:`~skkfac.curvature.estimator.CurvatureEstimator`'s and the exact
quadratic model :class:`~skkfac.curvature.quadratic.GaussNewtonModel`'s.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from skkfac.curvature import stat_decay
from skkfac.curvature.control import (
    kl_clipped,
    levenberg_marquardt,
    minimise_plane_model,
    raise_after_rejection,
    reduction_ratio,
)
from skkfac.curvature.estimator import CurvatureEstimator, preferred_batch_size
from skkfac.curvature.precision import full_precision
from skkfac.curvature.quadratic import GaussNewtonModel
from skkfac.curvature.reductions import Reductions
from skkfac.distributed import Communicator
from skkfac.solvers.base import Solver, copy_tensors, rows_of, weight_sums, weighted_sum
from skkfac.solvers.kfac_parameters import (
    HYPERPARAMETERS,
    INTERNAL_HYPERPARAMETERS,
    OTHER_PARAMETERS,
)
from skkfac.solvers.phase_timer import PhaseTimer
from skkfac.solvers.spec import StepReport, document_parameters, register_solver


@register_solver("kfac")
@document_parameters(OTHER_PARAMETERS)
class KFAC(Solver, torch.optim.Optimizer):
    """Kronecker-factored natural-gradient optimizer for networks of ``nn.Linear`` layers.

    Each layer's block of the Fisher is approximated by ``A ⊗ G`` with ``A = E[ā āᵀ]``
    (inputs with a 1 appended when the layer has a bias, so the bias is included) and
    ``G = E[g gᵀ]`` (gradients of the loss with respect to the layer's pre-activations
    for targets drawn from the model's predictive distribution). The direction of layer ``i`` is
    ``Δᵢ = -damped (Aᵢ ⊗ Gᵢ)⁻¹ ∇W̄ᵢ``; with ``adaptive_step`` the step ``lr (α Δ + μ δ₀)``
    minimises the exact quadratic model in the plane of ``Δ`` and the previous step
    ``δ₀``, otherwise it is ``lr`` times a momentum buffer of the directions.

    Parameters
    ----------
    <parameters>

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skkfac import KFAC
    >>> _ = torch.manual_seed(0)
    >>> X, y = torch.randn(512, 4), torch.randint(0, 3, (512,))
    >>> model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    >>> opt = KFAC(model, loss="cross_entropy", random_state=0)
    >>> losses = []
    >>> for _ in range(10):
    ...     losses.append(float(opt.accumulate(X, y)) / len(X))  # summed loss / n
    ...     report = opt.step()
    >>> losses[-1] < losses[0]
    True
    >>> sorted(report.fetch())  # what the last update did, read in one transfer
    ['accepted', 'damping', 'loss_after', 'loss_before', 'momentum', 'rho', 'step_size']
    >>> [tuple(block.A.shape) for block in opt.blocks]  # inputs + 1 (bias)
    [(5, 5), (17, 17)]
    """

    # -- declarations read by the estimators (skkfac.solvers.spec) -----------------------
    hyperparameters = HYPERPARAMETERS
    internal_hyperparameters = INTERNAL_HYPERPARAMETERS
    takes_random_state = True
    auto_batch_size = 1000  # K-FAC wants large batches (the network decides: see below)
    auto_batch_size_rule = (
        "for 'kfac' the batch whose gradient costs at least as much as what the "
        "curvature adds to an update (counted from the layer widths and "
        "``curvature_batch_size``; 1000 for the MNIST autoencoder, 2250 for the study's "
        "CIFAR-10 network: :doc:`/user_guide/batches`), rounded up to a multiple of 250 "
        "and at most ``n_samples``;")

    recovers_from_divergence = True
    #: The Kronecker factors, the quadratic model and ρ are estimated on each update's
    #: samples: from 1-16 of them they are noise (updates of 1, 4 or 16 samples left
    #: 0.40-0.78 test accuracy, one diverging, where SGD reached 0.78-0.80; see
    #: docs/user_guide/batches.rst, "Small mini-batches").
    min_update_size = 128
    #: K-FAC fits a small regression set in a few dozen updates and then fits its noise
    #: (diabetes: test R² -1.20; forest fires -3.35): the estimators'
    #: ``early_stopping='auto'`` holds out a validation split there (0.38 and -0.07).
    #: Classifiers too, stopping on the split's log-loss (``scoring='auto'``): over 9
    #: splits it kept the accuracy of digits, breast cancer and wine and lowered the
    #: test log-loss of the first two (0.118 to 0.101, 0.123 to 0.0945), where stopping
    #: on the accuracy of a small split cost 0.007-0.011 accuracy
    #: (``docs/user_guide/reliability.rst``, "Stopping").
    early_stopping_losses = ("squared_error", "cross_entropy")

    #: Interval of the adaptive step's momentum coefficient: the 2 × 2 model is measured
    #: on the curvature rows, and its noise chose momenta of -10 and 2.2 (digits, batch
    #: 32), -1.0 and 1.75 (CIFAR-10 at defaults), which undo or amplify the last step.
    MOMENTUM_BOUNDS = (0.0, 0.9)

    #: Phases of an update timed in :attr:`phase_times`.
    PHASES = ("forward_backward", "statistics", "inverse", "precondition", "update")

    def __init__(self, model, loss="squared_error", *, lr=1.0, damping=0.1,
                 damping_scheme="tikhonov", adapt_damping=True, damping_adapt_interval=5,
                 min_damping=1e-2, adaptive_step=True, kl_clip=None, stat_decay="linear",
                 momentum_rate=1.0, momentum_max=0.6, momentum=None,
                 momentum_type="heavy_ball", inv_update_freq=10,
                 fisher="sampled", curvature_batch_size=128, precondition_precision="auto",
                 precision="float32", rejection_ratio=2.0, alpha=0.0, random_state=None,
                 process_group=None, distribute_inverses=True):
        # data-parallel: a DistributedDataParallel wrapper only runs accumulate's
        # forward passes (its backward averages the gradients); K-FAC's own forward
        # passes use the wrapped network, outside DDP's bookkeeping.
        self._train_model = model
        self._gradients_averaged = isinstance(
            model, torch.nn.parallel.DistributedDataParallel)
        if self._gradients_averaged:
            model = model.module
        Solver.__init__(self, model, loss, alpha=alpha, precision=precision)
        defaults = dict(lr=lr, damping=damping, damping_scheme=damping_scheme,
                        adapt_damping=adapt_damping,
                        damping_adapt_interval=damping_adapt_interval,
                        min_damping=min_damping, adaptive_step=adaptive_step,
                        kl_clip=kl_clip, stat_decay=stat_decay,
                        momentum_rate=momentum_rate, momentum_max=momentum_max,
                        momentum=momentum, momentum_type=momentum_type,
                        inv_update_freq=inv_update_freq, fisher=fisher,
                        curvature_batch_size=curvature_batch_size,
                        precondition_precision=precondition_precision,
                        rejection_ratio=rejection_ratio)
        self.check_hyperparameters(**defaults)  # the declarations, nothing by hand
        torch.optim.Optimizer.__init__(self, self.params, defaults)
        self.device = self.params[0].device
        self.communicator = Communicator(process_group)
        #: Every cross-example sum of an update goes through it (the data-parallel seam).
        self.reductions = Reductions(self.communicator)
        seed = (int(random_state) if random_state is not None
                else int(torch.randint(2**31, (1,)).item()))
        #: The Kronecker factors: statistics, inverses and preconditioning.
        self.curvature = CurvatureEstimator(self.layers, self.loss, self.hyper,
                                            alpha=self.alpha, reductions=self.reductions,
                                            seed=seed, distribute_inverses=distribute_inverses)
        #: Precision of the curvature: float32 at least (a bfloat16 network included).
        self.factor_dtype = self.curvature.factor_dtype
        #: The loss on the curvature rows and its exact quadratic model.
        self.quadratic = GaussNewtonModel(model, self.layers, self.loss, alpha=self.alpha,
                                          dtype=self.factor_dtype, reductions=self.reductions)
        self.timer = PhaseTimer(self.PHASES, self.device)
        self.last_report: StepReport | None = None
        shared = self._shared
        shared["step"] = 0
        shared["damping"] = self._scalar(damping)
        shared["curvature_scale"] = self._scalar(1.0)
        shared["inverse_damping"] = self._scalar(math.nan)
        shared["refresh"] = torch.ones((), dtype=torch.bool, device=self.device)
        if self.communicator.active:
            self._join_process_group()

    def _scalar(self, value) -> torch.Tensor:
        """A 0-d control value (damping, scale) on the device, in float64."""
        return torch.tensor(value, dtype=torch.float64, device=self.device)

    # -- state ---------------------------------------------------------------------------
    @property
    def hyper(self) -> dict:
        """The (single) parameter group: the hyperparameters."""
        return self.param_groups[0]

    @property
    def _shared(self) -> dict:
        """State not tied to one layer (counters, damping, scale, flags), in the first
        weight's entry of ``self.state`` as ``torch.optim.LBFGS`` does: saved with it."""
        return self.state[self.params[0]]

    def _layer_states(self) -> list[dict]:
        """Each layer's entry of ``self.state`` (its weight's): factors, inverse, steps."""
        return [self.state[layer.weight] for layer in self.layers]

    @property
    def generator(self) -> torch.Generator:
        """The generator of the sampled targets (``fisher='sampled'``)."""
        return self.curvature.generator

    @property
    def blocks(self) -> list:
        """The layers' :class:`~skkfac.curvature.KroneckerBlock` (factors, inverses)."""
        return self.curvature.blocks

    @property
    def ekfac(self):
        """EKFAC's statistics (:class:`~skkfac.curvature.EKFACStatistics`), or ``None``."""
        return self.curvature.ekfac

    @property
    def precondition_dtype(self) -> torch.dtype:
        """The dtype in which the gradients are multiplied with the factor inverses
        (``precondition_precision`` resolved for this network and device)."""
        return self.curvature.precondition_dtype

    @property
    def distribute_inverses(self) -> bool:
        """Whether each rank of a process group inverts and preconditions its own layers."""
        return self.curvature.distribute_inverses

    @distribute_inverses.setter
    def distribute_inverses(self, value: bool) -> None:
        self.curvature.distribute_inverses = bool(value)

    @property
    def damping(self) -> torch.Tensor:
        """The current (adapted) relative damping ``λ``, a 0-d tensor."""
        return self._shared["damping"]

    @property
    def absolute_damping(self) -> torch.Tensor:
        """The Tikhonov ``λ`` of the factors in the loss's units (plus the L2 ``alpha``)."""
        shared = self._shared
        return shared["damping"] * shared["curvature_scale"] + self.alpha

    @property
    def phase_times(self) -> dict[str, float]:
        """Seconds spent in each phase of the updates so far (see :class:`PhaseTimer`)."""
        return self.timer.totals if hasattr(self, "timer") else {}

    @phase_times.setter
    def phase_times(self, value) -> None:
        if hasattr(self, "timer"):  # assigning resets the counters
            self.timer.reset()

    def state_dict(self) -> dict:
        """``torch.optim`` state: hyperparameters in ``param_groups``; counters, damping,
        factors, inverses, momentum and the sampling generator's state in ``state``.

        As with every ``torch.optim`` optimizer the tensors are references: copy (or
        ``torch.save``) the result before training further.
        """
        state = super().state_dict()
        # The shared entry belongs to the first parameter (index 0); copy it, so that
        # the generator's state is not written into the live optimizer state.
        state["state"][0] = {**state["state"][0], "rng_state": self.generator.get_state()}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore :meth:`state_dict`: the next updates continue bit for bit.

        Tensors keep their saved dtype (``torch.optim`` would cast them to the
        parameters': wrong for float32 factors of a bfloat16 network and for the
        generator's state) and move to the parameters' device.
        """
        saved = state_dict["state"]
        super().load_state_dict(state_dict)
        self.state.clear()
        for index, param in enumerate(self.params):
            if index in saved:
                self.state[param] = copy_tensors(saved[index], self.device)
        self.curvature.settings = self.hyper  # torch.optim replaced the group's dict
        self.curvature.restore(self._layer_states(), self._shared.pop("rng_state", None))

    def __getstate__(self):
        state = self.__dict__.copy()
        if state["_train_model"] is not self.model:  # a DDP wrapper holds a process group
            state["_train_model"] = self.model
        return state

    def __setstate__(self, state):
        if "curvature" not in state:  # torch.optim's load_state_dict: state, param_groups
            torch.optim.Optimizer.__setstate__(self, state)
            self.hyper.setdefault("momentum_type", "heavy_ball")  # saved before it existed
            return
        self.__dict__.update(state)
        self.device = self.params[0].device
        self.timer.device = self.device

    def copy_pending_data(self) -> None:
        curvature = self.curvature
        curvature.rows = copy_tensors(curvature.rows)
        if curvature.ekfac is not None:
            curvature.ekfac.rows = copy_tensors(curvature.ekfac.rows)

    # -- data parallelism ----------------------------------------------------------------
    def _join_process_group(self) -> None:
        """Start from rank 0's weights; draw different sampled targets on every rank."""
        comm = self.communicator
        if not self._gradients_averaged:  # DDP has broadcast the weights already
            with torch.no_grad():
                comm.broadcast([p.data for p in self.params], src=0)
        self.curvature.seed_for_rank(int(self.generator.initial_seed()))

    # -- accumulation --------------------------------------------------------------------
    def accumulate(self, X: torch.Tensor, y: torch.Tensor,
                   sample_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Forward/backward on a micro-batch, adding its gradient and curvature statistics.

        The curvature (statistics and the quadratic model) uses the first
        ``curvature_batch_size`` examples of the batch accumulated since the last step,
        wherever the micro-batch boundaries fall; those rows get their own forward pass,
        whose recorded layer inputs also serve the quadratic model, so the curvature costs
        no extra forward pass. ``sample_weight`` (``None``: all 1) makes everything the
        update measures a weighted mean over its rows: the gradient, ``A = Σ wᵢ āᵢāᵢᵀ /
        Σ wᵢ``, ``G`` (and EKFAC's scaling), the quadratic model, ``ρ`` and the rejection
        test. Returns the (weighted) summed loss over the micro-batch, detached.
        """
        curvature = self.curvature
        n = X.shape[0]
        n_curvature = curvature.rows_wanted(n)
        weight = self._check_sample_weight(sample_weight, X)
        totals = (None, None) if weight is None else weight_sums(weight, n_curvature)
        exact = self.forward_is_exact()  # else the step re-evaluates the rows it judges on
        keep_rows = curvature.keep_gradient_rows(self.n_accumulated + n)
        chunks = []  # (inputs, outputs) of the forward passes whose rows are kept
        with self.timer.phase("forward_backward"):
            loss_sum = None
            if n_curvature:
                with curvature.capture() as (inputs, outputs):
                    output = self._forward(self._train_model, X[:n_curvature])
                loss_sum = weighted_sum(self.loss.per_example(output, y[:n_curvature]),
                                        rows_of(weight, 0, n_curvature))
                if keep_rows:
                    chunks.append((list(inputs), list(outputs)))
            if n_curvature < n:
                capture = curvature.capture() if keep_rows else nullcontext(([], []))
                with capture as (rest_inputs, rest_outputs):
                    rest_output = self._forward(self._train_model, X[n_curvature:])
                rest = weighted_sum(self.loss.per_example(rest_output, y[n_curvature:]),
                                    rows_of(weight, n_curvature, n))
                loss_sum = rest if loss_sum is None else loss_sum + rest
                if keep_rows:
                    chunks.append((rest_inputs, rest_outputs))
        if n_curvature:
            with self.timer.phase("statistics"):
                curvature.add_statistics(X[:n_curvature], y[:n_curvature], output, inputs,
                                         outputs, rows_of(weight, 0, n_curvature), totals[0],
                                         exact=exact)
            outputs.clear()
        for chunk_inputs, chunk_outputs in chunks:  # after the statistics' own backward
            curvature.watch_gradients(chunk_inputs, chunk_outputs)
        with self.timer.phase("forward_backward"):
            loss_sum.backward()
        self._count(n, totals[1])
        return loss_sum.detach()

    # -- the update --------------------------------------------------------------------
    def _layer_gradients(self) -> list[torch.Tensor]:
        """Mean gradient plus L2 term per layer: ``[∇W, ∇b]`` (``out × (in + 1)``), or
        ``∇W`` for a layer without bias, in the curvature's precision."""
        gradients = []
        for layer in self.layers:
            weight, *bias = [p.grad if p.grad is not None else torch.zeros_like(p)
                             for p in layer.parameters()]
            if bias:
                matrix = torch.cat([weight, bias[0][:, None]], dim=1)
                gradients.append(matrix.to(self.factor_dtype))
            else:
                gradients.append(weight.to(self.factor_dtype, copy=True))
        if self._gradients_averaged:  # DDP's mean of the ranks' sums → their sum
            torch._foreach_mul_(gradients, float(self.communicator.world_size))
        else:
            self.reductions.all_reduce(gradients)
        torch._foreach_mul_(gradients, 1.0 / self.reductions.count(self.weight_accumulated))
        if self.alpha:
            for layer, V in zip(self.layers, gradients):
                V[:, :layer.in_features].add_(layer.weight.detach(), alpha=self.alpha)
        return gradients

    @torch.no_grad()
    def step(self, closure=None) -> StepReport | None:
        """Apply one update from everything accumulated since the last step.

        Returns
        -------
        StepReport or None
            Whether the update was kept, the curvature-batch loss before and after it,
            ``ρ`` (whenever the quadratic model was evaluated: every update with
            ``adaptive_step``, else on the damping-adaptation updates; the damping
            follows it every ``damping_adapt_interval`` updates), the damping now and the
            step's coefficients; values are 0-d device tensors (``report.fetch()`` reads
            them).
            ``None`` when nothing was accumulated, or (in one process) only rows of
            weight 0, which are dropped: their weighted mean loss is undefined.
        """
        if closure is not None:
            raise ValueError("KFAC.step takes no closure: call accumulate(X, y) first.")
        if self.n_accumulated == 0:
            return None
        if self.weight_accumulated == 0 and not self.communicator.active:
            self._reset_accumulation()
            return None
        if self.curvature.rows_without_weight():
            self._reset_accumulation()
            raise ValueError(
                "The curvature rows of this update (its first curvature_batch_size rows) "
                "all have sample_weight 0: K-FAC estimates the curvature on them. Put rows "
                "of positive weight among them, or leave out the rows of weight 0.")
        with full_precision(self.device):
            report = self._update()
        self._reset_accumulation()
        self.last_report = report
        return report

    def _update(self) -> StepReport:
        hyper, shared, curvature = self.hyper, self._shared, self.curvature
        shared["step"] += 1
        k = shared["step"]
        decay = stat_decay(hyper["stat_decay"], k, hyper["momentum_rate"],
                           hyper["momentum_max"])
        with self.timer.phase("update"):
            gradients = self._layer_gradients()
        # The adaptive step refreshes the inverses *before* folding in this batch's
        # statistics: a direction built from the curvature of the rows the quadratic
        # model then measures dodges their high curvature and the step comes out too long
        # (CIFAR-10: 10-40x jumps at refreshes). A fixed step wants the freshest
        # curvature: inverted a batch late, the study's rule diverged (damping.rst).
        fold_in_first = k == 1 or not hyper["adaptive_step"]
        if fold_in_first:
            with self.timer.phase("statistics"):
                curvature.update_factors(decay, self._layer_states())
        with self.timer.phase("inverse"):
            if curvature.refresh_due(k, shared["refresh"]):
                self._refresh_inverses()
        if not fold_in_first:
            with self.timer.phase("statistics"):
                curvature.update_factors(decay, self._layer_states())
        if curvature.ekfac is not None:
            with self.timer.phase("statistics"):
                curvature.update_eigenvalues(decay)
        with self.timer.phase("precondition"):
            directions = curvature.precondition(gradients, self.n_accumulated,
                                                self.weight_accumulated)
        with self.timer.phase("update"):
            return self._take_step(k, decay, directions, gradients)

    def _refresh_inverses(self) -> None:
        """Invert the factors with the current damping; at the first update, measure
        first the curvature scale that turns the relative damping into the loss's."""
        shared = self._shared
        if shared["step"] == 1:
            shared["curvature_scale"] = self.curvature.scale(shared["curvature_scale"])
        damping = self.absolute_damping
        self.curvature.refresh_inverses(damping, self._layer_states())
        shared["inverse_damping"] = damping
        shared["refresh"] = torch.zeros((), dtype=torch.bool, device=self.device)

    # -- cost and batch_size='auto' -------------------------------------------------------
    def update_work(self) -> tuple[float, float]:
        """Multiply-adds of an update: ``(per_example, fixed)``, counted as
        :meth:`CurvatureEstimator.update_work
        <skkfac.curvature.estimator.CurvatureEstimator.update_work>` says."""
        return self.curvature.update_work(tangents=2 if self.hyper["adaptive_step"] else 0)

    def preferred_batch_size(self) -> int:
        """``batch_size='auto'``: :func:`skkfac.curvature.estimator.preferred_batch_size`
        of :meth:`update_work`.

        >>> from skkfac import KFAC
        >>> from skkfac.nn import build_mlp
        >>> KFAC(build_mlp(784, (1000, 500, 250, 30, 250, 500, 1000), 784)
        ...      ).preferred_batch_size()
        1000
        """
        return preferred_batch_size(*self.update_work())

    # -- the step ------------------------------------------------------------------------
    def _take_step(self, k, decay, directions, gradients) -> StepReport:
        hyper, shared = self.hyper, self._shared
        adapt = (hyper["adapt_damping"] and hyper["damping_scheme"] != "max_norm"
                 and k % hyper["damping_adapt_interval"] == 0)
        # ρ and the rejection test compare terms of one full-precision pass over the rows.
        batch = self.quadratic.in_full_precision(self.curvature.batch())
        model = None
        if hyper["adaptive_step"]:
            previous = [self._layer_state(i, "previous_step") for i in range(len(self.layers))]
            model = self.quadratic.in_span([directions, previous], gradients, batch)
            lam = shared["damping"] * shared["curvature_scale"]
            coefficients = minimise_plane_model(model.fisher + lam * model.identity,
                                                model.linear, self.MOMENTUM_BOUNDS) * hyper["lr"]
            # In place: the directions are not needed once the step is formed.
            steps = [d.mul_(coefficients[0]).addcmul_(p, coefficients[1])
                     for d, p in zip(directions, previous)]
            step_size, momentum = coefficients[0], coefficients[1]
        else:
            momentum = decay if hyper["momentum"] is None else hyper["momentum"]
            if hyper["kl_clip"] is not None and hyper["damping_scheme"] != "max_norm":
                directions = kl_clipped(directions, gradients, hyper["lr"], hyper["kl_clip"])
            steps = self._momentum_steps(directions, momentum)
            step_size, coefficients = hyper["lr"], None
            if adapt:
                model = self.quadratic.in_span([steps], gradients, batch)
                coefficients = self._scalar([1.0])
        loss_before = model.loss if model is not None else self.quadratic.batch_loss(batch)
        accepted, loss_after = self._apply_checked(steps, batch, loss_before)
        rho = None
        if coefficients is not None:
            # ρ compares with the *undamped* model on the same examples as the losses.
            predicted = (coefficients @ model.linear_curvature
                         + 0.5 * coefficients @ model.fisher @ coefficients)
            rho = reduction_ratio(loss_after - loss_before, predicted)
        self._after_step(accepted, steps, adapt, rho)
        return StepReport(accepted=accepted, loss_before=loss_before, loss_after=loss_after,
                          rho=rho, damping=shared["damping"],
                          step_size=step_size, momentum=momentum)

    def _apply_checked(self, steps, batch, loss_before):
        """Apply ``steps``; undo them on the device if the curvature-batch loss is not
        finite or (unless ``rejection_ratio`` is None) grew more than ``rejection_ratio``
        times (plus rounding noise)."""
        saved = [p.detach().clone() for p in self.params]
        self._apply(steps)
        loss_after = self.quadratic.batch_loss(batch, fresh=True)
        tolerance = REJECTION_TOLERANCE_EPS * torch.finfo(self.factor_dtype).eps
        accepted = torch.isfinite(loss_after)
        if self.hyper["rejection_ratio"] is not None:
            accepted &= loss_after <= self.hyper["rejection_ratio"] * loss_before + tolerance
        for p, old in zip(self.params, saved):
            torch.where(accepted, p, old, out=p)
        return accepted, loss_after

    def _after_step(self, accepted, steps, adapt, rho) -> None:
        """Damping and momentum after the update, decided on the device."""
        hyper, shared = self.hyper, self._shared
        damping = shared["damping"]
        if adapt:
            omega = (19.0 / 20.0) ** hyper["damping_adapt_interval"]
            floor = min(hyper["min_damping"], hyper["damping"])
            damping = levenberg_marquardt(damping, rho, omega, floor)
        shared["damping"] = torch.where(accepted, damping,
                                        raise_after_rejection(shared["damping"]))
        key = "previous_step" if hyper["adaptive_step"] else "momentum_buffer"
        for layer, step in zip(self.layers, steps):
            state = self.state[layer.weight]
            kept = step if key == "previous_step" else state[key]
            state[key] = torch.where(accepted, kept, kept.new_zeros(()), out=kept)
        ratio = self.absolute_damping / shared["inverse_damping"]
        shared["refresh"] = ~accepted | (ratio < 0.5) | (ratio > 2.0)
        self.curvature.publish_refresh_flag(shared["refresh"])

    def _layer_state(self, index: int, key: str) -> torch.Tensor:
        """A per-layer tensor of the step's shape, zeros until first set."""
        state = self.state[self.layers[index].weight]
        if key not in state:
            state[key] = torch.zeros_like(self.blocks[index].G_sum[:, :1]).expand(
                -1, self.blocks[index].A_sum.shape[0]).clone()
        return state[key]

    def _momentum_steps(self, directions, momentum):
        """Step ``lr · v``, ``v ← μv + Δ`` (heavy ball) or ``μv + (1 − μ)Δ`` (average)."""
        weight = 1.0 - momentum if self.hyper["momentum_type"] == "average" else 1.0
        steps = []
        for index, direction in enumerate(directions):
            buffer = self._layer_state(index, "momentum_buffer")
            buffer.mul_(momentum).add_(direction, alpha=weight)
            steps.append(buffer * self.hyper["lr"])
        return steps

    def _apply(self, steps) -> None:
        for layer, step in zip(self.layers, steps):
            n_in = layer.in_features
            layer.weight.add_(step[:, :n_in].to(layer.weight.dtype))
            if layer.bias is not None:
                layer.bias.add_(step[:, n_in].to(layer.bias.dtype))

    # -- divergence handling -----------------------------------------------------------
    def _reset_accumulation(self) -> None:
        super()._reset_accumulation()
        self.curvature.reset()

    def on_restore(self) -> None:
        """After a rejected update: raise damping threefold, forget momentum, re-invert."""
        shared = self._shared
        shared["damping"] = raise_after_rejection(shared["damping"])
        for layer in self.layers:
            self.state[layer.weight].pop("momentum_buffer", None)
            self.state[layer.weight].pop("previous_step", None)
        shared["refresh"] = torch.ones((), dtype=torch.bool, device=self.device)
        self.curvature.forget_published_flag()


#: A loss increase below this many machine epsilons is rounding noise, never a reason to
#: reject (a cross-entropy near zero doubles from one rounding to the next).
REJECTION_TOLERANCE_EPS = 1e3

