"""K-FAC's curvature estimate of a network: statistics, running factors, inverses, products.

:class:`CurvatureEstimator` is the part of K-FAC that knows the Fisher's Kronecker
blocks, one per ``nn.Linear`` layer (:class:`~skkfac.curvature.KroneckerBlock`). The
optimizer (:class:`skkfac.KFAC`) drives it, as kfac-jax's optimizer drives its curvature
estimator, through three operations per update:

* *update the curvature estimate*: :meth:`~CurvatureEstimator.add_statistics` on the
  curvature rows of each micro-batch, then :meth:`~CurvatureEstimator.update_factors`
  (and, for EKFAC, :meth:`~CurvatureEstimator.update_eigenvalues`);
* *update the cache*: :meth:`~CurvatureEstimator.refresh_inverses` when
  :meth:`~CurvatureEstimator.refresh_due` says so;
* *multiply by the inverse*: :meth:`~CurvatureEstimator.precondition`.

The optimizer owns the damping, the step and the ``state_dict``: the factors and
inverses are recorded in the per-layer state entries it passes in, and restored from
them by :meth:`~CurvatureEstimator.restore`.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager

import torch
from torch import nn

from skkfac.curvature import DAMPING_SCHEMES, EKFACStatistics, KroneckerBlock
from skkfac.curvature.precision import factor_dtype, full_precision, preconditioning_dtype
from skkfac.curvature.quadratic import CurvatureRows, concatenate_rows
from skkfac.curvature.reductions import Reductions
from skkfac.distributed import compute_on_owners


class CurvatureEstimator:
    """The Kronecker-factored Fisher of a network's ``nn.Linear`` layers.

    Parameters
    ----------
    layers : list of nn.Linear
        The trained layers, in forward order.
    loss : loss object
        Per-example loss and its predictive distribution (:mod:`skkfac.losses`).
    settings : dict
        The optimizer's hyperparameters (its ``torch.optim`` parameter group), read at
        each use: ``fisher``, ``damping_scheme``, ``inv_update_freq``,
        ``curvature_batch_size`` and ``precondition_precision``.
    alpha : float
        L2 penalty of the weights (its ``αW`` has full rank: no low-rank products).
    reductions : skkfac.curvature.reductions.Reductions
        Completes the sums over the processes that share an update (its
        ``communicator`` also shares out the inverses).
    seed : int
        Seed of the sampled targets (``fisher='sampled'``).
    distribute_inverses : bool
        In a process group, invert and precondition each layer on one rank only.
    """

    def __init__(self, layers: list[nn.Linear], loss, settings: dict, *, alpha: float,
                 reductions: Reductions, seed: int, distribute_inverses: bool = True):
        self.layers = layers
        self.loss = loss
        self.settings = settings
        self.alpha = alpha
        self.reductions = reductions
        self.communicator = reductions.communicator
        self.distribute_inverses = bool(distribute_inverses)
        #: Precision of the curvature: float32 at least (a bfloat16 network included).
        self.factor_dtype = factor_dtype(layers[0].weight.dtype)
        self.blocks = [KroneckerBlock(layer.in_features, layer.out_features,
                                      bias=layer.bias is not None, dtype=self.factor_dtype,
                                      device=self.device)
                       for layer in layers]
        # EKFAC: per-example rows of the curvature batch, folded in at each step.
        self.ekfac = EKFACStatistics() if settings["damping_scheme"] == "ekfac" else None
        #: Per layer, the update size below which :meth:`precondition` takes the
        #: low-rank route.
        self.low_rank_rows = self._low_rank_limits()
        #: Draws the sampled targets.
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self._published_flag = None
        self.reset()

    @property
    def device(self) -> torch.device:
        """Where the layers, hence the curvature, live."""
        return self.layers[0].weight.device

    def reset(self) -> None:
        """Forget the statistics and rows accumulated for the next update."""
        #: Rows of the update so far that the statistics were computed on.
        self.n_examples = 0
        #: Their total sample weight, the divisor of the factors' means: an ``int``,
        #: ``n_examples``, until weighted rows make it a float.
        self.weight_total = 0
        self.rows: list[CurvatureRows] = []
        self.gradient_rows = self._empty_gradient_rows()
        for block in self.blocks:
            block.reset_sums()
        if self.ekfac is not None:
            self.ekfac.clear()

    def __getstate__(self):
        # torch.Generator and CUDA events do not pickle: carry the generator's state.
        state = self.__dict__.copy()
        state["generator"] = self.generator.get_state()
        state["_published_flag"] = None
        return state

    def __setstate__(self, state):
        rng_state = state.pop("generator")
        state.setdefault("weight_total", state["n_examples"])  # pickled before weights
        self.__dict__.update(state)
        self.set_generator_state(rng_state)

    def restore(self, states: list[dict], rng_state: torch.Tensor | None) -> None:
        """Take the factors and inverses recorded in ``states`` (the layers' entries of a
        loaded ``state_dict``) and the sampling generator's ``rng_state``, if saved."""
        scheme = DAMPING_SCHEMES[self.settings["damping_scheme"]]
        for state, block in zip(states, self.blocks):
            block.A, block.G = state.get("A"), state.get("G")
            inverse = state.get("inverse")
            if inverse is not None:
                self._install_inverse(block, scheme.from_tensors(inverse))
        if self.ekfac is not None:  # the restored inverses hold the running scaling
            self.ekfac.current = [block.inverse for block in self.blocks]
        if rng_state is not None:
            self.set_generator_state(rng_state)
            if self.communicator.active:  # a saved state is one rank's: draw apart again
                seed = torch.randint(2**62, (1,), generator=self.generator,
                                     device=self.generator.device).item()
                self.seed_for_rank(seed)
        self.forget_published_flag()  # the refresh flag was loaded too

    # -- the sampled targets ---------------------------------------------------------
    def set_generator_state(self, rng_state: torch.Tensor) -> None:
        """Restore the sampling generator; from another kind of device (a model fitted on
        CUDA loaded on a CPU-only machine) its state cannot be used, so a new generator
        is seeded deterministically from it."""
        self.generator = torch.Generator(device=self.device)
        try:
            self.generator.set_state(rng_state.cpu())
        except RuntimeError:
            digest = hashlib.sha256(rng_state.cpu().numpy().tobytes()).digest()
            self.generator.manual_seed(int.from_bytes(digest[:7], "little"))

    def seed_for_rank(self, seed: int) -> None:
        """Seed the sampling generator with ``seed`` offset by the rank, so that the
        ranks draw different sampled targets."""
        self.generator.manual_seed((seed + 7919 * self.communicator.rank) % 2**63)

    # -- the statistics of each micro-batch ------------------------------------------
    def rows_wanted(self, n: int) -> int:
        """How many of the next ``n`` rows of the update the statistics use: the first
        ``curvature_batch_size`` rows of the update, wherever the micro-batch boundaries
        fall."""
        limit = self.settings["curvature_batch_size"]
        return n if limit is None else max(0, min(n, limit - self.n_examples))

    @contextmanager
    def capture(self):
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

    def add_statistics(self, X, y, output, inputs, outputs, sample_weight=None,
                       weight_total=None, *, exact: bool = True) -> None:
        """Add the rows' ``a`` and ``g`` to every block (same examples for both) and keep
        the rows for the quadratic model. ``inputs`` and ``outputs`` are what
        :meth:`capture` recorded of the forward pass ``output = model(X)``; ``exact``:
        whether that pass ran in full precision (not under autocast or reduced-precision
        matmuls). The rows' ``a`` and ``g`` enter the factors in :attr:`factor_dtype`
        whatever their own dtype (bfloat16 under mixed precision).

        With ``sample_weight`` (one weight per row, summing to ``weight_total``) the
        statistics are weighted: ``Σ wᵢ āᵢāᵢᵀ`` and ``Σ wᵢ gᵢgᵢᵀ``, the latter (and EKFAC's
        rows) through ``g`` scaled by ``√wᵢ``; the factors then divide by ``Σ wᵢ``.
        """
        if sample_weight is not None and weight_total is None:
            weight_total = float(sample_weight.sum(dtype=torch.float64))
        with full_precision(self.device):
            gradient_passes = self._output_gradients(output, y, outputs)
            if sample_weight is not None:
                root = sample_weight.to(self.factor_dtype).sqrt()[:, None]
                gradient_passes = [[g.detach().to(self.factor_dtype) * root
                                    for g in gradients] for gradients in gradient_passes]
            for gradients in gradient_passes:
                for block, g in zip(self.blocks, gradients):
                    block.add_output_gradients(g.detach())
            if self.ekfac is not None:
                self.ekfac.add(inputs, gradient_passes, weight_total)
            for block, a in zip(self.blocks, inputs):
                block.add_inputs(a, sample_weight)
        n_rows = output.shape[0]
        self.n_examples += n_rows
        self.weight_total += n_rows if sample_weight is None else weight_total
        exact = exact and output.dtype == self.factor_dtype  # else a low-precision network
        self.rows.append(CurvatureRows(X, y, list(inputs), output.detach(), sample_weight,
                                       exact))

    def _output_gradients(self, output, target, outputs) -> list[list[torch.Tensor]]:
        """Per-example gradients of the loss w.r.t. every layer's output, per 'fisher'.

        Only the pre-activation gradients are computed (no weight gradients). Returns a
        list over backward passes of lists over layers.
        """
        fisher = self.settings["fisher"]
        if fisher == "exact":
            return [list(torch.autograd.grad(output, outputs, grad_outputs=column,
                                             retain_graph=True))
                    for column in self.loss.hessian_sqrt_columns(output)]
        if fisher == "sampled":
            target = self.loss.sample_targets(output, generator=self.generator)
        loss_sum = self.loss.per_example(output, target).sum()
        return [list(torch.autograd.grad(loss_sum, outputs, retain_graph=True))]

    def batch(self) -> CurvatureRows:
        """The examples the curvature statistics of this update came from."""
        return concatenate_rows(self.rows)

    def rows_without_weight(self) -> bool:
        """Whether this update's curvature rows all have weight 0 (checked in a single
        process: data-parallel, another rank's rows may carry the weight); their factors
        and quadratic model would be means over no weight."""
        return bool(self.n_examples and not self.weight_total
                    and not self.communicator.active)

    # -- the rows of the low-rank preconditioning ------------------------------------
    def _empty_gradient_rows(self) -> list | None:
        """``[]`` when the low-rank preconditioning may be used, else ``None``."""
        scheme = DAMPING_SCHEMES[self.settings["damping_scheme"]]
        usable = not self.alpha and getattr(scheme, "factored", False)
        return [] if usable else None

    def keep_gradient_rows(self, n_update: int) -> bool:
        """Whether the per-example ``a`` and ``g`` of a micro-batch that brings the update
        to ``n_update`` rows are kept for the low-rank preconditioning: only while the
        update stays small enough for it to pay off on some layer (see
        :meth:`precondition`)."""
        if self.gradient_rows is None:
            return False
        if n_update >= max(self.low_rank_rows, default=0):
            self.gradient_rows = None
            return False
        return True

    def watch_gradients(self, inputs, outputs) -> None:
        """Keep ``inputs`` and, once the backward pass has made them, the gradients with
        respect to ``outputs`` (a forward pass's, recorded by :meth:`capture`)."""
        gradients = [None] * len(outputs)
        for index, output in enumerate(outputs):
            def store(gradient, index=index):
                gradients[index] = gradient.detach()
            output.register_hook(store)
        self.gradient_rows.append((inputs, gradients))

    def _low_rank_limits(self) -> list[int]:
        """Per layer, the batch size below which :meth:`precondition`'s low-rank route
        costs fewer multiply-adds than the full product."""
        limits = []
        for block in self.blocks:
            n_out, n_a = block.G_sum.shape[0], block.A_sum.shape[0]
            limits.append(n_out * n_a * (n_out + n_a) // (n_out**2 + n_a**2 + n_out * n_a))
        return limits

    # -- the running factors ---------------------------------------------------------
    def update_factors(self, decay: float, states: list[dict]) -> None:
        """Fold the statistics summed since the last update into the running factors and
        record them in ``states`` (the layers' optimizer state)."""
        n_examples = self.reductions.count(self.weight_total)
        if not n_examples:
            return
        sums = [s for block in self.blocks for s in (block.A_sum, block.G_sum)]
        self.reductions.all_reduce(sums)
        for state, block in zip(states, self.blocks):
            block.update_running_averages(n_examples, decay)
            state["A"], state["G"] = block.A, block.G
        self.n_examples = 0
        self.weight_total = 0

    def update_eigenvalues(self, decay: float) -> None:
        """EKFAC: fold the kept rows into the scaling of the current eigenbasis."""
        self.ekfac.update([block.inverse for block in self.blocks], decay,
                          self.reductions.all_reduce, self.reductions.count)

    def scale(self, fallback: torch.Tensor) -> torch.Tensor:
        """Mean over layers of the average eigenvalue ``(tr A/dim A)(tr G/dim G)``
        (``fallback`` where it is degenerate; 1 for ``'max_norm'``, which normalises the
        factors itself).

        The optimizer measures it once, at the first update: it only converts the
        relative ``damping`` into the loss's units. From then on the
        Levenberg–Marquardt rule alone moves the damping, on evidence from ``ρ`` (as in
        kfac-jax, whose damping is absolute); a scale re-measured at every refresh would
        be a second controller that changes ``λ`` without such evidence (measured in
        ``docs/user_guide/damping.rst``).
        """
        if self.settings["damping_scheme"] == "max_norm":
            return torch.tensor(1.0, dtype=torch.float64, device=self.device)
        scales = torch.stack([torch.trace(b.A) / b.A.shape[0] * torch.trace(b.G) / b.G.shape[0]
                              for b in self.blocks]).double()
        scale = scales.mean()
        valid = torch.isfinite(scale) & (scale > 0)
        return torch.where(valid, scale, fallback)

    # -- the inverses ----------------------------------------------------------------
    def refresh_due(self, k: int, flag: torch.Tensor) -> bool:
        """Inverses are recomputed every ``inv_update_freq`` updates, and when the
        optimizer's device ``flag`` says so (set by the previous update after a rejected
        update or a damping change of more than a factor 2: the one host read of an
        update)."""
        if self.blocks[0].inverse is None or (k - 1) % self.settings["inv_update_freq"] == 0:
            return True
        return self._read_refresh_flag(flag)

    def _read_refresh_flag(self, flag: torch.Tensor) -> bool:
        """The device flag set by the previous update. On a GPU it was copied to pinned
        host memory without blocking when it was set, so reading it waits for the end of
        the previous update only, not for the work queued since (this update's forward
        and backward passes keep the device busy meanwhile)."""
        if self._published_flag is None:
            return bool(flag)
        host, event = self._published_flag
        event.synchronize()
        return bool(host)

    def publish_refresh_flag(self, flag: torch.Tensor) -> None:
        """Start copying ``flag`` to the host for the next :meth:`refresh_due`."""
        if flag.device.type != "cuda":
            return
        published = self._published_flag
        host = (published[0] if published is not None
                else torch.empty((), dtype=torch.bool, device="cpu", pin_memory=True))
        host.copy_(flag, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._published_flag = (host, event)

    def forget_published_flag(self) -> None:
        """Read the device flag itself next time (the optimizer replaced it)."""
        self._published_flag = None

    def refresh_inverses(self, damping: torch.Tensor, states: list[dict]) -> None:
        """Recompute every layer's damped inverse and record it in ``states``."""
        if self.communicator.active and self.distribute_inverses:
            self._invert_shared_out(damping, states)
        else:
            for index in range(len(self.blocks)):
                self._invert(index, damping, states)

    def _invert(self, index: int, damping: torch.Tensor, states: list[dict]) -> None:
        """Compute layer ``index``'s damped inverse (the one place where it happens)."""
        block = self.blocks[index]
        self._install_inverse(block, DAMPING_SCHEMES[self.settings["damping_scheme"]](
            block.A, block.G, damping))
        states[index]["inverse"] = block.inverse.tensors()

    def _invert_shared_out(self, damping: torch.Tensor, states: list[dict]) -> None:
        """Data-parallel: each rank inverts the layers it owns, then receives the others."""

        def owned(index):
            self._invert(index, damping, states)
            return self.blocks[index].inverse

        inverses = compute_on_owners(self.communicator, len(self.blocks), owned, self.device)
        for state, block, inverse in zip(states, self.blocks, inverses):
            self._install_inverse(block, inverse)
            state["inverse"] = inverse.tensors()

    def _install_inverse(self, block, inverse) -> None:
        """Make ``inverse`` the block's, multiplying in ``precondition_precision``."""
        dtype = self.precondition_dtype
        inverse.multiply_in(None if dtype == self.factor_dtype else dtype)
        block.inverse = inverse

    @property
    def precondition_dtype(self) -> torch.dtype:
        """The dtype in which the gradients are multiplied with the factor inverses
        (``precondition_precision`` resolved for this network and device)."""
        precision = self.settings.get("precondition_precision", "full")  # older state_dicts
        return preconditioning_dtype(precision, self.factor_dtype, self.device)

    # -- preconditioning -------------------------------------------------------------
    def precondition(self, gradients, n_update: int,
                     weight_total: float | None = None) -> list[torch.Tensor]:
        """The K-FAC directions ``-G⁻¹ ∇W̄ A⁻¹`` of every layer, for the mean
        ``gradients`` of an update of ``n_update`` rows of total weight ``weight_total``
        (default: ``n_update``, unweighted).

        The mean gradient of ``m`` examples is ``∇W̄ = Σᵢ gᵢ āᵢᵀ / m``, of rank ``m`` at
        most, so ``G⁻¹ ∇W̄ A⁻¹ = (G⁻¹ [g₁ … gₘ]) ([ā₁ … āₘ]ᵀ A⁻¹) / m``: exact, and
        ``O(m (out² + in² + out·in))`` instead of ``O(out·in·(out + in))``; weighted, the
        kept ``gᵢ`` are the backward pass's ``wᵢ gᵢ`` and the divisor is ``Σ wᵢ``. That
        route is taken for the layers where it is cheaper (batches smaller than about 2/3
        of the layer's width), when the factor inverses are explicit (``'tikhonov'``,
        ``'max_norm'``), without an L2 term (its ``αW`` has full rank) and when every row
        of the gradient is in this process.

        Data-parallel with ``distribute_inverses``: each rank computes the directions of
        the layers it owns and broadcasts them.
        """
        comm = self.communicator
        shared_out = comm.active and self.distribute_inverses
        outer = self._gradient_outer_factors(n_update, weight_total)
        directions = []
        for index, (block, V) in enumerate(zip(self.blocks, gradients)):
            if shared_out and comm.owner(index) != comm.rank:
                directions.append(torch.empty_like(V))
                continue
            if outer[index] is not None:
                direction = block.inverse.apply_outer(*outer[index])
            else:
                direction = block.inverse.apply(V)
            directions.append(torch.nan_to_num_(direction.neg_(), 0.0, 0.0, 0.0).contiguous())
        if shared_out:
            for owner in range(comm.world_size):
                comm.broadcast([d for index, d in enumerate(directions)
                                if comm.owner(index) == owner], src=owner)
        return directions

    def _gradient_outer_factors(self, m: int, total: float | None = None) -> list:
        """Per layer, ``(left, right)`` with ``left @ right`` the mean gradient of ``m``
        rows of total weight ``total`` (default ``m``), or ``None`` where the full
        gradient is used."""
        rows = self.gradient_rows
        total = m if total is None else total
        unused = [None] * len(self.layers)
        # Data-parallel runs hold only this rank's rows: the full product there.
        if (not rows or self.communicator.active
                or any(g is None for _, grads in rows for g in grads)):
            return unused
        factors = []
        for index, layer in enumerate(self.layers):
            if m >= self.low_rank_rows[index]:
                factors.append(None)
                continue
            a = torch.cat([inputs[index] for inputs, _ in rows]).to(self.factor_dtype)
            g = torch.cat([grads[index] for _, grads in rows]).to(self.factor_dtype)
            right = a / total
            if layer.bias is not None:
                right = torch.cat([right, right.new_full((m, 1), 1.0 / total)], dim=1)
            factors.append((g.T, right))
        return factors

    # -- what an update costs -------------------------------------------------------
    def update_work(self, tangents: int) -> tuple[float, float]:
        """Multiply-adds of an update: ``(per_example, fixed)``, with a quadratic model
        of ``tangents`` candidate steps (0: none).

        ``per_example``: the gradient's forward and backward pass (3 per weight), plus,
        when the curvature uses every example (``curvature_batch_size=None``), the
        curvature's work per row. ``fixed``: what does not grow with the batch — the
        preconditioning ``G⁻¹ V A⁻¹`` (``out·in·(out + in)`` per layer, the full
        product), the inverses amortised over ``inv_update_freq`` (``in³ + out³``), and
        the curvature rows' work: the backward pass(es) for ``G`` (one per output unit
        with ``fisher='exact'``), the sums ``āāᵀ`` and ``ggᵀ``, the quadratic model's
        Jacobian-vector products (two per tangent) and the forward pass after the step
        (the rejection test).
        """
        settings = self.settings
        shapes = [(b.G_sum.shape[0], b.A_sum.shape[0]) for b in self.blocks]
        weights = sum(o * a for o, a in shapes)
        backwards = self.blocks[-1].G_sum.shape[0] if settings["fisher"] == "exact" else 1
        per_row = (weights * (backwards + 2 * tangents + 1)
                   + sum(o * o + a * a for o, a in shapes))
        fixed = sum(o * a * (o + a) + (o**3 + a**3) / settings["inv_update_freq"]
                    for o, a in shapes)
        rows = settings["curvature_batch_size"]
        if rows is None:
            return 3 * weights + per_row, fixed
        return 3 * weights, fixed + per_row * rows


#: ``batch_size='auto'``: the curvature may add at most this share of the gradient's work
#: to an update (so an update costs at most twice SGD's, by count; measured on the MNIST
#: autoencoder against 0.5, see docs/user_guide/batches.rst) ...
AUTO_CURVATURE_SHARE = 1.0
#: ... and the batch is a multiple of this.
AUTO_BATCH_STEP = 250


def preferred_batch_size(per_example: float, fixed: float) -> int:
    """The smallest multiple of :data:`AUTO_BATCH_STEP` whose gradient costs at least
    ``1 / AUTO_CURVATURE_SHARE`` times the ``fixed`` work of an update (multiply-adds, as
    :meth:`CurvatureEstimator.update_work` counts them: ``per_example`` for each row).

    Examples
    --------
    >>> from skkfac.curvature.estimator import preferred_batch_size
    >>> preferred_batch_size(per_example=1e6, fixed=6e8)
    750
    """
    batch = fixed / (AUTO_CURVATURE_SHARE * per_example)
    return max(AUTO_BATCH_STEP, AUTO_BATCH_STEP * math.ceil(batch / AUTO_BATCH_STEP))
