"""Output distributions: the loss, its curvature and sampling from the model.

Each loss is the negative log-likelihood of a predictive distribution over targets
given the network output ``z``. K-FAC needs four things from it:

* the per-example loss (its mean over a batch is the training objective);
* targets drawn from the model's own predictive distribution, whose gradients give the
  *true* Fisher (``fisher='sampled'``);
* a square root of the Hessian of the per-example loss with respect to ``z``, whose
  columns, back-propagated, give the exact expectation over that distribution
  (``fisher='exact'``; the K-FAC factor of the generalised Gauss-Newton matrix);
* the per-example gradient with respect to ``z`` and the Hessian's inner product
  (``fisher_inner``), for the exact quadratic model of a step.

The distributions are scaled so that the Fisher equals the Gauss-Newton matrix of the
loss as written, whatever its normalisation: a learning rate of 1 is then a
(K-FAC-)Newton step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class SquaredError:
    """Per-example loss ``mean_j (z_j - y_j)**2`` (the study's per-pixel MSE).

    The matching predictive distribution is ``N(z, (d/2) I)`` with ``d`` outputs: its
    negative log-likelihood is the loss up to a constant, so its Fisher equals the
    loss's Hessian ``(2/d) I`` with respect to ``z``.
    """

    name = "squared_error"

    def per_example(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.shape != output.shape:  # (n, 1) against (n,) would broadcast to (n, n)
            raise ValueError(f"The target's shape {tuple(target.shape)} differs from the "
                             f"output's {tuple(output.shape)}: give targets of the "
                             "output's shape (e.g. y[:, None] for one output).")
        return (output - target).square().mean(dim=1)

    def sample_targets(self, output: torch.Tensor, generator=None) -> torch.Tensor:
        std = math.sqrt(output.shape[1] / 2.0)
        noise = torch.randn(output.shape, generator=generator, device=output.device,
                            dtype=output.dtype)
        return output.detach() + std * noise

    def hessian_sqrt_columns(self, output: torch.Tensor):
        """Yield ``c_j`` (shape ``(n, d)``) with ``sum_j c_j c_j^T`` = per-example Hessian."""
        d = output.shape[1]
        scale = math.sqrt(2.0 / d)
        for j in range(d):
            column = torch.zeros_like(output)
            column[:, j] = scale
            yield column

    def output_gradient(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-example gradient of the loss with respect to the output: ``2 (z − y) / d``."""
        return (output - target) * (2.0 / output.shape[1])

    def fisher_inner(self, output: torch.Tensor, u: torch.Tensor, v: torch.Tensor):
        """Batch mean of ``uᵀ H v`` for output-space vectors ``u``, ``v`` (H: loss Hessian)."""
        return (u * v).sum(dim=1).mean() * (2.0 / output.shape[1])


class CrossEntropy:
    """Per-example loss ``-log softmax(z)[y]`` for integer class targets."""

    name = "cross_entropy"

    def per_example(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target, reduction="none")

    def sample_targets(self, output: torch.Tensor, generator=None) -> torch.Tensor:
        probabilities = torch.softmax(output.detach(), dim=1)
        # A diverged network outputs NaN: draw anything, its loss is rejected upstream.
        probabilities = torch.nan_to_num(probabilities, nan=1.0, posinf=1.0, neginf=0.0)
        return torch.multinomial(probabilities, 1, generator=generator).squeeze(1)

    def hessian_sqrt_columns(self, output: torch.Tensor):
        # diag(p) - p p^T = sum_j p_j (e_j - p)(e_j - p)^T
        p = torch.softmax(output.detach(), dim=1)
        for j in range(output.shape[1]):
            column = -p.clone()
            column[:, j] += 1.0
            yield column * p[:, j : j + 1].sqrt()

    def output_gradient(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-example gradient of the loss with respect to the logits: ``softmax(z) − e_y``."""
        gradient = torch.softmax(output, dim=1)
        gradient[torch.arange(output.shape[0], device=output.device), target] -= 1.0
        return gradient

    def fisher_inner(self, output: torch.Tensor, u: torch.Tensor, v: torch.Tensor):
        """Batch mean of ``uᵀ (diag(p) − p pᵀ) v``."""
        p = torch.softmax(output.detach(), dim=1)
        return ((p * u * v).sum(dim=1) - (p * u).sum(dim=1) * (p * v).sum(dim=1)).mean()


LOSSES = {cls.name: cls for cls in (SquaredError, CrossEntropy)}


def get_loss(loss) -> SquaredError | CrossEntropy:
    """Return a loss object from its name, or ``loss`` itself if it is one already.

    Parameters
    ----------
    loss : {'squared_error', 'cross_entropy'} or loss object

    Returns
    -------
    SquaredError or CrossEntropy

    Examples
    --------
    >>> import torch
    >>> from skkfac.losses import get_loss
    >>> mse = get_loss("squared_error")
    >>> mse.per_example(torch.zeros(2, 4), torch.ones(2, 4))  # mean over the 4 outputs
    tensor([1., 1.])
    >>> logits = torch.zeros(5, 3)
    >>> get_loss("cross_entropy").sample_targets(logits, torch.Generator().manual_seed(0)).shape
    torch.Size([5])
    """
    if isinstance(loss, str):
        try:
            return LOSSES[loss]()
        except KeyError:
            raise ValueError(f"Unknown loss {loss!r}; expected one of {sorted(LOSSES)}.") from None
    if isinstance(loss, tuple(LOSSES.values())):
        return loss
    # A torch loss module (nn.MSELoss...) knows nothing of sampling targets or of its
    # Fisher: name the distribution instead.
    raise TypeError(f"loss must be one of {sorted(LOSSES)} or a skkfac.losses object, got "
                    f"{loss!r}; for nn.MSELoss use 'squared_error', for "
                    "nn.CrossEntropyLoss 'cross_entropy'.")
