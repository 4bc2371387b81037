"""The exact (Gauss–Newton) quadratic model of the loss on an update's curvature rows.

K-FAC chooses and judges each step on the rows its curvature statistics came from
(:class:`CurvatureRows`): :class:`GaussNewtonModel` measures the loss there and the
quadratic model ``M(δ) = ∇ᵀδ + ½ δᵀ F δ`` restricted to the span of a few candidate steps
(:class:`QuadraticModel`), with ``F`` the exact Fisher (Gauss–Newton matrix) applied
through Jacobian–vector products, never formed.

Per-layer tensors are ``[W, b]`` matrices (``out × (in + 1)``; ``out × in`` for a layer
without bias), as K-FAC's directions are. Every cross-example sum is completed by the
optimizer's :class:`~skkfac.curvature.reductions.Reductions`, so that data-parallel ranks
measure the model of the whole batch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call, jvp

from skkfac.curvature.reductions import Reductions
from skkfac.nn import forward_in, linear_jvp, supports_fast_jvp


class CurvatureRows(NamedTuple):
    """The curvature examples of an update and what their forward pass recorded."""

    X: torch.Tensor
    y: torch.Tensor
    inputs: list  # each Linear layer's input
    output: torch.Tensor
    #: Sample weights of the rows (``None``: unweighted, every weight 1).
    weight: torch.Tensor | None = None
    #: Whether that forward pass was made in the curvature's precision (not under
    #: autocast, TF32 or bfloat16 matmuls, nor by a low-precision network).
    exact: bool = True


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


def concatenate_rows(rows: list[CurvatureRows]) -> CurvatureRows:
    """The rows of several micro-batches as one batch."""
    if len(rows) == 1:
        return rows[0]
    weight = None
    if any(r.weight is not None for r in rows):
        weight = torch.cat([r.output.new_ones(r.output.shape[0]) if r.weight is None
                            else r.weight.to(r.output.dtype) for r in rows])
    return CurvatureRows(torch.cat([r.X for r in rows]), torch.cat([r.y for r in rows]),
                         [torch.cat(layer) for layer in zip(*(r.inputs for r in rows))],
                         torch.cat([r.output for r in rows]), weight,
                         all(r.exact for r in rows))


def inner(xs, ys) -> torch.Tensor:
    """``Σ_l ⟨x_l, y_l⟩`` over per-layer tensors, in float64 (strided views, such as the
    weight part of ``[W, b]``, are read in place rather than copied: row by row, 5x
    faster than ``einsum``, which copied them)."""
    return torch.stack([torch.vdot(x.reshape(-1), y.reshape(-1))
                        if (x.is_contiguous() and y.is_contiguous()) or x.dim() != 2
                        else torch.linalg.vecdot(x, y).sum()
                        for x, y in zip(xs, ys)]).sum().double()


class GaussNewtonModel:
    """The loss of a network's ``nn.Linear`` layers on curvature rows, and its quadratic
    model in the span of candidate steps.

    Parameters
    ----------
    model : torch.nn.Module
        The network (not a ``DistributedDataParallel`` wrapper).
    layers : list of nn.Linear
        Its trained layers, in forward order.
    loss : loss object
        Per-example loss with its Fisher products (:mod:`skkfac.losses`).
    alpha : float
        L2 penalty ``alpha/2 ‖W‖²`` on the weights, part of the loss and of ``F``.
    dtype : torch.dtype
        Precision of the curvature (float32 at least).
    reductions : Reductions
        Completes the sums over the processes that share an update.
    """

    def __init__(self, model: nn.Module, layers: list[nn.Linear], loss, *, alpha: float,
                 dtype: torch.dtype, reductions: Reductions):
        self.model = model
        self.layers = layers
        self.loss = loss
        self.alpha = alpha
        self.dtype = dtype
        self.reductions = reductions
        self.params = [p for layer in layers for p in layer.parameters()]
        #: Whether :func:`skkfac.nn.linear_jvp` computes the products from the recorded
        #: layer inputs (else ``torch.func.jvp`` with a forward pass per tangent set).
        self.fast_jvp = supports_fast_jvp(model)

    def in_full_precision(self, batch: CurvatureRows) -> CurvatureRows:
        """``batch`` itself when its forward pass was exact, else the same rows evaluated
        again at the current weights in the curvature's precision (call it under
        :func:`~skkfac.curvature.precision.full_precision`).

        A step is judged by comparing the loss before it, the model's gradient and
        Fisher terms, and the loss after it (always a fresh full-precision pass): all of
        them must come from the same arithmetic, or the rounding of a bfloat16 or TF32
        forward pass shows up in ``ρ`` and in the rejection test as a loss change.
        """
        if batch.exact:
            return batch
        inputs = [] if self.fast_jvp else None
        output = forward_in(self.model, batch.X, self.dtype, inputs=inputs)
        return batch._replace(inputs=batch.inputs if inputs is None else inputs,
                              output=output, exact=True)

    def batch_loss(self, batch: CurvatureRows, fresh: bool = False) -> torch.Tensor:
        """Mean loss on ``batch`` (weighted by its rows' weights) plus the L2 penalty, in
        the curvature's precision. ``fresh``: at the current weights (else the recorded
        forward pass, when it was made in that precision)."""
        if fresh or batch.output.dtype != self.dtype:
            output = forward_in(self.model, batch.X, self.dtype)
        else:
            output = batch.output
        weight = self._weight(batch)
        losses = self.loss.per_example(output, batch.y)
        if weight is not None:
            loss = self._weighted_means((losses * weight).sum().reshape(1), weight)[0]
            return loss + self.l2_penalty()
        total = losses.sum().reshape(1)
        self.reductions.all_reduce([total])
        loss = total[0] / self.reductions.count(output.shape[0])
        return loss.double() + self.l2_penalty()

    def _weight(self, batch: CurvatureRows) -> torch.Tensor | None:
        """The rows' weights in the curvature's precision (``None``: unweighted)."""
        return None if batch.weight is None else batch.weight.to(self.dtype)

    def _weighted_means(self, sums: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``sums`` of weighted rows, over every process, divided by the rows' total
        ``weight`` (summed along with them: no host read), in float64."""
        sums = torch.cat([sums, weight.sum().reshape(1)])
        self.reductions.all_reduce([sums])
        sums = sums.double()
        return sums[:-1] / sums[-1]

    def l2_penalty(self) -> torch.Tensor | float:
        if not self.alpha:
            return 0.0
        weights = [layer.weight.to(self.dtype) for layer in self.layers]
        return 0.5 * self.alpha * inner(weights, weights)

    def jacobian_products(self, batch: CurvatureRows, tangent_sets) -> list[torch.Tensor]:
        """``J t`` on ``batch`` for each set of per-layer tangents ``t``."""
        if self.fast_jvp:
            return list(linear_jvp(self.model, batch.inputs, batch.output, tangent_sets,
                                   dtype=self.dtype))
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
            products.append(product.to(self.dtype))
        return products

    def in_span(self, candidates, gradients, batch: CurvatureRows) -> QuadraticModel:
        """The loss's quadratic model restricted to the span of ``candidates`` (lists of
        per-layer steps), with the linear term of the whole batch's ``gradients``.

        ``F`` is the exact Fisher (Gauss–Newton matrix) on ``batch``, applied through
        Jacobian–vector products, plus the L2 penalty's curvature on the weights.
        """
        products = self.jacobian_products(batch, candidates)
        output = batch.output.to(self.dtype)
        n = len(candidates)
        pairs = [(i, j) for i in range(n) for j in range(i, n)]
        output_gradient = self.loss.output_gradient(output, batch.y)
        losses = self.loss.per_example(output, batch.y)
        weight = self._weight(batch)
        if weight is not None:  # per-row terms times wᵢ: the products' rows times √wᵢ
            root = weight.sqrt()[:, None]
            products = [product * root for product in products]
            output_gradient = output_gradient * root
            losses = losses * weight
        n_rows = output.shape[0]
        sums = torch.stack(
            [self.loss.fisher_inner(output, products[i], products[j]) * n_rows
             for i, j in pairs]
            + [(output_gradient * products[i]).sum() for i in range(n)]
            + [losses.sum()])
        if weight is None:
            self.reductions.all_reduce([sums])
            means = sums.double() / self.reductions.count(n_rows)
        else:
            means = self._weighted_means(sums, weight)
        fisher = torch.zeros(n, n, dtype=torch.float64, device=means.device)
        identity = torch.zeros_like(fisher)
        for index, (i, j) in enumerate(pairs):
            value = means[index]
            both = inner(candidates[i], candidates[j])
            if self.alpha:  # the weight part: the whole minus the (small) bias columns
                weight_part = both - inner(self._biases(candidates[i]),
                                           self._biases(candidates[j]))
                value = value + self.alpha * weight_part
            fisher[i, j] = fisher[j, i] = value
            identity[i, j] = identity[j, i] = both
        linear = torch.stack([inner(gradients, c) for c in candidates])
        linear_curvature = means[len(pairs):len(pairs) + n]
        if self.alpha:
            weights = [layer.weight.detach().to(self.dtype) for layer in self.layers]
            linear_curvature = linear_curvature + self.alpha * torch.stack(
                [inner(weights, self._weights(c)) for c in candidates])
        loss = means[-1] + self.l2_penalty()
        if batch.output.dtype != self.dtype:
            loss = self.batch_loss(batch)
        return QuadraticModel(fisher, identity, linear, linear_curvature, loss)

    def _weights(self, per_layer):
        """The weight part of per-layer ``[W, b]`` matrices (the L2 penalty's domain)."""
        return [m[:, :layer.in_features] for layer, m in zip(self.layers, per_layer)]

    def _biases(self, per_layer):
        """The bias columns of per-layer ``[W, b]`` matrices (none for a layer without)."""
        return [m[:, layer.in_features:] for layer, m in zip(self.layers, per_layer)]
