"""Damped inverses of one Kronecker block ``A ⊗ G`` and their action on a gradient.

The gradient of a layer is the matrix ``V = [∇W, ∇b]`` (out × in+1); the undamped
K-FAC update is ``G⁻¹ V A⁻¹ = mat((A ⊗ G)⁻¹ vec(V))``. Each scheme below is built once
per inverse refresh (the costly part) and then applied to every new gradient.
"""

from __future__ import annotations

import torch


def _eye_like(matrix: torch.Tensor) -> torch.Tensor:
    return torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)


def _as_tensor(value, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def precision_floor(matrix: torch.Tensor) -> torch.Tensor:
    """Smallest shift that is meaningful for ``matrix`` in its precision.

    Eigenvalues below ``√n · eps · tr(matrix)`` are rounding noise of a working-precision
    ``n × n`` PSD matrix (its largest eigenvalue is at most its trace), and shifting by
    less does not make a Cholesky factorisation reliable: this floor is what the float64
    retry used to buy, without a host round trip.
    """
    n = matrix.shape[0]
    return torch.finfo(matrix.dtype).eps * n**0.5 * torch.trace(matrix).abs()


def damped_inverse(matrix: torch.Tensor, shift) -> torch.Tensor:
    """``(matrix + shift I)⁻¹`` for a symmetric PSD ``matrix``, via Cholesky, on the device.

    The shift is raised to :func:`precision_floor` so that the factorisation succeeds in
    the working precision. A factor that is not finite, or a factorisation that still
    fails, gives the damping's own inverse ``I / shift`` instead (decided on the device,
    so no host read; the same on CPU and CUDA, where ``cholesky_ex`` reports success on
    NaN input).
    """
    finite = torch.isfinite(matrix).all()
    safe = torch.where(finite, matrix, torch.zeros_like(matrix))
    tiny = torch.finfo(matrix.dtype).tiny
    shift = torch.maximum(_as_tensor(shift, matrix), precision_floor(safe)).clamp_min(tiny)
    eye = _eye_like(matrix)
    factor, info = torch.linalg.cholesky_ex(safe + shift * eye)
    inverse = torch.cholesky_inverse(factor)
    ok = finite & (info == 0) & torch.isfinite(inverse).all()
    return torch.where(ok, inverse, eye / shift)


def symmetric_eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigendecomposition with non-negative eigenvalues, float64 retry on failure.

    A non-finite ``matrix`` gives the identity's decomposition (eigenvalues 0), so that
    the damped inverse falls back to ``I / λ``.
    """
    finite = torch.isfinite(matrix).all()
    matrix = torch.where(finite, matrix, torch.zeros_like(matrix))
    try:
        values, vectors = torch.linalg.eigh(matrix)
        if not torch.isfinite(values).all():
            raise torch.linalg.LinAlgError("non-finite eigenvalues")
    except torch.linalg.LinAlgError:
        values, vectors = torch.linalg.eigh(matrix.double())
        values, vectors = values.to(matrix.dtype), vectors.to(matrix.dtype)
    return values.clamp_min(0.0), vectors


class KroneckerInverse:
    """Base of the damped inverses: the tensors they hold can be saved and restored, and
    the products with a gradient can be computed in a lower precision."""

    #: Whether :meth:`apply_outer` is cheaper than :meth:`apply` of the formed product
    #: (true for the schemes that hold the two factor inverses explicitly).
    factored = False
    #: The dtype of the matrix products with a gradient (None: the inverse's own); see
    #: :meth:`multiply_in`.
    product_dtype: torch.dtype | None = None

    def multiply_in(self, dtype: torch.dtype | None) -> None:
        """Compute the products with a gradient in ``dtype`` from now on.

        ``torch.bfloat16`` makes them about 2.3x faster on a CPU with bfloat16 matrix
        instructions (and on GPUs with tensor cores); the operands are rounded to 8
        significant bits, the sums are accumulated in float32, and the result comes back
        in the inverse's dtype. The inverse itself is computed in full precision and
        cast once per refresh (the cast copies are not part of :meth:`tensors`).
        """
        self.product_dtype = dtype
        self._casts = {}

    def _operand(self, name: str) -> torch.Tensor:
        """The matrix ``name`` in :attr:`product_dtype` (cast once, then reused)."""
        matrix = getattr(self, name)
        if self.product_dtype is None or matrix.dtype == self.product_dtype:
            return matrix
        casts = self.__dict__.setdefault("_casts", {})
        if name not in casts:
            casts[name] = matrix.to(self.product_dtype)
        return casts[name]

    def apply(self, V: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply_outer(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """``apply(left @ right)`` for a gradient given as a product of rank ``m``.

        A mini-batch gradient is ``V = Σᵢ gᵢ āᵢᵀ / n = left @ right`` with
        ``left = [g₁ … gₘ]`` (out × m) and ``right`` the rows ``āᵢᵀ / n`` (m × in).
        """
        return self.apply(left @ right)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that define this inverse (for the optimizer's ``state_dict``)."""
        return {name: value for name, value in vars(self).items()
                if isinstance(value, torch.Tensor)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]):
        """Rebuild an inverse from :meth:`tensors` without recomputing it."""
        inverse = cls.__new__(cls)
        inverse.__dict__.update(tensors)
        return inverse


