"""One layer's Kronecker block: summed statistics, running averages, inverse."""

from __future__ import annotations

import torch


class KroneckerBlock:
    """Statistics of one ``nn.Linear`` layer for the factors ``A`` and ``G``.

    ``A = E[ā āᵀ]`` over the layer's inputs, with a 1 appended when the layer has a bias
    (so that the bias is part of the block), and ``G = E[g gᵀ]`` over the gradients ``g``
    of the per-example loss with respect to the layer's outputs (pre-activations). Sums
    are accumulated over micro-batches and turned into expectations in
    :meth:`update_running_averages`. The factors are kept in ``dtype`` whatever the
    precision of the inputs (a bfloat16 network gets float32 factors).

    Parameters
    ----------
    n_in, n_out : int
        Input and output width of the layer; ``A`` is ``(n_in + bias) × (n_in + bias)``
        and ``G`` is ``n_out × n_out``.
    bias : bool, default=True
        Whether the layer has a bias (a constant 1 is then appended to its inputs).
    dtype : torch.dtype
    device : torch.device or str

    Examples
    --------
    >>> import torch
    >>> from skkfac.curvature import KroneckerBlock
    >>> block = KroneckerBlock(3, 2, dtype=torch.float64, device="cpu")
    >>> a = torch.randn(100, 3, dtype=torch.float64)
    >>> g = torch.randn(100, 2, dtype=torch.float64)
    >>> block.add_inputs(a)
    >>> block.add_output_gradients(g)
    >>> block.update_running_averages(100, decay=0.0)
    >>> a1 = torch.cat([a, torch.ones(100, 1, dtype=a.dtype)], dim=1)
    >>> torch.allclose(block.A, a1.T @ a1 / 100), torch.allclose(block.G, g.T @ g / 100)
    (True, True)
    """

    def __init__(self, n_in: int, n_out: int, *, bias: bool = True, dtype, device):
        self.bias = bool(bias)
        n_a = n_in + self.bias
        self.A_sum = torch.zeros(n_a, n_a, dtype=dtype, device=device)
        self.G_sum = torch.zeros(n_out, n_out, dtype=dtype, device=device)
        self.A: torch.Tensor | None = None
        self.G: torch.Tensor | None = None
        self.inverse = None
        self._sums_dirty = False  # whether the sums hold anything to zero

    def add_inputs(self, a: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        """Add ``Σ ā āᵀ`` over the rows of ``a`` (``ā = [a, 1]`` with a bias) without
        concatenating; ``Σ wᵢ āᵢ āᵢᵀ`` with a ``weight`` per row."""
        a = a.to(self.A_sum.dtype)
        d = a.shape[1]
        self._sums_dirty = True
        weighted = a if weight is None else a * weight.to(a.dtype)[:, None]
        self.A_sum[:d, :d].addmm_(weighted.T, a)
        if self.bias:
            column = weighted.sum(dim=0)
            self.A_sum[:d, d] += column
            self.A_sum[d, :d] += column
            self.A_sum[d, d] += a.shape[0] if weight is None else weight.to(a.dtype).sum()

    def add_output_gradients(self, g: torch.Tensor) -> None:
        """Add ``Σ g gᵀ`` over the rows of ``g`` (per-example pre-activation gradients)."""
        g = g.to(self.G_sum.dtype)
        self._sums_dirty = True
        self.G_sum.addmm_(g.T, g)

    def update_running_averages(self, n_examples: int, decay: float) -> None:
        """Fold the summed statistics of ``n_examples`` into the running averages (in
        place, without a temporary: the factors of a wide network are tens of MB)."""
        if self.A is None:
            self.A, self.G = self.A_sum / n_examples, self.G_sum / n_examples
        else:
            self.A.mul_(decay).add_(self.A_sum, alpha=(1.0 - decay) / n_examples)
            self.G.mul_(decay).add_(self.G_sum, alpha=(1.0 - decay) / n_examples)
        self.reset_sums()

    def reset_sums(self) -> None:
        """Zero the sums (a no-op when nothing was added since they were last zeroed)."""
        if self._sums_dirty:
            self.A_sum.zero_()
            self.G_sum.zero_()
            self._sums_dirty = False
