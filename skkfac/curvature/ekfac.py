"""EKFAC: K-FAC's eigenbasis with a diagonal re-estimated from per-example gradients.

George, Laurent, Bouthillier, Ballas & Vincent (2018), "Fast Approximate Natural Gradient
Descent in a Kronecker-factored Eigenbasis". K-FAC approximates a layer's Fisher block by
``A ⊗ G = Q diag(a ⊗ γ) Qᵀ`` with ``Q = Q_A ⊗ Q_G``. EKFAC keeps the basis ``Q`` but
replaces the eigenvalue products ``γ_i a_j`` by the Fisher's actual variances in that
basis,

    s_ij = E_n[(Q_Gᵀ g_n)_i² (Q_Aᵀ ā_n)_j²] = E_n[(Q_Gᵀ ∇W̄_n Q_A)_ij²],

(``∇W̄_n = g_n ā_nᵀ`` is example ``n``'s gradient of a linear layer), which is the best
diagonal approximation of the Fisher in that basis. K-FAC's products are the special case
where ``(Q_Gᵀ g)²`` and ``(Q_Aᵀ ā)²`` are uncorrelated. The damped update is
``Q_G [(Q_Gᵀ V Q_A) / (s + λ)] Q_Aᵀ``.

Two pieces:

* :class:`EigenvalueCorrectedTikhonov`, the damping scheme ``'ekfac'``, built like the
  other schemes from ``A``, ``G`` and ``λ`` at each inverse refresh (the eigenbasis);
* :class:`EKFACStatistics`, kept by the solver, which holds the per-example rows of the
  curvature batch and folds them into each layer's running average of ``s`` at every
  update, in the current basis; when the basis is refreshed, the previous average is
  carried over by taking the diagonal, in the new basis, of the previous approximation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from skkfac.curvature.inverses import KroneckerInverse, _as_tensor, _sandwich, symmetric_eigh


def _with_bias_column(a: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``ā``: the rows of ``a`` in ``basis``'s precision, with a 1 appended when the block
    has a bias column."""
    a = a.to(basis.dtype)
    if a.shape[1] == basis.shape[0]:
        return a
    return torch.cat([a, torch.ones_like(a[:, :1])], dim=1)


def _local(tensors: list[torch.Tensor]) -> None:
    """The all-reduce of a single process: nothing to add."""


class EigenvalueCorrectedTikhonov(KroneckerInverse):
    """``(Q diag(s) Qᵀ + λ I)⁻¹`` with ``Q = Q_A ⊗ Q_G`` the eigenbasis of ``A ⊗ G``.

    Until :meth:`set_scaling` is called, ``s`` holds the Kronecker eigenvalue products
    ``γ_i a_j``, so the scheme equals ``'eigen'`` (exact Tikhonov damping of ``A ⊗ G``).

    Parameters
    ----------
    A : torch.Tensor of shape (n_in + 1, n_in + 1)
        Input factor (symmetric positive semi-definite); ``n_in × n_in`` for a layer
        without bias.
    G : torch.Tensor of shape (n_out, n_out)
        Output-gradient factor (symmetric positive semi-definite).
    damping : float or 0-d Tensor
        Tikhonov damping ``λ``, added to every entry of the scaling.

    Attributes
    ----------
    Qa, Qg : torch.Tensor
        Eigenvectors (columns) of ``A`` and ``G``.
    scaling : torch.Tensor of shape (n_out, n_in + 1)
        ``s``: the curvature along ``Qg[:, i] ⊗ Qa[:, j]`` is ``s[i, j]``.
    estimated : torch.Tensor of dtype bool, 0-d
        Whether ``scaling`` comes from per-example statistics (else: Kronecker products);
        a device tensor, so that the solver never waits for it.

    All the attributes are tensors, updated in place: :meth:`tensors` (the optimizer's
    ``state_dict`` entry) always holds the current scaling.

    Examples
    --------
    With one input direction, ``g`` and ``ā`` are trivially uncorrelated and the
    re-estimated scaling is K-FAC's:

    >>> import torch
    >>> from skkfac.curvature import EigenvalueCorrectedTikhonov
    >>> _ = torch.manual_seed(0)
    >>> a, g = torch.ones(50, 1, dtype=torch.float64), torch.randn(50, 2, dtype=torch.float64)
    >>> A, G = a.T @ a / 50, g.T @ g / 50
    >>> ekfac = EigenvalueCorrectedTikhonov(A, G, damping=0.0)
    >>> kronecker = ekfac.scaling.clone()
    >>> ekfac.set_scaling(ekfac.scaling_sum(a, [g]) / 50)
    >>> torch.allclose(ekfac.scaling, kronecker)
    True
    """

    def __init__(self, A: torch.Tensor, G: torch.Tensor, damping):
        a, self.Qa = symmetric_eigh(A)
        g, self.Qg = symmetric_eigh(G)
        self.damping = _as_tensor(damping, A).clamp_min(torch.finfo(A.dtype).tiny)
        self.scaling = torch.outer(g, a)
        self.estimated = torch.zeros((), dtype=torch.bool, device=A.device)

    def apply(self, V: torch.Tensor) -> torch.Tensor:
        Qg, Qa = self._operand("Qg"), self._operand("Qa")
        rotated = _sandwich(Qg.T, V, Qa)
        return _sandwich(Qg, rotated / (self.scaling + self.damping), Qa.T)

    def scaling_sum(self, a: torch.Tensor, gradients: list[torch.Tensor]) -> torch.Tensor:
        """``Σ_n Σ_c (Q_Gᵀ g_nc)² (Q_Aᵀ ā_n)²ᵀ`` over the rows ``n`` of one micro-batch.

        ``gradients`` holds one ``g`` per backward pass ``c`` (one for sampled or
        empirical targets, one per output unit for the exact Fisher, whose passes sum to
        the expectation over the model's distribution).
        """
        inputs = (_with_bias_column(a, self.Qa) @ self.Qa).square_()
        outputs = torch.stack([g.to(self.Qg.dtype) @ self.Qg
                               for g in gradients]).square_().sum(dim=0)
        return outputs.T @ inputs

    def set_scaling(self, scaling: torch.Tensor) -> None:
        """Take ``scaling`` as the estimated one (copied into :attr:`scaling`)."""
        self.scaling.copy_(scaling)
        self.estimated.fill_(True)

    def scaling_in_basis_of(self, other: EigenvalueCorrectedTikhonov) -> torch.Tensor:
        """This scaling as seen in ``other``'s basis: the diagonal of ``Q diag(s) Qᵀ`` there.

        With ``R = Q_otherᵀ Q`` per factor, ``diag((R_A ⊗ R_G) diag(s) (R_A ⊗ R_G)ᵀ)`` is
        ``R_G² s R_A²ᵀ`` (element-wise squares): two matrix products, not a Kronecker.
        """
        rotation_g = (other.Qg.T @ self.Qg).square_()
        rotation_a = (other.Qa.T @ self.Qa).square_()
        return rotation_g @ self.scaling @ rotation_a.T