def _sandwich(left: torch.Tensor, V: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left @ V @ right`` in the dtype of ``left`` and ``right``, returned in ``V``'s."""
    return (left @ V.to(left.dtype) @ right).to(V.dtype)


def _outer_sandwich(left, u, v, right) -> torch.Tensor:
    """``left @ (u @ v) @ right`` as ``(left @ u)(v @ right)``, like :func:`_sandwich`."""
    return ((left @ u.to(left.dtype)) @ (v.to(right.dtype) @ right)).to(u.dtype)


class FactoredTikhonov(KroneckerInverse):
    """``(A + π√λ I)⁻¹`` and ``(G + √λ/π I)⁻¹`` (Martens & Grosse 2015, §6.3).

    ``π² = (tr A / dim A) / (tr G / dim G)`` balances the two shifts so that their
    Kronecker product is as close as possible to adding ``λ I`` to ``A ⊗ G``.

    Parameters
    ----------
    A : torch.Tensor of shape (n_in + 1, n_in + 1)
        Input factor (symmetric positive semi-definite).
    G : torch.Tensor of shape (n_out, n_out)
        Output-gradient factor (symmetric positive semi-definite).
    damping : float or 0-d Tensor
        Tikhonov damping ``λ``.

    Examples
    --------
    >>> import torch
    >>> from skkfac.curvature import FactoredTikhonov
    >>> A, G = torch.eye(3), 2 * torch.eye(2)
    >>> FactoredTikhonov(A, G, damping=0.0).apply(torch.ones(2, 3))
    tensor([[0.5000, 0.5000, 0.5000],
            [0.5000, 0.5000, 0.5000]])
    """

    def __init__(self, A: torch.Tensor, G: torch.Tensor, damping):
        tiny = torch.finfo(A.dtype).tiny
        mean_a = (torch.trace(A) / A.shape[0]).nan_to_num(0.0, 0.0, 0.0).clamp_min(tiny)
        mean_g = (torch.trace(G) / G.shape[0]).nan_to_num(0.0, 0.0, 0.0).clamp_min(tiny)
        pi = torch.sqrt(mean_a / mean_g)
        root = torch.sqrt(_as_tensor(damping, A))
        self.A_inv = damped_inverse(A, pi * root)
        self.G_inv = damped_inverse(G, root / pi)

    factored = True

    def apply(self, V: torch.Tensor) -> torch.Tensor:
        return _sandwich(self._operand("G_inv"), V, self._operand("A_inv"))

    def apply_outer(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """``G⁻¹ (left @ right) A⁻¹ = (G⁻¹ left)(right A⁻¹)``: with ``m`` rows it costs
        ``O(m (out² + in² + out·in))`` instead of ``O(out·in·(out + in))``."""
        return _outer_sandwich(self._operand("G_inv"), left, right, self._operand("A_inv"))


class EigenTikhonov(KroneckerInverse):
    """Exact ``(A ⊗ G + λ I)⁻¹`` through the eigenbases of ``A`` and ``G``.

    With ``A = Qa diag(a) Qaᵀ`` and ``G = Qg diag(g) Qgᵀ`` the eigenvalues of ``A ⊗ G``
    are the products ``g_i a_j``, so ``(A ⊗ G + λI)⁻¹ vec(V)`` is
    ``Qg [(Qgᵀ V Qa) / (g aᵀ + λ)] Qaᵀ``.

    Parameters
    ----------
    A : torch.Tensor of shape (n_in + 1, n_in + 1)
        Input factor (symmetric positive semi-definite).
    G : torch.Tensor of shape (n_out, n_out)
        Output-gradient factor (symmetric positive semi-definite).
    damping : float or 0-d Tensor
        Tikhonov damping ``λ``, added to every eigenvalue of ``A ⊗ G``.

    Examples
    --------
    The result equals solving with the full ``A ⊗ G + λ I`` (``vec`` stacks columns):

    >>> import torch
    >>> from skkfac.curvature import EigenTikhonov
    >>> _ = torch.manual_seed(0)
    >>> a, g = torch.randn(50, 4, dtype=torch.float64), torch.randn(50, 2, dtype=torch.float64)
    >>> A, G = a.T @ a / 50, g.T @ g / 50
    >>> V = torch.randn(2, 4, dtype=torch.float64)
    >>> full = torch.kron(A, G) + 1e-3 * torch.eye(8, dtype=torch.float64)
    >>> expected = torch.linalg.solve(full, V.T.reshape(-1))
    >>> torch.allclose(EigenTikhonov(A, G, 1e-3).apply(V).T.reshape(-1), expected)
    True
    """

    def __init__(self, A: torch.Tensor, G: torch.Tensor, damping):
        self.a, self.Qa = symmetric_eigh(A)
        self.g, self.Qg = symmetric_eigh(G)
        floor = torch.finfo(A.dtype).tiny
        self.denominator = torch.outer(self.g, self.a).add_(
            _as_tensor(damping, A).clamp_min(floor))

    def apply(self, V: torch.Tensor) -> torch.Tensor:
        Qg, Qa = self._operand("Qg"), self._operand("Qa")
        return _sandwich(Qg, _sandwich(Qg.T, V, Qa) / self.denominator, Qa.T)


class MaxNormalised(KroneckerInverse):
    """The study's scheme (§5.2.1): divide ``A``, ``G`` and the update by their max.

    ``A`` and ``G`` are divided by their largest absolute entry, shifted by ``λ I``
    (without a shift the input factor of image data is singular: border pixels are
    always zero), inverted, and the resulting update is divided by its largest absolute
    entry, so each layer's step is at most ``lr`` in every coordinate.

    Parameters
    ----------
    A : torch.Tensor of shape (n_in + 1, n_in + 1)
        Input factor (symmetric positive semi-definite).
    G : torch.Tensor of shape (n_out, n_out)
        Output-gradient factor (symmetric positive semi-definite).
    damping : float or 0-d Tensor
        Shift ``λ`` added to the normalised factors.

    Examples
    --------
    >>> import torch
    >>> from skkfac.curvature import MaxNormalised
    >>> A, G = torch.diag(torch.tensor([4.0, 1.0])), torch.eye(2)
    >>> update = MaxNormalised(A, G, damping=0.0).apply(torch.ones(2, 2))
    >>> float(update.abs().max())
    1.0
    """

    def __init__(self, A: torch.Tensor, G: torch.Tensor, damping):
        tiny = torch.finfo(A.dtype).tiny
        self.A_inv = damped_inverse(A / A.abs().max().clamp_min(tiny), damping)
        self.G_inv = damped_inverse(G / G.abs().max().clamp_min(tiny), damping)

    factored = True

    def apply(self, V: torch.Tensor) -> torch.Tensor:
        return self._normalised(_sandwich(self._operand("G_inv"), V, self._operand("A_inv")))

    def apply_outer(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """:meth:`apply` of ``left @ right`` without forming it (see
        :meth:`FactoredTikhonov.apply_outer`)."""
        return self._normalised(_outer_sandwich(self._operand("G_inv"), left, right,
                                                self._operand("A_inv")))

    @staticmethod
    def _normalised(update: torch.Tensor) -> torch.Tensor:
        return update / update.abs().max().clamp_min(torch.finfo(update.dtype).tiny)


DAMPING_SCHEMES = {
    "tikhonov": FactoredTikhonov,
    "eigen": EigenTikhonov,
    "max_norm": MaxNormalised,
}
