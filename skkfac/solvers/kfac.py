"""K-FAC: natural-gradient descent with a Kronecker-factored Fisher (Martens & Grosse 2015).

Usable in two ways:

* through the estimators (``solver='kfac'``), driven by :class:`skkfac.training.Trainer`;
* on its own over any PyTorch model whose trainable layers are ``nn.Linear``::

      opt = KFAC(model, loss="cross_entropy", lr=0.3)
      for X, y in batches:
          opt.accumulate(X, y)   # forward, curvature statistics, backward
          opt.step()

``accumulate`` may be called on several micro-batches before one ``step`` (the study's
artificial batch size): statistics and gradients are summed, so the update equals the
one computed on the concatenated batch.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from torch.func import functional_call, jvp

from skkfac.curvature import DAMPING_SCHEMES, STAT_DECAY_SCHEDULES, KroneckerBlock, stat_decay
from skkfac.solvers.base import Solver

FISHER_TYPES = ("sampled", "exact", "empirical")


class KFAC(Solver, torch.optim.Optimizer):
    """Kronecker-factored natural-gradient optimizer for networks of ``nn.Linear`` layers.

    Each layer's block of the Fisher is approximated by ``A ⊗ G`` with ``A = E[ā āᵀ]``
    (inputs with a 1 appended, so the bias is included) and ``G = E[g gᵀ]`` (gradients of
    the loss with respect to the layer's pre-activations for targets drawn from the
    model's predictive distribution). The update of layer ``i`` is
    ``ΔW̄ᵢ = -lr · damped (Aᵢ ⊗ Gᵢ)⁻¹ ∇W̄ᵢ`` with momentum.

    Parameters
    ----------
    model : torch.nn.Module
        The network; every ``nn.Linear`` in it is trained, nothing else is.
    loss : {'squared_error', 'cross_entropy'} or loss object
        Per-example loss and its predictive distribution (:mod:`skkfac.losses`).
    lr : float, default=0.2
        Learning rate. With ``damping_scheme='tikhonov'`` or ``'eigen'`` the Fisher has
        the curvature scale of the loss and ``lr=1`` is a full (damped) Newton-like step.
    damping : float, default=1e-3
        Tikhonov damping ``λ`` (initial value when ``adapt_damping``). For
        ``'max_norm'`` it is the shift added to the max-normalised factors.
    damping_scheme : {'tikhonov', 'eigen', 'max_norm'}, default='tikhonov'
        ``'tikhonov'``: factored Tikhonov ``(A + π√λ I) ⊗ (G + √λ/π I)``;
        ``'eigen'``: exact ``A ⊗ G + λ I`` in the factors' eigenbasis;
        ``'max_norm'``: the study's divide-by-max normalisation of A, G and the update.
    adapt_damping : bool, default=True
        Levenberg–Marquardt adaptation of ``λ`` from the reduction ratio ``ρ`` of the
        loss against its quadratic model (exact Fisher–vector product), every
        ``damping_adapt_interval`` updates.
    damping_adapt_interval : int, default=5
    min_damping : float, default=1e-8
    kl_clip : float or None, default=1e-2
        Scale each update so that its Fisher norm ``lr² ΔᵀFΔ`` stays below ``kl_clip``
        (Ba et al. 2017). ``None`` disables the clip.
    stat_decay : {'linear', 'martens'}, default='linear'
        Running-average schedule of ``A`` and ``G`` (see :mod:`skkfac.curvature.schedules`).
    momentum_rate, momentum_max : float, default=1.0, 0.6
        Parameters of the ``'linear'`` schedule ``α_k = min(0.05 k m_rate, m_max)``;
        ``momentum_max`` also caps the ``'martens'`` schedule.
    momentum : float or None, default=None
        Momentum of the update. ``None`` reuses the statistics' decay ``α_k`` as the
        study does.
    inv_update_freq : int, default=10
        Refresh the inverses every this many updates (and after a damping change of more
        than a factor 2 or a rejected update).
    fisher : {'sampled', 'exact', 'empirical'}, default='sampled'
        ``'sampled'``: one target drawn per example from the model (true Fisher, Monte
        Carlo); ``'exact'``: the expectation over the model's distribution computed in
        closed form, one backward pass per output unit (cheap for few outputs);
        ``'empirical'``: the training labels (empirical Fisher, for comparison only).
    curvature_batch_size : int or None, default=None
        Estimate ``A`` and ``G`` on at most this many examples of each micro-batch (the
        gradient always uses all of them). Makes the statistics' cost independent of the
        batch size.
    rejection_ratio : float, default=3.0
        An update after which the next batch loss is non-finite or exceeds this multiple
        of the recent average is undone and ``λ`` is raised tenfold.
    alpha : float, default=0.0
        L2 penalty on the weights; also added to the damping.
    random_state : int or None
        Seed of the target sampling.
    """

    recovers_from_divergence = True

    def __init__(self, model, loss="squared_error", *, lr=0.2, damping=1e-3,
                 damping_scheme="tikhonov", adapt_damping=True, damping_adapt_interval=5,
                 min_damping=1e-8, kl_clip=1e-2, stat_decay="linear", momentum_rate=1.0,
                 momentum_max=0.6, momentum=None, inv_update_freq=10, fisher="sampled",
                 curvature_batch_size=None, rejection_ratio=3.0, alpha=0.0,
                 random_state=None):
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
                        min_damping=min_damping, kl_clip=kl_clip, stat_decay=stat_decay,
                        momentum_rate=momentum_rate, momentum_max=momentum_max,
                        momentum=momentum, inv_update_freq=inv_update_freq, fisher=fisher,
                        curvature_batch_size=curvature_batch_size,
                        rejection_ratio=rejection_ratio, step=0, inverse_damping=None)
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
        self._last_batch: tuple[torch.Tensor, torch.Tensor] | None = None

    def __getstate__(self):
        # torch.Generator does not pickle: carry its device and state instead.
        state = self.__dict__.copy()
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

        Returns the summed (not averaged) loss over the micro-batch, detached.
        """
        n_curvature = self.hyper["curvature_batch_size"] or X.shape[0]
        with self._phase("forward_backward"):
            with self._capture_layers() as (inputs, outputs):
                output = self.model(X)
            loss_sum = self.loss.per_example(output, y).sum()
        if n_curvature >= X.shape[0]:
            with self._phase("statistics"):
                self._add_statistics(output, y, inputs, outputs)
        inputs.clear()
        outputs.clear()
        with self._phase("forward_backward"):
            loss_sum.backward()
        if n_curvature < X.shape[0]:
            with self._phase("statistics"):
                with self._capture_layers() as (inputs, outputs):
                    sub_output = self.model(X[:n_curvature])
                self._add_statistics(sub_output, y[:n_curvature], inputs, outputs)
        self.n_accumulated += X.shape[0]
        loss_sum = loss_sum.detach()
        self._last_batch = (X, y)
        return loss_sum

    # -- the update --------------------------------------------------------------------
    def _layer_gradients(self) -> list[torch.Tensor]:
        """``[∇W, ∇b]`` per layer, as ``out × (in + 1)`` matrices."""
        return [torch.cat([layer.weight.grad, layer.bias.grad.unsqueeze(1)], dim=1)
                if layer.bias is not None else
                torch.cat([layer.weight.grad, torch.zeros_like(layer.weight.grad[:, :1])], 1)
                for layer in self.layers]

    def _refresh_inverses(self, damping: float) -> None:
        scheme = DAMPING_SCHEMES[self.hyper["damping_scheme"]]
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
            return None
        hyper = self.hyper
        hyper["step"] += 1
        k = hyper["step"]
        decay = stat_decay(hyper["stat_decay"], k, hyper["momentum_rate"],
                           hyper["momentum_max"])
        momentum = decay if hyper["momentum"] is None else hyper["momentum"]
        damping = hyper["damping"] + self.alpha

        with self._phase("update"):
            self._mean_gradients()
            gradients = self._layer_gradients()
        with self._phase("statistics"):
            if self.n_curvature_examples:
                for block in self.blocks:
                    block.update_running_averages(self.n_curvature_examples, decay)
            self.n_curvature_examples = 0
        with self._phase("inverse"):
            if self._needs_inverse_refresh(k, damping):
                self._refresh_inverses(damping)
        with self._phase("precondition"):
            updates = [block.inverse.apply(V) for block, V in zip(self.blocks, gradients)]
            updates = self._clip(updates, gradients)
        with self._phase("update"):
            steps = []
            for layer, update in zip(self.layers, updates):
                buffer = self.state[layer.weight].get("momentum_buffer")
                if buffer is None or momentum == 0:
                    buffer = update.clone()
                else:
                    buffer.mul_(momentum).add_(update)
                self.state[layer.weight]["momentum_buffer"] = buffer
                steps.append(buffer * -hyper["lr"])
            adapt = (hyper["adapt_damping"] and hyper["damping_scheme"] != "max_norm"
                     and k % hyper["damping_adapt_interval"] == 0)
            if adapt:
                model_change = self._quadratic_model(steps, gradients, damping)
            self._apply(steps)
            if adapt:
                self._adapt_damping(model_change)
            self._reset_accumulation()
        return None

    def _clip(self, updates, gradients):
        """Scale updates so that ``lr² Δᵀ F Δ ≈ lr² Σ ⟨U, ∇⟩ <= kl_clip`` (Ba et al. 2017)."""
        kl_clip = self.hyper["kl_clip"]
        if kl_clip is None or self.hyper["damping_scheme"] == "max_norm":
            return updates
        lr = self.hyper["lr"]
        fisher_norm = sum((U * V).sum() for U, V in zip(updates, gradients)) * lr**2
        scale = torch.clamp(torch.sqrt(kl_clip / fisher_norm.clamp_min(1e-30)), max=1.0)
        return [U * scale for U in updates]

    def _apply(self, steps) -> None:
        for layer, step in zip(self.layers, steps):
            layer.weight.add_(step[:, :-1])
            if layer.bias is not None:
                layer.bias.add_(step[:, -1])

    # -- Levenberg–Marquardt damping ------------------------------------------------------
    def _model_output(self, X, tangents=None):
        names = [name for name, p in self.model.named_parameters()
                 if any(p is q for q in self.params)]
        params = tuple(dict(self.model.named_parameters())[n] for n in names)

        def forward(*values):
            return functional_call(self.model, dict(zip(names, values)), (X,))

        if tangents is None:
            return forward(*params)
        by_param = {}
        for layer, step in zip(self.layers, tangents):
            by_param[id(layer.weight)] = step[:, :-1]
            if layer.bias is not None:
                by_param[id(layer.bias)] = step[:, -1]
        return jvp(forward, params, tuple(by_param[id(p)] for p in params))

    def _quadratic_model(self, steps, gradients, damping):
        """``M(δ) = ∇ᵀδ + ½ δᵀ(F + λI)δ`` on the last micro-batch, F exact (GGN)."""
        X, y = self._last_batch
        n = min(X.shape[0], self.hyper["curvature_batch_size"] or X.shape[0])
        output, direction = self._model_output(X[:n], steps)
        curvature = self.loss.quadratic(output, direction)
        linear = sum((V * s).sum() for V, s in zip(gradients, steps))
        squared = sum(s.square().sum() for s in steps)
        loss_before = self.loss.per_example(output, y[:n]).mean()
        return float(linear + 0.5 * (curvature + damping * squared)), X[:n], y[:n], loss_before

    def _adapt_damping(self, model_change) -> None:
        change, X, y, loss_before = model_change
        loss_after = self.loss.per_example(self.model(X), y).mean()
        actual = float(loss_after - loss_before)
        rho = actual / change if change < 0 else float("-inf")
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
        for block in self.blocks:
            block.reset_sums()

    def is_rejected(self, batch_loss: float, reference_loss: float | None) -> bool:
        if super().is_rejected(batch_loss, reference_loss):
            return True
        return (reference_loss is not None
                and batch_loss > self.hyper["rejection_ratio"] * reference_loss)

    def on_restore(self) -> None:
        """After a rejected update: raise damping tenfold, forget momentum, re-invert."""
        hyper = self.hyper
        hyper["damping"] = max(hyper["damping"] * 10.0, 1e-4)
        for layer in self.layers:
            self.state[layer.weight].pop("momentum_buffer", None)
        hyper["inverse_damping"] = None
