"""Step-size and damping control from the exact quadratic model, on the device.

Martens & Grosse (2015, §6.4-§7): the step is the minimiser of the damped quadratic
model ``M(δ) = ∇ᵀδ + ½ δᵀ(F + λI)δ`` in the plane of the K-FAC direction and the previous
step, and the Levenberg–Marquardt rule adapts ``λ`` from the reduction ratio ``ρ``.
Every function here works on 0-d tensors, so that no value has to be read on the host.
"""

from __future__ import annotations

import torch

#: Upper bound of the adapted (relative) damping: beyond it every step is ~zero anyway,
#: and repeated rejections must not drive it to infinity.
MAX_DAMPING = 1e8


def minimise_plane_model(matrix: torch.Tensor, linear: torch.Tensor,
                         momentum_bounds: tuple[float, float] | None = None) -> torch.Tensor:
    """Coefficients ``c`` minimising ``cᵀ linear + ½ cᵀ matrix c`` (1 or 2 unknowns).

    Solved in closed form. When the 2 × 2 matrix is (nearly) singular, e.g. the two
    candidates are parallel or the previous step is zero, the second coefficient is 0
    and the first minimises along the first candidate alone; a zero or non-finite
    curvature gives zero coefficients (no step) rather than ``0/0``.

    ``momentum_bounds=(low, high)`` confines the second coefficient (the momentum of the
    previous step) to ``[low, high]``. The model is convex, so minimising it over ``c₀``
    leaves a convex parabola in ``c₁`` whose minimum is the unconstrained ``c₁``: the
    constrained optimum is that value clipped to the bounds, with ``c₀`` minimising
    along the first candidate for it. Why bound it: the 2 × 2 model is measured on a
    few curvature rows, and its noise picked momenta of -10 and 2.2 on digits (a
    negative momentum undoes the previous step; one above 1 amplifies it).

    Parameters
    ----------
    matrix : Tensor of shape (k, k), k in {1, 2}
        ``Cᵀ (F + λI) C`` for the candidate directions ``C``.
    linear : Tensor of shape (k,)
        ``Cᵀ ∇``.
    momentum_bounds : (float, float) or None
        Interval of the second coefficient; ``None``: unbounded.

    Returns
    -------
    Tensor of shape (k,)

    Examples
    --------
    >>> import torch
    >>> from skkfac.curvature.control import minimise_plane_model
    >>> minimise_plane_model(torch.tensor([[2.0, 0.0], [0.0, 4.0]]), torch.tensor([-2.0, 4.0]))
    tensor([ 1., -1.])
    >>> minimise_plane_model(torch.tensor([[2.0, 0.0], [0.0, 4.0]]), torch.tensor([-2.0, 4.0]),
    ...                      momentum_bounds=(0.0, 0.9))
    tensor([1., 0.])
    >>> minimise_plane_model(torch.zeros(1, 1), torch.zeros(1))
    tensor([0.])
    """
    a = matrix[0, 0]
    along_first = torch.where(a > 0, -linear[0] / a, torch.zeros_like(a))
    if matrix.shape[0] == 1:
        solution = along_first.reshape(1)
    else:
        b, c = matrix[0, 1], matrix[1, 1]
        det = a * c - b * b
        regular = det > 1e-10 * a * c
        safe_det = torch.where(regular, det, torch.ones_like(det))
        second = torch.where(regular, (b * linear[0] - a * linear[1]) / safe_det,
                             torch.zeros_like(det))
        if momentum_bounds is not None:
            second = second.clamp(*momentum_bounds)
        first = torch.where(a > 0, -(linear[0] + b * second) / torch.where(a > 0, a, 1.0),
                            torch.zeros_like(a))
        solution = torch.stack([first, second])
    return torch.where(torch.isfinite(solution).all(), solution, torch.zeros_like(solution))


