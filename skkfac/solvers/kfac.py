"""K-FAC: natural-gradient descent with a Kronecker-factored Fisher (Martens & Grosse 2015).

Usable in two ways:

* through the estimators (``solver='kfac'``), driven by :class:`skkfac.training.Trainer`;
* on its own over any PyTorch model whose trainable layers are ``nn.Linear``::

      opt = KFAC(model, loss="cross_entropy")
      for X, y in batches:
          opt.accumulate(X, y)   # forward, curvature statistics, backward
          opt.step()

``accumulate`` may be called on several micro-batches before one ``step`` (the study's
artificial batch size): statistics and gradients are summed, so the update equals the
one computed on the concatenated batch.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from numbers import Integral, Real

import torch
from sklearn.utils._param_validation import Interval, StrOptions
from torch.func import functional_call, jvp

from skkfac.curvature import DAMPING_SCHEMES, STAT_DECAY_SCHEDULES, KroneckerBlock, stat_decay
from skkfac.distributed import Communicator, compute_on_owners
from skkfac.nn import sequential_jvp, supports_fast_jvp
from skkfac.solvers.base import Solver
from skkfac.solvers.spec import Hyperparameter, register_solver

FISHER_TYPES = ("sampled", "exact", "empirical")


@register_solver("kfac")
class KFAC(Solver, torch.optim.Optimizer):
    """Kronecker-factored natural-gradient optimizer for networks of ``nn.Linear`` layers.

    Each layer's block of the Fisher is approximated by ``A ⊗ G`` with ``A = E[ā āᵀ]``
    (inputs with a 1 appended, so the bias is included) and ``G = E[g gᵀ]`` (gradients of
    the loss with respect to the layer's pre-activations for targets drawn from the
    model's predictive distribution). The direction of layer ``i`` is
    ``Δᵢ = -damped (Aᵢ ⊗ Gᵢ)⁻¹ ∇W̄ᵢ``; with ``adaptive_step`` the step ``lr (α Δ + μ δ₀)``
    minimises the exact quadratic model in the plane of ``Δ`` and the previous step
    ``δ₀``, otherwise it is ``lr`` times a momentum buffer of the directions.

    Parameters
    ----------
    model : torch.nn.Module
        The network; every ``nn.Linear`` in it is trained, nothing else is.
    loss : {'squared_error', 'cross_entropy'} or loss object
        Per-example loss and its predictive distribution (:mod:`skkfac.losses`).
    lr : float, default=1.0
        Learning rate. With ``adaptive_step`` it multiplies the step that minimises the
        quadratic model (``lr=1``: that optimum). Otherwise it is
        the step size; with ``damping_scheme='tikhonov'`` or ``'eigen'`` the Fisher has
        the curvature scale of the loss and ``lr=1`` is a full (damped) Newton-like step.
    damping : float, default=0.1
        Tikhonov damping ``λ`` *relative to the curvature's scale*: the absolute damping
        is ``damping · s`` with ``s`` the mean over layers of
        ``(tr A / dim A)(tr G / dim G)`` (the average eigenvalue of ``A ⊗ G``) measured
        at the first update, so the same value suits losses and data of any scale.
        Initial value when ``adapt_damping``. For ``'max_norm'`` it is the shift added to
        the max-normalised factors.
    damping_scheme : {'tikhonov', 'eigen', 'max_norm'}, default='tikhonov'
        ``'tikhonov'``: factored Tikhonov ``(A + π√λ I) ⊗ (G + √λ/π I)``;
        ``'eigen'``: exact ``A ⊗ G + λ I`` in the factors' eigenbasis;
        ``'max_norm'``: the study's divide-by-max normalisation of A, G and the update.
    adapt_damping : bool, default=True
        Levenberg–Marquardt adaptation of ``λ`` from the reduction ratio ``ρ`` of the
        loss against its quadratic model (exact Fisher–vector product), every
        ``damping_adapt_interval`` updates.
    damping_adapt_interval : int, default=5
        Updates between two Levenberg–Marquardt adjustments.
    min_damping : float, default=1e-8
        Lower bound of the adapted (relative) ``λ``.
    adaptive_step : bool, default=True
        Choose the step size and the momentum of every update by minimising the exact
        (Gauss–Newton) quadratic model ``M(δ) = ∇ᵀδ + ½ δᵀ(F + λI)δ`` in the plane of the
        K-FAC direction and the previous step (Martens & Grosse 2015, §7), on the
        curvature batch. ``False``: fixed ``lr`` and momentum, as in the study.
    kl_clip : float or None, default=None
        With ``adaptive_step=False``: scale each update so that its Fisher norm
        ``lr² ΔᵀFΔ`` stays below ``kl_clip`` (Ba et al. 2017). ``None`` disables the clip.
    stat_decay : {'linear', 'martens'}, default='linear'
        Running-average schedule of ``A`` and ``G`` (see :mod:`skkfac.curvature.schedules`).
    momentum_rate, momentum_max : float, default=1.0, 0.6
        Parameters of the ``'linear'`` schedule ``α_k = min(0.05 k m_rate, m_max)``;
        ``momentum_max`` also caps the ``'martens'`` schedule.
    momentum : float or None, default=None
        Momentum of the update when ``adaptive_step=False``. ``None`` reuses the
        statistics' decay ``α_k`` as the study does.
    inv_update_freq : int, default=10
        Refresh the inverses every this many updates (and after a damping change of more
        than a factor 2 or a rejected update).
    fisher : {'sampled', 'exact', 'empirical'}, default='sampled'
        ``'sampled'``: one target drawn per example from the model (true Fisher, Monte
        Carlo); ``'exact'``: the expectation over the model's distribution computed in
        closed form, one backward pass per output unit (cheap for few outputs);
        ``'empirical'``: the training labels (empirical Fisher, for comparison only).
    curvature_batch_size : int or None, default=256
        Estimate ``A``, ``G`` and the quadratic model on the first this many examples of
        each (artificial) batch; the gradient always uses all of them. Makes the cost of
        the curvature independent of the batch size.
    rejection_ratio : float, default=2.0
        An update after which the loss *on the same curvature batch* is non-finite or
        more than this multiple of the loss before it is undone at once, ``λ`` is raised
        tenfold and the momentum forgotten (comparing on the same examples keeps the
        mini-batch noise out of the decision).
    alpha : float, default=0.0
        L2 penalty on the weights; also added to the damping.
    random_state : int or None
        Seed of the target sampling.
    process_group : torch.distributed.ProcessGroup or None, default=None
        Data-parallel training (:mod:`skkfac.distributed`): when ``torch.distributed``
        is initialised with several ranks, each rank accumulates its share of every
        batch and ``step`` reduces gradients, Kronecker statistics, the quadratic
        model's scalars and the curvature losses over this group (``None``: the default
        group), so every rank makes the update of the whole batch. Gradients are not
        reduced again when ``model`` is a ``DistributedDataParallel``. Ignored in a
        single process.
    distribute_inverses : bool, default=True
        In a process group: invert each layer's factors on one rank
        (``layer mod world_size``) and broadcast; ``False``: every rank inverts all.

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
    ...     opt.step()
    >>> losses[-1] < losses[0]
    True
    >>> [tuple(block.A.shape) for block in opt.blocks]  # inputs + 1 (bias)
    [(5, 5), (17, 17)]
    """

    # -- declarations read by the estimators (skkfac.solvers.spec) -----------------------
    hyperparameters = (
        Hyperparameter(
            "lr", 1.0, [Interval(Real, 0, None, closed="neither")],
            "with ``adaptive_step``, a multiplier of the step that minimises the "
            "quadratic model (1 = that optimum); otherwise the step size.",
            estimator_name="learning_rate_init"),
        Hyperparameter(
            "damping", 0.1, [Interval(Real, 0, None, closed="left")],
            "K-FAC Tikhonov damping λ relative to the average eigenvalue of the Kronecker "
            "factors at the first update (so it does not depend on the scale of the loss "
            "or the data); initial value when ``adapt_damping``."),
        Hyperparameter(
            "damping_scheme", "tikhonov", [StrOptions(set(DAMPING_SCHEMES))],
            "K-FAC damping: factored Tikhonov, exact Tikhonov in the eigenbasis, or the "
            "study's divide-by-max normalisation. See :class:`skkfac.KFAC`."),
        Hyperparameter(
            "adapt_damping", True, ["boolean"],
            "Adapt λ by the Levenberg–Marquardt rule (K-FAC)."),
        Hyperparameter(
            "adaptive_step", True, ["boolean"],
            "K-FAC: choose the step size and the momentum of every update by minimising "
            "the exact (Gauss–Newton) quadratic model in the plane of the K-FAC direction "
            "and the previous step (Martens & Grosse 2015, §7). ``False``: fixed learning "
            "rate, and momentum from the running-average schedule as in the study."),
        Hyperparameter(
            "kl_clip", None, [None, Interval(Real, 0, None, closed="neither")],
            "Bound on the Fisher norm of each K-FAC update when ``adaptive_step=False``."),
        Hyperparameter(
            "stat_decay", "linear", [StrOptions(set(STAT_DECAY_SCHEDULES))],
            "Running-average schedule of K-FAC's Kronecker factors."),
        Hyperparameter(
            "momentum_rate", 1.0, [Interval(Real, 0, None, closed="neither")],
            "K-FAC ``m_rate`` of the linear schedule ``α_k = min(0.05·k·m_rate, m_max)``."),
        Hyperparameter(
            "momentum_max", 0.6, [Interval(Real, 0, 1, closed="left")],
            "K-FAC ``m_max``; ``α_k`` is also the momentum of the update, as in the study."),
        Hyperparameter(
            "inv_update_freq", 10, [Interval(Integral, 1, None, closed="left")],
            "Recompute K-FAC's inverses every this many updates."),
        Hyperparameter(
            "fisher", "sampled", [StrOptions(set(FISHER_TYPES))],
            "How K-FAC estimates ``G``: targets sampled from the model (true Fisher), the "
            "exact expectation (one backward per output), or the labels (empirical "
            "Fisher)."),
        Hyperparameter(
            "curvature_batch_size", 256, [None, Interval(Integral, 1, None, closed="left")],
            "Estimate K-FAC's factors (and its quadratic model) on the first this many "
            "samples of each update's batch, artificial batches included; ``None``: all "
            "of them. Keeps the curvature's cost independent of the batch size."),
    )
    auto_batch_size = 1000  # K-FAC wants large batches

    recovers_from_divergence = True

    def __init__(self, model, loss="squared_error", *, lr=1.0, damping=0.1,
                 damping_scheme="tikhonov", adapt_damping=True, damping_adapt_interval=5,
                 min_damping=1e-8, adaptive_step=True, kl_clip=None, stat_decay="linear",
                 momentum_rate=1.0,
                 momentum_max=0.6, momentum=None, inv_update_freq=10, fisher="sampled",
                 curvature_batch_size=256, rejection_ratio=2.0, alpha=0.0,
                 random_state=None, process_group=None, distribute_inverses=True):
        # data-parallel: a DistributedDataParallel wrapper only runs accumulate's
        # forward/backward (it averages the gradients); K-FAC's own forward passes use
        # the wrapped network, outside DDP's bookkeeping.
        self._train_model = model
        self._gradients_averaged = isinstance(
            model, torch.nn.parallel.DistributedDataParallel)
        if self._gradients_averaged:
            model = model.module
        Solver.__init__(self, model, loss, alpha=alpha)
        if damping_scheme not in DAMPING_SCHEMES:
            raise ValueError(f"damping_scheme must be one of {sorted(DAMPING_SCHEMES)}, "
                             f"got {damping_scheme!r}.")
        if stat_decay not in STAT_DECAY_SCHEDULES:
            raise ValueError(f"stat_decay must be one of {sorted(STAT_DECAY_SCHEDULES)}, "
                             f"got {stat_decay!r}.")
        if fisher not in FISHER_TYPES:
            raise ValueError(f"fisher must be one of {FISHER_TYPES}, got {fisher!r}.")
        if not (lr > 0 and damping >= 0 and inv_update_freq >= 1):
            raise ValueError("KFAC needs lr > 0, damping >= 0 and inv_update_freq >= 1.")
        defaults = dict(lr=lr, damping=damping, damping_scheme=damping_scheme,
                        adapt_damping=adapt_damping,
                        damping_adapt_interval=damping_adapt_interval,
                        min_damping=min_damping, adaptive_step=adaptive_step,
                        kl_clip=kl_clip, stat_decay=stat_decay,
                        momentum_rate=momentum_rate, momentum_max=momentum_max,
                        momentum=momentum, inv_update_freq=inv_update_freq, fisher=fisher,
                        curvature_batch_size=curvature_batch_size,
                        rejection_ratio=rejection_ratio, step=0, inverse_damping=None,
                        curvature_scale=None)
        torch.optim.Optimizer.__init__(self, self.params, defaults)
        first = self.params[0]
        self.blocks = [KroneckerBlock(layer.in_features, layer.out_features,
                                      dtype=first.dtype, device=first.device)
                       for layer in self.layers]
        self.n_curvature_examples = 0
        self.generator = torch.Generator(device=first.device)
        self.generator.manual_seed(int(random_state) if random_state is not None
                                   else int(torch.randint(2**31, (1,)).item()))
        self.phase_times = dict.fromkeys(
            ("forward_backward", "statistics", "inverse", "precondition", "update"), 0.0)
        self.last_rho: float | None = None
        self._curvature_rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._fast_jvp = supports_fast_jvp(model)
        self.n_rejected_steps = 0
        self.communicator = Communicator(process_group)
        self.distribute_inverses = bool(distribute_inverses)
        if self.communicator.active:
            self._join_process_group()

    def __getstate__(self):
        # torch.Generator does not pickle: carry its device and state instead.
        state = self.__dict__.copy()
        if state["_train_model"] is not self.model:  # a DDP wrapper holds a process group
            state["_train_model"] = self.model
        state["generator"] = (str(self.generator.device), self.generator.get_state())
        return state

    def __setstate__(self, state):
        device, rng_state = state.pop("generator")
        self.__dict__.update(state)
        self.generator = torch.Generator(device=device)
        self.generator.set_state(rng_state)

    @property
    def hyper(self) -> dict:
        """The (single) parameter group: hyperparameters and the mutable counters."""
        return self.param_groups[0]

    # -- timing ------------------------------------------------------------------------
    @contextmanager
    def _phase(self, name: str):
        device = self.params[0].device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.phase_times[name] += time.perf_counter() - start

    # -- statistics --------------------------------------------------------------------
    @contextmanager
    def _capture_layers(self):
        """Record each Linear layer's input and output (pre-activation) during forward."""
        inputs: list[torch.Tensor] = []
        outputs: list[torch.Tensor] = []

        def hook(module, args, output):
            inputs.append(args[0].detach())
            outputs.append(output)

        handles = [layer.register_forward_hook(hook) for layer in self.layers]
        try:
            yield inputs, outputs
        finally:
            for handle in handles:
                handle.remove()

    def _output_gradients(self, output, target, outputs) -> list[list[torch.Tensor]]:
        """Per-example gradients of the loss w.r.t. every layer's output, per 'fisher'.

        Only the pre-activation gradients are computed (no weight gradients). Returns a
        list over backward passes of lists over layers.
        """
        fisher = self.hyper["fisher"]
        if fisher == "exact":
            return [list(torch.autograd.grad(output, outputs, grad_outputs=column,
                                             retain_graph=True))
                    for column in self.loss.hessian_sqrt_columns(output)]
        if fisher == "sampled":
            target = self.loss.sample_targets(output, generator=self.generator)
        loss_sum = self.loss.per_example(output, target).sum()
        return [list(torch.autograd.grad(loss_sum, outputs, retain_graph=True))]

    def _add_statistics(self, output, target, inputs, outputs) -> None:
        for gradients in self._output_gradients(output, target, outputs):
            for block, g in zip(self.blocks, gradients):
                block.add_output_gradients(g.detach())
        for block, a in zip(self.blocks, inputs):
            block.add_inputs(a)
        self.n_curvature_examples += output.shape[0]

    def accumulate(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward/backward on a micro-batch, adding its gradient and curvature statistics.

        The curvature (statistics and the quadratic model) uses the first
        ``curvature_batch_size`` examples of the batch accumulated since the last step,
        wherever the micro-batch boundaries fall. Returns the summed (not averaged) loss
        over the micro-batch, detached.
        """
        limit = self.hyper["curvature_batch_size"]
        n_curvature = X.shape[0] if limit is None else max(
            0, min(X.shape[0], limit - self.n_curvature_examples))
        with self._phase("forward_backward"):
            with self._capture_layers() as (inputs, outputs):
                output = self._train_model(X)
            loss_sum = self.loss.per_example(output, y).sum()
        if n_curvature == X.shape[0]:
            with self._phase("statistics"):
                self._add_statistics(output, y, inputs, outputs)
        inputs.clear()
        outputs.clear()
        with self._phase("forward_backward"):
            loss_sum.backward()
        if 0 < n_curvature < X.shape[0]:
            with self._phase("statistics"):
                with self._capture_layers() as (inputs, outputs):
                    sub_output = self.model(X[:n_curvature])
                self._add_statistics(sub_output, y[:n_curvature], inputs, outputs)
        if n_curvature:
            self._curvature_rows.append((X[:n_curvature], y[:n_curvature]))
        self.n_accumulated += X.shape[0]
        return loss_sum.detach()

    # -- the update --------------------------------------------------------------------
    def _layer_gradients(self) -> list[torch.Tensor]:
        """``[∇W, ∇b]`` per layer, as ``out × (in + 1)`` matrices."""
        return [torch.cat([layer.weight.grad, layer.bias.grad.unsqueeze(1)], dim=1)
                if layer.bias is not None else
                torch.cat([layer.weight.grad, torch.zeros_like(layer.weight.grad[:, :1])], 1)
                for layer in self.layers]

    def _refresh_inverses(self, damping: float) -> None:
        scheme = DAMPING_SCHEMES[self.hyper["damping_scheme"]]
        if self.communicator.active and self.distribute_inverses:
            inverses = compute_on_owners(
                self.communicator, len(self.blocks),
                lambda i: scheme(self.blocks[i].A, self.blocks[i].G, damping),
                self.params[0].device)
            for block, inverse in zip(self.blocks, inverses):
                block.inverse = inverse
        else:
            for block in self.blocks:
                block.inverse = scheme(block.A, block.G, damping)
        self.hyper["inverse_damping"] = damping

    def _needs_inverse_refresh(self, k: int, damping: float) -> bool:
        previous = self.hyper["inverse_damping"]
        if previous is None or self.blocks[0].inverse is None:
            return True
        if (k - 1) % self.hyper["inv_update_freq"] == 0:
            return True
        ratio = max(damping, 1e-30) / max(previous, 1e-30)
        return not (0.5 <= ratio <= 2.0)

    @torch.no_grad()
    def step(self, closure=None):
        """Apply one update from everything accumulated since the last step."""
        if closure is not None:
            raise ValueError("KFAC.step takes no closure: call accumulate(X, y) first.")
        if self.n_accumulated == 0:
            return
        with self._phase("update"):
            self._reduce_accumulated()
        hyper = self.hyper
        hyper["step"] += 1
        k = hyper["step"]
        decay = stat_decay(hyper["stat_decay"], k, hyper["momentum_rate"],
                           hyper["momentum_max"])
        with self._phase("update"):
            self._mean_gradients()
            gradients = self._layer_gradients()
        with self._phase("statistics"):
            if self.n_curvature_examples:
                for block in self.blocks:
                    block.update_running_averages(self.n_curvature_examples, decay)
            self.n_curvature_examples = 0
            if hyper["curvature_scale"] is None:
                hyper["curvature_scale"] = self._curvature_scale()
        damping = self.absolute_damping
        with self._phase("inverse"):
            if self._needs_inverse_refresh(k, damping):
                self._refresh_inverses(damping)
        with self._phase("precondition"):
            directions = [-block.inverse.apply(V) for block, V in zip(self.blocks, gradients)]
        with self._phase("update"):
            adapt = (hyper["adapt_damping"] and hyper["damping_scheme"] != "max_norm"
                     and k % hyper["damping_adapt_interval"] == 0)
            if hyper["adaptive_step"]:
                steps, (predicted, loss_before) = self._rescaled_steps(
                    directions, gradients, damping)
            else:
                momentum = decay if hyper["momentum"] is None else hyper["momentum"]
                steps = self._momentum_steps(self._clip(directions, gradients), momentum)
                if adapt:
                    matrix, linear, loss_before = self._quadratic_model(
                        [steps], gradients, damping)
                    predicted = linear[0] + 0.5 * matrix[0, 0]
                else:
                    loss_before = self._curvature_loss()
            self._apply(steps)
            loss_after = float(self._curvature_loss())
            if not loss_after <= hyper["rejection_ratio"] * float(loss_before):  # NaN too
                self._apply([-step for step in steps])
                self.n_rejected_steps += 1
                self.on_restore()
            else:
                for layer, step in zip(self.layers, steps):
                    self.state[layer.weight]["previous_step"] = step
                if adapt:
                    self._adapt_damping(predicted, loss_before, loss_after)
            self._reset_accumulation()

    def _curvature_loss(self) -> torch.Tensor:
        X, y = self._curvature_batch()
        return self.communicator.weighted_mean(
            self.loss.per_example(self.model(X), y).mean(), X.shape[0])

    def _curvature_scale(self) -> float:
        """Mean over layers of the average eigenvalue ``(tr A/dim A)(tr G/dim G)``."""
        if self.hyper["damping_scheme"] == "max_norm" or self.blocks[0].A is None:
            return 1.0  # max_norm normalises the factors itself
        scales = [float(torch.trace(b.A)) / b.A.shape[0] * float(torch.trace(b.G)) / b.G.shape[0]
                  for b in self.blocks]
        scale = sum(scales) / len(scales)
        return scale if scale > 0 and math.isfinite(scale) else 1.0

    @property
    def absolute_damping(self) -> float:
        """The Tikhonov ``λ`` in the loss's units (plus the L2 penalty ``alpha``)."""
        scale = self.hyper["curvature_scale"] or 1.0
        return self.hyper["damping"] * scale + self.alpha

    def _momentum_steps(self, directions, momentum):
        """``buffer = momentum · buffer + direction``; step ``lr · buffer`` (heavy ball)."""
        steps = []
        for layer, direction in zip(self.layers, directions):
            buffer = self.state[layer.weight].get("momentum_buffer")
            if buffer is None or momentum == 0:
                buffer = direction.clone()
            else:
                buffer.mul_(momentum).add_(direction)
            self.state[layer.weight]["momentum_buffer"] = buffer
            steps.append(buffer * self.hyper["lr"])
        return steps

    def _rescaled_steps(self, directions, gradients, damping):
        """Step ``lr (α Δ + μ δ₀)`` with α, μ minimising the exact quadratic model.

        Martens & Grosse (2015, §7): the K-FAC direction ``Δ`` and the previous step
        ``δ₀`` span a plane in which the damped Gauss–Newton model
        ``M(δ) = ∇ᵀδ + ½ δᵀ(F + λI)δ`` is minimised exactly (a 2 × 2 solve), which sets
        both the step size and the momentum.
        """
        previous = [self.state[layer.weight].get("previous_step") for layer in self.layers]
        candidates = [directions] if previous[0] is None else [directions, previous]
        matrix, linear, loss_before = self._quadratic_model(candidates, gradients, damping)
        if len(candidates) == 2:
            # Δ and δ₀ (nearly) parallel make the 2 × 2 system singular: keep Δ alone
            # (decided on the device, without a host round trip).
            det = matrix[0, 0] * matrix[1, 1] - matrix[0, 1] ** 2
            degenerate = det <= 1e-10 * matrix[0, 0] * matrix[1, 1]
            alone = torch.stack([-linear[0] / matrix[0, 0], torch.zeros_like(linear[0])])
            solved = torch.linalg.solve(
                torch.where(degenerate, torch.eye(2, dtype=matrix.dtype, device=matrix.device),
                            matrix), -linear)
            coefficients = torch.where(degenerate, alone, solved)
        else:
            coefficients = -linear / matrix[0, 0]
        coefficients = coefficients * self.hyper["lr"]
        self.last_coefficients = coefficients
        steps = [sum(c * candidate[i] for c, candidate in zip(coefficients, candidates))
                 for i in range(len(self.layers))]
        return steps, (coefficients @ linear + 0.5 * coefficients @ matrix @ coefficients,
                       loss_before)

    def _clip(self, updates, gradients):
        """Scale updates so that ``lr² Δᵀ F Δ ≈ lr² Σ ⟨U, ∇⟩ <= kl_clip`` (Ba et al. 2017)."""
        kl_clip = self.hyper["kl_clip"]
        if kl_clip is None or self.hyper["damping_scheme"] == "max_norm":
            return updates
        lr = self.hyper["lr"]
        fisher_norm = -sum((U * V).sum() for U, V in zip(updates, gradients)) * lr**2
        scale = torch.clamp(torch.sqrt(kl_clip / fisher_norm.clamp_min(1e-30)), max=1.0)
        return [U * scale for U in updates]

    def _apply(self, steps) -> None:
        for layer, step in zip(self.layers, steps):
            layer.weight.add_(step[:, :-1])
            if layer.bias is not None:
                layer.bias.add_(step[:, -1])

    # -- the exact quadratic model -------------------------------------------------------
    def _curvature_batch(self):
        """The examples the curvature statistics of this step came from."""
        if len(self._curvature_rows) == 1:
            return self._curvature_rows[0]
        return (torch.cat([X for X, _ in self._curvature_rows]),
                torch.cat([y for _, y in self._curvature_rows]))

    def _jacobian_products(self, X, tangent_sets):
        """Network output on ``X`` and ``J t`` for each set of per-layer tangents ``t``."""
        if self._fast_jvp:
            output, products = sequential_jvp(self.model, X, tangent_sets)
            return output, list(products)
        named = dict(self.model.named_parameters())
        names = [name for name, p in named.items() if any(p is q for q in self.params)]
        params = tuple(named[name] for name in names)

        def forward(*values):
            return functional_call(self.model, dict(zip(names, values)), (X,))

        products = []
        output = None
        for tangents in tangent_sets:
            by_param = {}
            for layer, tangent in zip(self.layers, tangents):
                by_param[id(layer.weight)] = tangent[:, :-1]
                if layer.bias is not None:
                    by_param[id(layer.bias)] = tangent[:, -1]
            output, product = jvp(forward, params, tuple(by_param[id(p)] for p in params))
            products.append(product)
        return output, products

    def _quadratic_model(self, candidates, gradients, damping):
        """Matrix ``Cᵀ(F + λI)C`` and vector ``Cᵀ∇`` of the model restricted to ``candidates``.

        ``F`` is the exact Fisher (Gauss–Newton) on the curvature batch, applied through
        Jacobian–vector products. Also returns the loss there before the update.
        """
        X, y = self._curvature_batch()
        output, products = self._jacobian_products(X, candidates)
        n = len(candidates)
        linear = torch.stack([sum((V * c).sum() for V, c in zip(gradients, candidates[i]))
                              for i in range(n)]).double()
        entries = {}
        for i in range(n):
            for j in range(i, n):
                inner = sum((a * b).sum() for a, b in zip(candidates[i], candidates[j]))
                entries[i, j] = entries[j, i] = (
                    self.loss.fisher_inner(output, products[i], products[j]) + damping * inner)
        matrix = torch.stack([torch.stack([entries[i, j] for j in range(n)])
                              for i in range(n)]).double()
        loss_before = self.loss.per_example(output, y).mean()
        if self.communicator.active:  # means over every rank's curvature batch
            both = self.communicator.weighted_mean(
                torch.cat([matrix.reshape(-1), loss_before.double().reshape(1)]), X.shape[0])
            matrix, loss_before = both[:-1].view(n, n), both[-1].to(loss_before.dtype)
        return matrix, linear, loss_before

    def _adapt_damping(self, predicted_change, loss_before, loss_after: float) -> None:
        """Levenberg–Marquardt: compare the loss change on the curvature batch with M(δ)."""
        actual = loss_after - float(loss_before)
        predicted = float(predicted_change)
        rho = actual / predicted if predicted < 0 else float("-inf")
        self.last_rho = rho
        hyper = self.hyper
        omega = (19.0 / 20.0) ** hyper["damping_adapt_interval"]
        if rho > 0.75:
            hyper["damping"] = max(hyper["damping"] * omega, hyper["min_damping"])
        elif rho < 0.25:
            hyper["damping"] = hyper["damping"] / omega

    # -- divergence handling -----------------------------------------------------------
    def _reset_accumulation(self) -> None:
        super()._reset_accumulation()
        self.n_curvature_examples = 0
        self._curvature_rows = []
        for block in self.blocks:
            block.reset_sums()

    def on_restore(self) -> None:
        """After a rejected update: raise damping tenfold, forget momentum, re-invert."""
        hyper = self.hyper
        hyper["damping"] = max(hyper["damping"] * 10.0, 1e-4)
        for layer in self.layers:
            self.state[layer.weight].pop("momentum_buffer", None)
            self.state[layer.weight].pop("previous_step", None)
        hyper["inverse_damping"] = None

    # -- data-parallel training (skkfac.distributed) ---------------------------------------
    def _join_process_group(self) -> None:
        """Start from rank 0's weights; draw different sampled targets on every rank."""
        comm = self.communicator
        if not self._gradients_averaged:  # DDP has broadcast the weights already
            with torch.no_grad():
                comm.broadcast([p.data for p in self.params], src=0)
        seed = int(self.generator.initial_seed())
        self.generator.manual_seed((seed + 7919 * comm.rank) % 2**63)

    def _reduce_accumulated(self) -> None:
        """Sum every rank's gradients, factor sums and example counts (one all-reduce)."""
        comm = self.communicator
        if not comm.active:
            return
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        counts = torch.tensor([self.n_accumulated, self.n_curvature_examples],
                              dtype=self.params[0].dtype, device=self.params[0].device)
        gradients = [] if self._gradients_averaged else [p.grad for p in self.params]
        comm.all_reduce([*gradients, counts,
                         *(t for block in self.blocks for t in (block.A_sum, block.G_sum))])
        if self._gradients_averaged:  # DDP's mean of the ranks' sums → their sum
            for p in self.params:
                p.grad.mul_(comm.world_size)
        self.n_accumulated, self.n_curvature_examples = (round(float(c)) for c in counts)
