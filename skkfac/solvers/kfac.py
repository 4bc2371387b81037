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

import hashlib
import math
from contextlib import contextmanager, nullcontext
from typing import NamedTuple

import torch
from torch.func import functional_call, jvp

from skkfac.curvature import DAMPING_SCHEMES, EKFACStatistics, KroneckerBlock, stat_decay
from skkfac.curvature.control import (
    levenberg_marquardt,
    minimise_plane_model,
    raise_after_rejection,
    reduction_ratio,
)
from skkfac.curvature.precision import factor_dtype, full_precision, preconditioning_dtype
from skkfac.distributed import Communicator, compute_on_owners
from skkfac.nn import forward_in, linear_jvp, supports_fast_jvp
from skkfac.solvers.base import Solver, clone_tensors
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
    #: samples: from 1-16 of them they are noise (updates of 1, 4 or 16 samples diverged
    #: where SGD trained; see docs/user_guide/batches.rst, "Small mini-batches").
    min_update_size = 128
    #: K-FAC fits a small regression set in a few dozen updates and then fits its noise
    #: (diabetes: test R² -1.20; forest fires -3.35): the estimators'
    #: ``early_stopping='auto'`` holds out a validation split there (0.38 and -0.07).
    #: Not for classifiers: their accuracy held up without it, and stopping on the
    #: accuracy of a small split cost 0.007-0.011 on digits and breast_cancer
    #: (``benchmarks/results/defaults/early_stopping.txt``).
    early_stopping_losses = ("squared_error",)

    #: Interval of the adaptive step's momentum coefficient: the 2 × 2 model is measured
    #: on the curvature rows, and its noise chose momenta of -10 and 2.2 (digits, batch
    #: 32), -1.0 and 1.75 (CIFAR-10 at defaults), which undo or amplify the last step.
    MOMENTUM_BOUNDS = (0.0, 0.9)

    #: Phases of an update timed in :attr:`phase_times`.
    PHASES = ("forward_backward", "statistics", "inverse", "precondition", "update")

    def __init__(self, model, loss="squared_error", *, lr=1.0, damping=0.1,
                 damping_scheme="tikhonov", adapt_damping=True, damping_adapt_interval=5,
                 min_damping=1e-2, adaptive_step=True, kl_clip=None, stat_decay="linear",
                 momentum_rate=1.0,
                 momentum_max=0.6, momentum=None, inv_update_freq=10, fisher="sampled",
                 curvature_batch_size=128, precondition_precision="auto",
                 rejection_ratio=2.0, alpha=0.0, random_state=None, process_group=None,
                 distribute_inverses=True):
        # data-parallel: a DistributedDataParallel wrapper only runs accumulate's
        # forward passes (its backward averages the gradients); K-FAC's own forward
        # passes use the wrapped network, outside DDP's bookkeeping.
        self._train_model = model
        self._gradients_averaged = isinstance(
            model, torch.nn.parallel.DistributedDataParallel)
        if self._gradients_averaged:
            model = model.module
        Solver.__init__(self, model, loss, alpha=alpha)
        defaults = dict(lr=lr, damping=damping, damping_scheme=damping_scheme,
                        adapt_damping=adapt_damping,
                        damping_adapt_interval=damping_adapt_interval,
                        min_damping=min_damping, adaptive_step=adaptive_step,
                        kl_clip=kl_clip, stat_decay=stat_decay,
                        momentum_rate=momentum_rate, momentum_max=momentum_max,
                        momentum=momentum, inv_update_freq=inv_update_freq, fisher=fisher,
                        curvature_batch_size=curvature_batch_size,
                        precondition_precision=precondition_precision,
                        rejection_ratio=rejection_ratio)
        self.check_hyperparameters(**defaults)  # the declarations above, nothing by hand
        torch.optim.Optimizer.__init__(self, self.params, defaults)
        first = self.params[0]
        self.device = first.device
        #: Precision of the curvature: float32 at least (a bfloat16 network included).
        self.factor_dtype = factor_dtype(first.dtype)
        self.blocks = [KroneckerBlock(layer.in_features, layer.out_features,
                                      bias=layer.bias is not None, dtype=self.factor_dtype,
                                      device=self.device)
                       for layer in self.layers]
        self.n_curvature_examples = 0
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(random_state) if random_state is not None
                                   else int(torch.randint(2**31, (1,)).item()))
        self.timer = PhaseTimer(self.PHASES, self.device)
        self.last_report: StepReport | None = None
        self._curvature_rows: list[CurvatureRows] = []
        self._low_rank_rows = self._low_rank_limits()
        self._gradient_rows = self._empty_gradient_rows()
        self._fast_jvp = supports_fast_jvp(model)
        # EKFAC: per-example rows of the curvature batch, folded in at each step.
        self.ekfac = EKFACStatistics() if damping_scheme == "ekfac" else None
        shared = self._shared
        shared["step"] = 0
        shared["damping"] = self._scalar(damping)
        shared["curvature_scale"] = self._scalar(1.0)
        shared["inverse_damping"] = self._scalar(math.nan)
        shared["refresh"] = torch.ones((), dtype=torch.bool, device=self.device)
        self.communicator = Communicator(process_group)
        self.distribute_inverses = bool(distribute_inverses)
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
        """State not tied to one layer (counters, damping, scale, flags).

        Kept in the first weight's entry of ``self.state``, as ``torch.optim.LBFGS`` does,
        so that ``state_dict()`` carries it.
        """
        return self.state[self.params[0]]

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
                self.state[param] = _on_device(saved[index], self.device)
        self._published_flag = None
        self._restore_from_state()

    def _restore_from_state(self) -> None:
        shared = self._shared
        rng_state = shared.pop("rng_state", None)
        if rng_state is not None:
            self._set_generator_state(rng_state)
            if self.communicator.active:  # a saved state is one rank's: draw apart again
                seed = torch.randint(2**62, (1,), generator=self.generator,
                                     device=self.generator.device).item()
                self._seed_for_rank(seed)
        scheme = DAMPING_SCHEMES[self.hyper["damping_scheme"]]
        for layer, block in zip(self.layers, self.blocks):
            state = self.state[layer.weight]
            block.A, block.G = state.get("A"), state.get("G")
            inverse = state.get("inverse")
            if inverse is not None:
                self._install_inverse(block, scheme.from_tensors(inverse))
        if self.ekfac is not None:  # the restored inverses hold the running scaling
            self.ekfac.current = [block.inverse for block in self.blocks]

    def _set_generator_state(self, rng_state: torch.Tensor) -> None:
        """Restore the sampling generator; from another kind of device (a model fitted on
        CUDA loaded on a CPU-only machine) its state cannot be used, so a new generator
        is seeded deterministically from it."""
        self.generator = torch.Generator(device=self.device)
        try:
            self.generator.set_state(rng_state.cpu())
        except RuntimeError:
            digest = hashlib.sha256(rng_state.cpu().numpy().tobytes()).digest()
            self.generator.manual_seed(int.from_bytes(digest[:7], "little"))

    def __getstate__(self):
        # torch.Generator and CUDA events do not pickle: carry the generator's state.
        state = self.__dict__.copy()
        if state["_train_model"] is not self.model:  # a DDP wrapper holds a process group
            state["_train_model"] = self.model
        state["generator"] = self.generator.get_state()
        state["_published_flag"] = None
        return state

    def __setstate__(self, state):
        if "generator" not in state:  # torch.optim's load_state_dict: state, param_groups
            torch.optim.Optimizer.__setstate__(self, state)
            return
        rng_state = state.pop("generator")
        self.__dict__.update(state)
        self.device = self.params[0].device
        self.timer.device = self.device
        self._set_generator_state(rng_state)

    def copy_pending_data(self) -> None:
        self._curvature_rows = clone_tensors(self._curvature_rows)
        if self.ekfac is not None:
            self.ekfac.rows = clone_tensors(self.ekfac.rows)

    # -- data-parallel seams -------------------------------------------------------------
    def _all_reduce(self, tensors: list[torch.Tensor]) -> None:
        """Sum ``tensors`` in place over the processes that share this update.

        Every cross-example sum goes through here (gradients, factor statistics, the
        quadratic model's sums and the curvature losses): a single process has nothing
        to add.
        """
        self.communicator.all_reduce(tensors)

    def _reduce_count(self, count: int) -> int:
        """The number of examples behind a sum, over all the processes."""
        return round(self.communicator.sum(count)) if self.communicator.active else count

    def _join_process_group(self) -> None:
        """Start from rank 0's weights; draw different sampled targets on every rank."""
        comm = self.communicator
        if not self._gradients_averaged:  # DDP has broadcast the weights already
            with torch.no_grad():
                comm.broadcast([p.data for p in self.params], src=0)
        self._seed_for_rank(int(self.generator.initial_seed()))

    def _seed_for_rank(self, seed: int) -> None:
        """Seed the sampling generator with ``seed`` offset by the rank, so that the
        ranks draw different sampled targets."""
        self.generator.manual_seed((seed + 7919 * self.communicator.rank) % 2**63)

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
        """Add the examples' ``a`` and ``g`` to every block (same examples for both)."""
        with full_precision(self.device):
            gradient_passes = self._output_gradients(output, target, outputs)
            for gradients in gradient_passes:
                for block, g in zip(self.blocks, gradients):
                    block.add_output_gradients(g.detach())
            if self.ekfac is not None:
                self.ekfac.add(inputs, gradient_passes)
            for block, a in zip(self.blocks, inputs):
                block.add_inputs(a)
        self.n_curvature_examples += output.shape[0]

    def accumulate(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward/backward on a micro-batch, adding its gradient and curvature statistics.

        The curvature (statistics and the quadratic model) uses the first
        ``curvature_batch_size`` examples of the batch accumulated since the last step,
        wherever the micro-batch boundaries fall; those rows get their own forward pass,
        whose recorded layer inputs also serve the quadratic model, so the curvature costs
        no extra forward pass. Returns the summed (not averaged) loss over the
        micro-batch, detached.
        """
        limit = self.hyper["curvature_batch_size"]
        n = X.shape[0]
        n_curvature = n if limit is None else max(
            0, min(n, limit - self.n_curvature_examples))
        keep_rows = self._keep_gradient_rows(n)
        chunks = []  # (inputs, outputs) of the forward passes whose rows are kept
        with self.timer.phase("forward_backward"):
            loss_sum = None
            if n_curvature:
                with self._capture_layers() as (inputs, outputs):
                    output = self._train_model(X[:n_curvature])
                loss_sum = self.loss.per_example(output, y[:n_curvature]).sum()
                if keep_rows:
                    chunks.append((list(inputs), list(outputs)))
            if n_curvature < n:
                capture = self._capture_layers() if keep_rows else nullcontext(([], []))
                with capture as (rest_inputs, rest_outputs):
                    rest_output = self._train_model(X[n_curvature:])
                rest = self.loss.per_example(rest_output, y[n_curvature:]).sum()
                loss_sum = rest if loss_sum is None else loss_sum + rest
                if keep_rows:
                    chunks.append((rest_inputs, rest_outputs))
        if n_curvature:
            with self.timer.phase("statistics"):
                self._add_statistics(output, y[:n_curvature], inputs, outputs)
                self._curvature_rows.append(CurvatureRows(
                    X[:n_curvature], y[:n_curvature], list(inputs), output.detach()))
            outputs.clear()
        for chunk_inputs, chunk_outputs in chunks:  # after the statistics' own backward
            self._gradient_rows.append(_watch_output_gradients(chunk_inputs, chunk_outputs))
        with self.timer.phase("forward_backward"):
            loss_sum.backward()
        self.n_accumulated += n
        return loss_sum.detach()

    # -- the update --------------------------------------------------------------------
    def _layer_gradients(self) -> list[torch.Tensor]:
        """Mean gradient plus L2 term per layer: ``[∇W, ∇b]`` (``out × (in + 1)``), or
        ``∇W`` for a layer without bias, in the curvature's precision."""
        gradients = []
        for layer in self.layers:
            weight = layer.weight.grad if layer.weight.grad is not None else torch.zeros_like(
                layer.weight)
            if layer.bias is None:
                gradients.append(weight.to(self.factor_dtype, copy=True))
                continue
            bias = layer.bias.grad if layer.bias.grad is not None else torch.zeros_like(
                layer.bias)
            gradients.append(torch.cat([weight, bias[:, None]], dim=1).to(self.factor_dtype))
        if self._gradients_averaged:  # DDP's mean of the ranks' sums → their sum
            torch._foreach_mul_(gradients, float(self.communicator.world_size))
        else:
            self._all_reduce(gradients)
        torch._foreach_mul_(gradients, 1.0 / self._reduce_count(self.n_accumulated))
        if self.alpha:
            for layer, V in zip(self.layers, gradients):
                V[:, :layer.in_features].add_(layer.weight.detach(), alpha=self.alpha)
        return gradients

    def _update_factors(self, decay: float) -> None:
        n_curvature = self._reduce_count(self.n_curvature_examples)
        if not n_curvature:
            return
        self._all_reduce([s for block in self.blocks for s in (block.A_sum, block.G_sum)])
        for layer, block in zip(self.layers, self.blocks):
            block.update_running_averages(n_curvature, decay)
            state = self.state[layer.weight]
            state["A"], state["G"] = block.A, block.G
        self.n_curvature_examples = 0

    def _refresh_due(self, k: int) -> bool:
        """Inverses are recomputed every ``inv_update_freq`` updates, and after a
        rejected update or a damping change of more than a factor 2 (flagged on the
        device by the previous update: the one host read of an update)."""
        if self.blocks[0].inverse is None or (k - 1) % self.hyper["inv_update_freq"] == 0:
            return True
        return self._read_refresh_flag()

    def _read_refresh_flag(self) -> bool:
        """The device flag set by the previous update. On a GPU it was copied to pinned
        host memory without blocking when it was set, so reading it waits for the end of
        the previous update only, not for the work queued since (this update's forward
        and backward passes keep the device busy meanwhile)."""
        published = self.__dict__.get("_published_flag")
        if published is None:
            return bool(self._shared["refresh"])
        host, event = published
        event.synchronize()
        return bool(host)

    def _publish_refresh_flag(self) -> None:
        flag = self._shared["refresh"]
        if flag.device.type != "cuda":
            return
        published = self.__dict__.get("_published_flag")
        host = (published[0] if published is not None
                else torch.empty((), dtype=torch.bool, device="cpu", pin_memory=True))
        host.copy_(flag, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._published_flag = (host, event)

    def _refresh_inverses(self) -> None:
        shared = self._shared
        if shared["step"] == 1:
            shared["curvature_scale"] = self._curvature_scale()
        damping = self.absolute_damping
        if self.communicator.active and self.distribute_inverses:
            self._invert_shared_out(damping)
        else:
            for index in range(len(self.blocks)):
                self._invert(index, damping)
        shared["inverse_damping"] = damping
        shared["refresh"] = torch.zeros((), dtype=torch.bool, device=self.device)

    def _invert(self, index: int, damping: torch.Tensor) -> None:
        """Compute layer ``index``'s damped inverse (the one place where it happens)."""
        block = self.blocks[index]
        self._install_inverse(block, DAMPING_SCHEMES[self.hyper["damping_scheme"]](
            block.A, block.G, damping))
        self.state[self.layers[index].weight]["inverse"] = block.inverse.tensors()

    def _install_inverse(self, block, inverse) -> None:
        """Make ``inverse`` the block's, multiplying in ``precondition_precision``."""
        dtype = self.precondition_dtype
        inverse.multiply_in(None if dtype == self.factor_dtype else dtype)
        block.inverse = inverse

    @property
    def precondition_dtype(self) -> torch.dtype:
        """The dtype in which the gradients are multiplied with the factor inverses
        (``precondition_precision`` resolved for this network and device)."""
        precision = self.hyper.get("precondition_precision", "full")  # older state_dicts
        return preconditioning_dtype(precision, self.factor_dtype, self.device)

    def _invert_shared_out(self, damping: torch.Tensor) -> None:
        """Data-parallel: each rank inverts the layers it owns, then receives the others."""

        def owned(index):
            self._invert(index, damping)
            return self.blocks[index].inverse

        inverses = compute_on_owners(self.communicator, len(self.blocks), owned, self.device)
        for layer, block, inverse in zip(self.layers, self.blocks, inverses):
            self._install_inverse(block, inverse)
            self.state[layer.weight]["inverse"] = inverse.tensors()

    def _curvature_scale(self) -> torch.Tensor:
        """Mean over layers of the average eigenvalue ``(tr A/dim A)(tr G/dim G)``.

        Measured once, at the first update: it only converts the relative ``damping``
        into the loss's units. From then on the Levenberg–Marquardt rule alone moves the
        damping, on evidence from ``ρ`` (as in kfac-jax, whose damping is absolute); a
        scale re-measured at every refresh would be a second controller that changes
        ``λ`` without such evidence (measured in ``docs/user_guide/damping.rst``). A
        degenerate value gives 1.
        """
        if self.hyper["damping_scheme"] == "max_norm":
            return self._scalar(1.0)  # max_norm normalises the factors itself
        scales = torch.stack([torch.trace(b.A) / b.A.shape[0] * torch.trace(b.G) / b.G.shape[0]
                              for b in self.blocks]).double()
        scale = scales.mean()
        valid = torch.isfinite(scale) & (scale > 0)
        return torch.where(valid, scale, self._shared["curvature_scale"])

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
            step's
            coefficients; values are 0-d device tensors (``report.fetch()`` reads them).
            ``None`` when nothing was accumulated.
        """
        if closure is not None:
            raise ValueError("KFAC.step takes no closure: call accumulate(X, y) first.")
        if self.n_accumulated == 0:
            return None
        with full_precision(self.device):
            report = self._update()
        self._reset_accumulation()
        self.last_report = report
        return report

    def _update(self) -> StepReport:
        hyper, shared = self.hyper, self._shared
        shared["step"] += 1
        k = shared["step"]
        decay = stat_decay(hyper["stat_decay"], k, hyper["momentum_rate"],
                           hyper["momentum_max"])
        with self.timer.phase("update"):
            gradients = self._layer_gradients()
        # Inverses are refreshed from the factors *before* this batch's statistics are
        # folded in (the first update has nothing else). A direction preconditioned by
        # the curvature of the very rows that the quadratic model then measures avoids
        # their high-curvature directions: the model sees too little curvature along it
        # and picks a step too long for every other batch (CIFAR-10 at defaults: the
        # step size jumped 10-40x exactly at the refreshes; docs/user_guide/damping.rst).
        fold_in_first = k == 1
        if fold_in_first:
            with self.timer.phase("statistics"):
                self._update_factors(decay)
        with self.timer.phase("inverse"):
            if self._refresh_due(k):
                self._refresh_inverses()
        if not fold_in_first:
            with self.timer.phase("statistics"):
                self._update_factors(decay)
        if self.ekfac is not None:
            with self.timer.phase("statistics"):
                self.ekfac.update([block.inverse for block in self.blocks], decay,
                                  self._all_reduce, self._reduce_count)
        with self.timer.phase("precondition"):
            directions = self._precondition(gradients)
        with self.timer.phase("update"):
            return self._take_step(k, decay, directions, gradients)

    # -- cost and batch_size='auto' -------------------------------------------------------
    #: ``batch_size='auto'``: the curvature may add at most this share of the gradient's
    #: work to an update (so an update costs at most twice SGD's, by count; measured
    #: on the MNIST autoencoder against 0.5, see docs/user_guide/batches.rst).
    AUTO_CURVATURE_SHARE = 1.0
    #: ... and the batch is a multiple of this.
    AUTO_BATCH_STEP = 250

    def update_work(self) -> tuple[float, float]:
        """Multiply-adds of an update: ``(per_example, fixed)``.

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
        hyper = self.hyper
        shapes = [(b.G_sum.shape[0], b.A_sum.shape[0]) for b in self.blocks]
        weights = sum(o * a for o, a in shapes)
        backwards = self.blocks[-1].G_sum.shape[0] if hyper["fisher"] == "exact" else 1
        tangents = 2 if hyper["adaptive_step"] else 0
        per_row = (weights * (backwards + 2 * tangents + 1)
                   + sum(o * o + a * a for o, a in shapes))
        fixed = sum(o * a * (o + a) + (o**3 + a**3) / hyper["inv_update_freq"]
                    for o, a in shapes)
        rows = hyper["curvature_batch_size"]
        if rows is None:
            return 3 * weights + per_row, fixed
        return 3 * weights, fixed + per_row * rows

    def preferred_batch_size(self) -> int:
        """``batch_size='auto'``: the smallest multiple of :attr:`AUTO_BATCH_STEP` whose
        gradient costs at least ``1 / AUTO_CURVATURE_SHARE`` times the fixed work of an
        update (:meth:`update_work`).

        Examples
        --------
        >>> from skkfac import KFAC
        >>> from skkfac.nn import build_mlp
        >>> autoencoder = build_mlp(784, (1000, 500, 250, 30, 250, 500, 1000), 784)
        >>> KFAC(autoencoder).preferred_batch_size()
        1000
        """
        per_example, fixed = self.update_work()
        batch = fixed / (self.AUTO_CURVATURE_SHARE * per_example)
        step = self.AUTO_BATCH_STEP
        return max(step, step * math.ceil(batch / step))

    # -- preconditioning -----------------------------------------------------------------
    def _empty_gradient_rows(self) -> list | None:
        """``[]`` when the low-rank preconditioning may be used, else ``None``."""
        scheme = DAMPING_SCHEMES[self.hyper["damping_scheme"]]
        usable = not self.alpha and getattr(scheme, "factored", False)
        return [] if usable else None

    def _keep_gradient_rows(self, n: int) -> bool:
        """Whether this micro-batch's per-example ``a`` and ``g`` are kept for the
        low-rank preconditioning: only while the update's batch stays small enough for
        it to pay off on some layer (see :meth:`_precondition`)."""
        if self._gradient_rows is None:
            return False
        if self.n_accumulated + n >= max(self._low_rank_rows, default=0):
            self._gradient_rows = None
            return False
        return True

    def _precondition(self, gradients) -> list[torch.Tensor]:
        """The K-FAC directions ``-G⁻¹ ∇W̄ A⁻¹`` of every layer.

        The mean gradient of ``m`` examples is ``∇W̄ = Σᵢ gᵢ āᵢᵀ / m``, of rank ``m`` at
        most, so ``G⁻¹ ∇W̄ A⁻¹ = (G⁻¹ [g₁ … gₘ]) ([ā₁ … āₘ]ᵀ A⁻¹) / m``: exact, and
        ``O(m (out² + in² + out·in))`` instead of ``O(out·in·(out + in))``. That route is
        taken for the layers where it is cheaper (batches smaller than about 2/3 of the
        layer's width), when the factor inverses are explicit (``'tikhonov'``,
        ``'max_norm'``), without an L2 term (its ``αW`` has full rank) and when every row
        of the gradient is in this process.

        Data-parallel with ``distribute_inverses``: each rank computes the directions of
        the layers it owns and broadcasts them.
        """
        comm = self.communicator
        shared_out = comm.active and self.distribute_inverses
        outer = self._gradient_outer_factors()
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

    def _gradient_outer_factors(self) -> list:
        """Per layer, ``(left, right)`` with ``left @ right`` the mean gradient (or
        ``None`` where the full gradient is used)."""
        rows, m = self._gradient_rows, self.n_accumulated
        unused = [None] * len(self.layers)
        # Data-parallel runs hold only this rank's rows: the full product there.
        if (not rows or self.communicator.active
                or any(g is None for _, grads in rows for g in grads)):
            return unused
        factors = []
        for index, layer in enumerate(self.layers):
            if m >= self._low_rank_rows[index]:
                factors.append(None)
                continue
            a = torch.cat([inputs[index] for inputs, _ in rows]).to(self.factor_dtype)
            g = torch.cat([grads[index] for _, grads in rows]).to(self.factor_dtype)
            right = a / m
            if layer.bias is not None:
                right = torch.cat([right, right.new_full((m, 1), 1.0 / m)], dim=1)
            factors.append((g.T, right))
        return factors

    def _low_rank_limits(self) -> list[int]:
        """Per layer, the batch size below which :meth:`_precondition`'s low-rank route
        costs fewer multiply-adds than the full product."""
        limits = []
        for block in self.blocks:
            n_out, n_a = block.G_sum.shape[0], block.A_sum.shape[0]
            limits.append(n_out * n_a * (n_out + n_a) // (n_out**2 + n_a**2 + n_out * n_a))
        return limits

    def _take_step(self, k, decay, directions, gradients) -> StepReport:
        hyper, shared = self.hyper, self._shared
        adapt = (hyper["adapt_damping"] and hyper["damping_scheme"] != "max_norm"
                 and k % hyper["damping_adapt_interval"] == 0)
        batch = self._curvature_batch()
        model = None
        if hyper["adaptive_step"]:
            previous = [self._layer_state(i, "previous_step") for i in range(len(self.layers))]
            model = self._quadratic_model([directions, previous], gradients, batch)
            lam = shared["damping"] * shared["curvature_scale"]
            coefficients = minimise_plane_model(model.fisher + lam * model.identity,
                                                model.linear, self.MOMENTUM_BOUNDS) * hyper["lr"]
            # In place: the directions are not needed once the step is formed.
            steps = [d.mul_(coefficients[0]).addcmul_(p, coefficients[1])
                     for d, p in zip(directions, previous)]
            step_size, momentum = coefficients[0], coefficients[1]
        else:
            momentum = decay if hyper["momentum"] is None else hyper["momentum"]
            steps = self._momentum_steps(self._clip(directions, gradients), momentum)
            step_size, coefficients = hyper["lr"], None
            if adapt:
                model = self._quadratic_model([steps], gradients, batch)
                coefficients = self._scalar([1.0])
        loss_before = model.loss if model is not None else self._curvature_loss(batch)
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
        loss_after = self._curvature_loss(batch, fresh=True)
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
        self._publish_refresh_flag()

    def _layer_state(self, index: int, key: str) -> torch.Tensor:
        """A per-layer tensor of the step's shape, zeros until first set."""
        state = self.state[self.layers[index].weight]
        if key not in state:
            state[key] = torch.zeros_like(self.blocks[index].G_sum[:, :1]).expand(
                -1, self.blocks[index].A_sum.shape[0]).clone()
        return state[key]

    def _curvature_loss(self, batch: CurvatureRows, fresh: bool = False) -> torch.Tensor:
        """Mean loss on the curvature batch plus the L2 penalty, in the curvature's
        precision. ``fresh``: at the current weights (else the recorded forward pass,
        when it was made in that precision)."""
        if fresh or batch.output.dtype != self.factor_dtype:
            output = forward_in(self.model, batch.X, self.factor_dtype)
        else:
            output = batch.output
        total = self.loss.per_example(output, batch.y).sum().reshape(1)
        self._all_reduce([total])
        loss = total[0] / self._reduce_count(output.shape[0])
        return loss.double() + self._l2_penalty()

    def _l2_penalty(self) -> torch.Tensor | float:
        if not self.alpha:
            return 0.0
        squares = torch.stack([layer.weight.to(self.factor_dtype).square().sum()
                               for layer in self.layers]).sum()
        return 0.5 * self.alpha * squares.double()

    def _momentum_steps(self, directions, momentum):
        """``buffer = momentum · buffer + direction``; step ``lr · buffer`` (heavy ball)."""
        steps = []
        for index, direction in enumerate(directions):
            buffer = self._layer_state(index, "momentum_buffer")
            buffer.mul_(momentum).add_(direction)
            steps.append(buffer * self.hyper["lr"])
        return steps

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
            n_in = layer.in_features
            layer.weight.add_(step[:, :n_in].to(layer.weight.dtype))
            if layer.bias is not None:
                layer.bias.add_(step[:, n_in].to(layer.bias.dtype))

    # -- the exact quadratic model -------------------------------------------------------
    def _curvature_batch(self) -> CurvatureRows:
        """The examples the curvature statistics of this step came from."""
        rows = self._curvature_rows
        if len(rows) == 1:
            return rows[0]
        return CurvatureRows(torch.cat([r.X for r in rows]), torch.cat([r.y for r in rows]),
                             [torch.cat(layer) for layer in zip(*(r.inputs for r in rows))],
                             torch.cat([r.output for r in rows]))

    def _jacobian_products(self, batch: CurvatureRows, tangent_sets):
        """``J t`` on the curvature batch for each set of per-layer tangents ``t``."""
        if self._fast_jvp:
            return list(linear_jvp(self.model, batch.inputs, batch.output, tangent_sets,
                                   dtype=self.factor_dtype))
        named = dict(self.model.named_parameters())
        names = [name for name, p in named.items() if any(p is q for q in self.params)]
        params = tuple(named[name] for name in names)

        def forward(*values):
            return functional_call(self.model, dict(zip(names, values)), (batch.X,))

        products = []
        for tangents in tangent_sets:
            by_param = {}
            for layer, tangent in zip(self.layers, tangents):
                tangent = tangent.to(layer.weight.dtype)
                by_param[id(layer.weight)] = tangent[:, :layer.in_features]
                if layer.bias is not None:
                    by_param[id(layer.bias)] = tangent[:, layer.in_features]
            _, product = jvp(forward, params, tuple(by_param[id(p)] for p in params))
            products.append(product.to(self.factor_dtype))
        return products

    def _quadratic_model(self, candidates, gradients, batch: CurvatureRows) -> QuadraticModel:
        """The loss's quadratic model restricted to the span of ``candidates``.

        ``F`` is the exact Fisher (Gauss–Newton matrix) on the curvature batch, applied
        through Jacobian–vector products, plus the L2 penalty's curvature on the weights.
        """
        products = self._jacobian_products(batch, candidates)
        output = batch.output.to(self.factor_dtype)
        n = len(candidates)
        pairs = [(i, j) for i in range(n) for j in range(i, n)]
        output_gradient = self.loss.output_gradient(output, batch.y)
        n_rows = output.shape[0]
        sums = torch.stack(
            [self.loss.fisher_inner(output, products[i], products[j]) * n_rows
             for i, j in pairs]
            + [(output_gradient * products[i]).sum() for i in range(n)]
            + [self.loss.per_example(output, batch.y).sum()])
        self._all_reduce([sums])
        means = sums.double() / self._reduce_count(n_rows)
        fisher = torch.zeros(n, n, dtype=torch.float64, device=self.device)
        identity = torch.zeros_like(fisher)
        for index, (i, j) in enumerate(pairs):
            value = means[index]
            if self.alpha:
                value = value + self.alpha * _inner(self._weights(candidates[i]),
                                                    self._weights(candidates[j]))
            fisher[i, j] = fisher[j, i] = value
            identity[i, j] = identity[j, i] = _inner(candidates[i], candidates[j])
        linear = torch.stack([_inner(gradients, c) for c in candidates])
        linear_curvature = means[len(pairs):len(pairs) + n]
        if self.alpha:
            weights = [layer.weight.detach().to(self.factor_dtype) for layer in self.layers]
            linear_curvature = linear_curvature + self.alpha * torch.stack(
                [_inner(weights, self._weights(c)) for c in candidates])
        loss = means[-1] + self._l2_penalty()
        if batch.output.dtype != self.factor_dtype:
            loss = self._curvature_loss(batch)
        return QuadraticModel(fisher, identity, linear, linear_curvature, loss)

    def _weights(self, per_layer):
        """The weight part of per-layer ``[W, b]`` matrices (the L2 penalty's domain)."""
        return [m[:, :layer.in_features] for layer, m in zip(self.layers, per_layer)]

    # -- divergence handling -----------------------------------------------------------
    def _reset_accumulation(self) -> None:
        super()._reset_accumulation()
        self.n_curvature_examples = 0
        self._curvature_rows = []
        self._gradient_rows = self._empty_gradient_rows()
        for block in self.blocks:
            block.reset_sums()
        if self.ekfac is not None:
            self.ekfac.clear()

    def on_restore(self) -> None:
        """After a rejected update: raise damping tenfold, forget momentum, re-invert."""
        shared = self._shared
        shared["damping"] = raise_after_rejection(shared["damping"])
        for layer in self.layers:
            self.state[layer.weight].pop("momentum_buffer", None)
            self.state[layer.weight].pop("previous_step", None)
        shared["refresh"] = torch.ones((), dtype=torch.bool, device=self.device)
        self._published_flag = None


#: A loss increase below this many machine epsilons is rounding noise, never a reason to
#: reject (a cross-entropy near zero doubles from one rounding to the next).
REJECTION_TOLERANCE_EPS = 1e3


class CurvatureRows(NamedTuple):
    """The curvature examples of an update and what their forward pass recorded."""

    X: torch.Tensor
    y: torch.Tensor
    inputs: list  # each Linear layer's input
    output: torch.Tensor


class QuadraticModel(NamedTuple):
    """``M(C c) = cᵀ linear + ½ cᵀ (fisher + λ identity) c`` for candidates ``C``.

    ``linear`` uses the whole batch's gradient (it chooses the step);
    ``linear_curvature`` the curvature batch's, the examples ``loss`` is measured on
    (it predicts the change that ``ρ`` compares with).
    """

    fisher: torch.Tensor
    identity: torch.Tensor
    linear: torch.Tensor
    linear_curvature: torch.Tensor
    loss: torch.Tensor


def _watch_output_gradients(inputs, outputs) -> tuple[list, list]:
    """``(inputs, gradients)``: the gradients list is filled, layer by layer, with the
    gradient of the next backward pass with respect to each of ``outputs``."""
    gradients = [None] * len(outputs)
    for index, output in enumerate(outputs):
        def store(gradient, index=index):
            gradients[index] = gradient.detach()
        output.register_hook(store)
    return inputs, gradients


def _inner(xs, ys) -> torch.Tensor:
    """``Σ_l ⟨x_l, y_l⟩`` over per-layer tensors, in float64 (strided views, such as the
    weight part of ``[W, b]``, are read in place rather than copied)."""
    return torch.stack([torch.vdot(x.reshape(-1), y.reshape(-1))
                        if (x.is_contiguous() and y.is_contiguous()) or x.dim() != 2
                        else torch.einsum("ij,ij->", x, y)
                        for x, y in zip(xs, ys)]).sum().double()


def _on_device(value, device):
    """``value`` with every tensor copied to ``device`` (dtypes kept)."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, copy=True)
    if isinstance(value, dict):
        return {key: _on_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_device(item, device) for item in value)
    return value