class EKFACStatistics:
    """Per-example statistics behind EKFAC's scaling, kept by the solver across refreshes.

    The solver hands it the rows of every curvature micro-batch (:meth:`add`), then at
    each update, after any inverse refresh, calls :meth:`update` with the layers'
    current :class:`EigenvalueCorrectedTikhonov` inverses. Each layer's scaling becomes
    ``decay · s_previous + (1 - decay) · s_batch`` (``s_batch`` alone at the first
    estimate), the same running average as the Kronecker factors, with ``s_previous``
    brought into the current basis when the basis was refreshed. The average itself lives
    in the inverses (so in the optimizer's state); this object holds only the rows of the
    pending update and which inverses the average was last written to.

    Examples
    --------
    >>> import torch
    >>> from skkfac.curvature import EigenvalueCorrectedTikhonov, EKFACStatistics
    >>> _ = torch.manual_seed(0)
    >>> a, g = torch.randn(20, 3), torch.randn(20, 2)
    >>> a1 = torch.cat([a, torch.ones(20, 1)], 1)
    >>> inverse = EigenvalueCorrectedTikhonov(a1.T @ a1 / 20, g.T @ g / 20, damping=1e-3)
    >>> statistics = EKFACStatistics()
    >>> statistics.add([a], [[g]])  # one layer, one backward pass
    >>> statistics.update([inverse], decay=0.5)
    >>> bool(inverse.estimated), tuple(inverse.scaling.shape)
    (True, (2, 4))
    """

    def __init__(self):
        self.rows: list[tuple[list[torch.Tensor], list[list[torch.Tensor]]]] = []
        #: Each kept micro-batch's number of rows, or total weight.
        self.counts: list[int | float] = []
        #: The inverses whose scaling holds the running average (``None``: none yet).
        self.current: list[EigenvalueCorrectedTikhonov] | None = None

    def add(self, inputs: list[torch.Tensor], gradient_passes: list[list[torch.Tensor]],
            count: int | float | None = None):
        """Keep one micro-batch: per layer its inputs ``a``; per backward pass and layer ``g``.

        ``count`` is what the rows count for in the mean (default: their number); weighted
        rows pass their total weight, with each ``g`` scaled by the square root of its
        row's weight."""
        self.rows.append(([a.detach() for a in inputs],
                          [[g.detach() for g in gradients] for gradients in gradient_passes]))
        self.counts.append(inputs[0].shape[0] if count is None else count)

    def clear(self) -> None:
        self.rows = []
        self.counts = []

    def __setstate__(self, state):
        # Pickled before the counts were kept: the rows were unweighted.
        state.setdefault("counts", [inputs[0].shape[0] for inputs, _ in state["rows"]])
        self.__dict__.update(state)

    @torch.no_grad()
    def update(self, inverses: list[EigenvalueCorrectedTikhonov], decay: float,
               all_reduce: Callable[[list[torch.Tensor]], None] = _local,
               reduce_count: Callable[[int | float], int | float] = lambda count: count,
               ) -> None:
        """Fold the kept rows into each inverse's scaling; forget the rows.

        ``all_reduce`` and ``reduce_count`` are the solver's data-parallel seams: they sum
        the per-layer scaling sums and the number of rows over the processes that share
        the update. Nothing is read from the device.
        """
        previous = self.current or [None] * len(inverses)
        for inverse, old in zip(inverses, previous):
            if old is not None and inverse is not old:  # a refreshed basis
                inverse.scaling.copy_(torch.where(
                    old.estimated, old.scaling_in_basis_of(inverse), inverse.scaling))
                inverse.estimated.copy_(old.estimated)
        n_examples = reduce_count(sum(self.counts))
        if n_examples:
            sums = [torch.zeros_like(inverse.scaling) for inverse in inverses]
            for inputs, passes in self.rows:
                for layer, inverse in enumerate(inverses):
                    sums[layer].add_(inverse.scaling_sum(inputs[layer],
                                                         [g[layer] for g in passes]))
            all_reduce(sums)
            for inverse, total in zip(inverses, sums):
                batch = total.div_(n_examples)
                inverse.set_scaling(torch.where(
                    inverse.estimated, decay * inverse.scaling + (1.0 - decay) * batch, batch))
        self.current = list(inverses)
        self.clear()