def reduction_ratio(actual: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """``ρ = actual / predicted`` for a predicted decrease, else NaN (no evidence).

    The model is evaluated on the curvature rows with their own gradient, while the step
    was chosen with the whole batch's: when the batch is larger than the curvature rows,
    the step need not be a descent direction for those rows, and a predicted increase
    says more about mini-batch noise than about the damping. Measured on random data with
    128 of 1000 rows, counting it as ``ρ = -inf`` raised λ from 0.1 to 280 in 20 updates;
    a step that really harms is undone by the rejection test instead.

    Examples
    --------
    >>> import torch
    >>> from skkfac.curvature.control import reduction_ratio
    >>> [float(reduction_ratio(torch.tensor(-1.0), torch.tensor(p))) for p in (-2.0, 0.0, 1.0)]
    [0.5, nan, nan]
    """
    safe = torch.where(predicted < 0, predicted, torch.ones_like(predicted))
    return torch.where(predicted < 0, actual / safe, torch.full_like(actual, torch.nan))


def levenberg_marquardt(damping: torch.Tensor, rho: torch.Tensor, omega: float,
                        min_damping: float) -> torch.Tensor:
    """The damping after one Levenberg–Marquardt adjustment.

    ``ρ > 3/4``: the model is trusted, ``λ ← max(ω λ, min_damping)``; ``ρ < 1/4``:
    ``λ ← λ / ω`` (at most :data:`MAX_DAMPING`); otherwise, and for a NaN ``ρ``, unchanged.

    Examples
    --------
    >>> import torch
    >>> from skkfac.curvature.control import levenberg_marquardt
    >>> d = torch.tensor(1.0)
    >>> [float(levenberg_marquardt(d, torch.tensor(r), 0.5, 1e-8)) for r in (1.0, 0.5, 0.1)]
    [0.5, 1.0, 2.0]
    """
    lower = (damping * omega).clamp_min(min_damping)
    upper = (damping / omega).clamp_max(MAX_DAMPING)
    return torch.where(rho > 0.75, lower, torch.where(rho < 0.25, upper, damping))


#: Factor by which a rejected step multiplies the damping. The Levenberg–Marquardt rule
#: lowers λ by at most (19/20)^5 per 5 updates, so a raise of 3 is undone in ~22 updates,
#: where 10 took ~45: with 10, keggundirected's ~7 rejections per 340 updates swung the
#: damping between 0.12 and 4.5 and its held-out loss jumped by up to 98 % between
#: evaluations (``docs/user_guide/damping.rst``, "Rejected updates"). A run of
#: rejections climbs more slowly, so the trainer allows 16 in a row
#: (:data:`skkfac.training.MAX_CONSECUTIVE_REJECTIONS`): 3^16 ≈ 4e7, about the 10^8 of
#: eight tenfold raises.
REJECTION_DAMPING_FACTOR = 3.0


def raise_after_rejection(damping: torch.Tensor) -> torch.Tensor:
    """The damping after a rejected step: :data:`REJECTION_DAMPING_FACTOR` times larger,
    at least 1e-4 and at most :data:`MAX_DAMPING`.

    Examples
    --------
    >>> import torch
    >>> from skkfac.curvature.control import raise_after_rejection
    >>> [round(float(raise_after_rejection(torch.tensor(d))), 6) for d in (0.1, 0.0, 1e8)]
    [0.3, 0.0001, 100000000.0]
    """
    return (damping * REJECTION_DAMPING_FACTOR).clamp(min=1e-4, max=MAX_DAMPING)


def kl_clipped(updates, gradients, lr: float, kl_clip: float) -> list[torch.Tensor]:
    """``updates`` scaled so that their Fisher norm ``lr² ΔᵀFΔ ≈ -lr² Σ ⟨Δ, ∇⟩`` (for
    natural-gradient directions ``Δ = -F⁻¹∇``) is at most ``kl_clip`` (Ba et al. 2017)."""
    fisher_norm = -sum((U * V).sum() for U, V in zip(updates, gradients)) * lr**2
    scale = torch.clamp(torch.sqrt(kl_clip / fisher_norm.clamp_min(1e-30)), max=1.0)
    return [U * scale for U in updates]
