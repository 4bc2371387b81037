"""The L2 penalty that the data ask for: MacKay's evidence approximation.

``alpha='auto'`` starts from a weak prior (:mod:`skkfac.estimators._regularisation`),
which cannot know how noisy the targets are. On a few hundred noisy rows, a fast fitter
then fits the noise before early stopping can catch it (test R² of diabetes 0.44 against
Adam's 0.47). The evidence approximation (MacKay 1992, "Bayesian interpolation") reads
the noise and the weights' scale off a fitted network instead:

* ``γ = Σ_k h_k / (h_k + alpha)``, the number of well-determined parameters, from the
  eigenvalues ``h_k`` of the Gauss-Newton matrix of the mean loss;
* the noise variance ``σ² = Σ r² / (N − γ)`` over the ``N = n·d`` residuals;
* the prior precision ``γ / ‖W‖²``.

The penalty that maximises the evidence is, in the units of skkfac's mean squared error
(the mean over ``n`` rows and ``d`` outputs of ``(y − ŷ)²``, penalty ``alpha/2·‖W‖²``),

    ``alpha = 2 γ · mse / ((n d − γ) · ‖W‖²)``.

The Gauss-Newton matrix ``(2 / (n d)) Jᵀ J`` of ``P`` parameters has the nonzero
eigenvalues of the ``n d × n d`` tangent kernel ``(2 / (n d)) J Jᵀ``, which a dense
network gives layer by layer without forming ``J``:
``J_(i,j) · J_(k,m) = Σ_layers (a_i · a_k)(b_ij · b_km)``, with ``a`` a layer's input
(and a 1 for the bias) and ``b_ij`` the gradient of output ``j`` of row ``i`` with
respect to the layer's pre-activations. The kernel is built on at most
:data:`KERNEL_SIZE` residuals, a random subset of rows for larger sets; biases count as
penalised in ``γ`` (they are a small share of the parameters).
"""

from __future__ import annotations

import numpy as np
import torch

from skkfac.nn import linear_layers

#: Largest tangent kernel (residuals ``rows × outputs``) the estimate is built on. At 500
#: the estimate costs about 0.02 s on 2 cores (a network of 100 hidden units); at 1000 it
#: cost 0.09 s, a fifth of an airfoil fit, and changed no refit decision that mattered
#: (defaults benchmark sets concrete, airfoil, gas, stock: medians within 0.008).
#: A network with more well-determined parameters than rows here gets too small an
#: estimate, so large sets are rarely refitted: they need the penalty least.
KERNEL_SIZE = 500

#: Fewest rows worth an estimate: with more outputs than ``KERNEL_SIZE / MIN_ROWS``
#: there is no estimate.
MIN_ROWS = 100


def tangent_kernel(model: torch.nn.Module, X: torch.Tensor) -> torch.Tensor:
    """``J Jᵀ`` of the network's outputs on the rows ``X`` (float64), ordered
    output-major: entry ``(j·n + i, m·n + k)`` pairs output ``j`` of row ``i`` with output
    ``m`` of row ``k``. Every parameter of the ``nn.Linear`` layers counts, biases too."""
    layers = linear_layers(model)
    inputs, pre_activations = [], []

    def record(module, args, output):
        inputs.append(args[0].detach())
        pre_activations.append(output)

    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        with torch.enable_grad():
            output = model(X).reshape(len(X), -1)
    finally:
        for handle in handles:
            handle.remove()
    n, d = output.shape
    backpropagated = []  # per output: each layer's (n, out) gradient rows
    with torch.enable_grad():
        for j in range(d):
            rows = torch.autograd.grad(output[:, j].sum(), pre_activations,
                                       retain_graph=j < d - 1)
            backpropagated.append([row.double() for row in rows])
    input_grams = [torch.addmm(torch.ones(n, n, dtype=torch.float64, device=X.device),
                               a.double(), a.double().T) for a in inputs]
    kernel = torch.zeros(n * d, n * d, dtype=torch.float64, device=X.device)
    for j in range(d):
        for m in range(j, d):
            block = sum(gram * (bj @ bm.T) for gram, bj, bm
                        in zip(input_grams, backpropagated[j], backpropagated[m]))
            kernel[j * n:(j + 1) * n, m * n:(m + 1) * n] = block
            kernel[m * n:(m + 1) * n, j * n:(j + 1) * n] = block.T
    return kernel


def well_determined_parameters(curvatures: torch.Tensor, alpha: float) -> float:
    """``γ = Σ h / (h + alpha)`` over the Gauss-Newton eigenvalues ``curvatures``."""
    curvatures = curvatures.clamp_min(0.0)
    if alpha <= 0:
        return float((curvatures > 0).sum())
    return float((curvatures / (curvatures + alpha)).sum())


@torch.no_grad()
def evidence_alpha(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor,
                   sample_weight: torch.Tensor | None, alpha: float,
                   rng: np.random.RandomState) -> tuple[float, float] | None:
    """``(alpha, γ)``: the evidence's penalty for the squared error at the weights of
    ``model``, trained with penalty ``alpha`` on the rows ``(X, y)`` (``y`` of shape
    ``(n, d)``), rows weighted by ``sample_weight`` (positive). ``None`` when there is
    no estimate: too many outputs for :data:`KERNEL_SIZE`, weight matrices that are all
    zero, or ``γ`` within one of the number of residuals (the network interpolates: no
    noise is left to measure)."""
    n_rows, n_outputs = y.shape
    rows = min(n_rows, KERNEL_SIZE // n_outputs)
    if rows < min(n_rows, MIN_ROWS):
        return None
    weight = (torch.ones(n_rows, dtype=torch.float64, device=X.device)
              if sample_weight is None else sample_weight.double())
    total_weight = float(weight.sum())
    if rows < n_rows:
        chosen = torch.as_tensor(np.sort(rng.choice(n_rows, rows, replace=False)),
                                 device=X.device)
        X, y, weight = X[chosen], y[chosen], weight[chosen]
    weight = weight / weight.sum()
    output = model(X).reshape(rows, n_outputs).double()
    mse = float(weight @ (y.double() - output).square().mean(dim=1))
    root = weight.sqrt().repeat(n_outputs)
    curvature = tangent_kernel(model, X) * root[:, None] * root[None, :] * (2.0 / n_outputs)
    gamma = well_determined_parameters(torch.linalg.eigvalsh(curvature), alpha)
    squared_weights = float(sum(layer.weight.double().square().sum()
                                for layer in linear_layers(model)))
    residual_freedom = total_weight * n_outputs - gamma
    if residual_freedom < 1.0 or squared_weights == 0.0:
        return None
    return 2.0 * gamma * mse / (residual_freedom * squared_weights), gamma
