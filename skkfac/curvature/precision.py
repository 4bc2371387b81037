"""Full-precision arithmetic for the curvature, whatever the global matmul settings.

K-FAC's factors, inverses, preconditioning and quadratic model compare quantities that
differ by a few units in the last place of float16/bfloat16 or TF32 (a step's predicted
and actual loss changes), so they run in true float32 (or float64) even when the user
has enabled TF32 (``torch.set_float32_matmul_precision('high')``) or runs the forward
pass under ``torch.autocast``. The forward/backward pass that gives the gradient is left
to the user's settings; when it was not made in full precision (autocast, the
solvers' ``precision='bf16-mixed'``, reduced-precision matmuls: see
:func:`reduced_precision_active`), K-FAC evaluates the curvature rows again in full
precision before it judges a step, so that ``ρ`` and the rejection test compare
full-precision quantities only.

One exception: ``KFAC(precondition_precision=...)`` may multiply the gradients with the
factor inverses (the largest fixed cost of an update) in bfloat16, by default where the
hardware has bfloat16 matrix units and the curvature is float32
(:func:`preconditioning_dtype`). That only changes *which* direction is proposed, by a
few per cent; the quadratic model, ``ρ`` and the rejection test still evaluate the
direction actually taken in full precision, so the step is judged exactly as before.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import torch


def factor_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the curvature for parameters of ``dtype``: float32 at least.

    Examples
    --------
    >>> import torch
    >>> from skkfac.curvature.precision import factor_dtype
    >>> factor_dtype(torch.bfloat16), factor_dtype(torch.float64)
    (torch.float32, torch.float64)
    """
    return torch.promote_types(dtype, torch.float32)


@contextmanager
def full_precision(device: torch.device):
    """Disable TF32/reduced-precision matmuls and autocast inside the block.

    Parameters
    ----------
    device : torch.device
        The device whose autocast is switched off.
    """
    previous = torch.get_float32_matmul_precision()
    if previous != "highest":
        torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        if previous != "highest":
            torch.set_float32_matmul_precision(previous)


def reduced_precision_active(device: torch.device) -> bool:
    """Whether a float32 forward pass on ``device`` may now run in reduced precision:
    under ``torch.autocast``, or with float32 matrix products allowed below full
    precision (``torch.set_float32_matmul_precision('high')``: TF32 on GPUs;
    ``'medium'``: bfloat16 too, on CPUs that have it).

    Examples
    --------
    >>> import torch
    >>> from skkfac.curvature.precision import reduced_precision_active
    >>> cpu = torch.device("cpu")
    >>> with full_precision(cpu):
    ...     reduced_precision_active(cpu)
    False
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     reduced_precision_active(cpu)
    True
    """
    return (torch.is_autocast_enabled(device.type)
            or torch.get_float32_matmul_precision() != "highest")


#: ``precondition_precision`` values (see :func:`preconditioning_dtype`).
PRECONDITION_PRECISIONS = ("auto", "full", "bfloat16")


def preconditioning_dtype(precision: str, curvature_dtype: torch.dtype,
                          device: torch.device) -> torch.dtype:
    """The dtype of K-FAC's products of the gradients with the factor inverses.

    ``'full'``: ``curvature_dtype``; ``'bfloat16'``: bfloat16; ``'auto'``: bfloat16 for a
    float32 curvature on a device with bfloat16 matrix units (:func:`has_bfloat16_matmul`),
    where the products are faster (``docs/user_guide/kfac.rst``); else ``curvature_dtype``
    (a float64 network asks for precision, and emulated bfloat16 is slower than float32).

    Examples
    --------
    >>> import torch
    >>> from skkfac.curvature.precision import preconditioning_dtype
    >>> preconditioning_dtype("auto", torch.float64, torch.device("cpu"))
    torch.float64
    >>> preconditioning_dtype("bfloat16", torch.float64, torch.device("cpu"))
    torch.bfloat16
    """
    if precision not in PRECONDITION_PRECISIONS:
        raise ValueError(f"precondition_precision must be one of {PRECONDITION_PRECISIONS}, "
                         f"got {precision!r}.")
    if precision == "bfloat16" or (precision == "auto" and curvature_dtype == torch.float32
                                   and has_bfloat16_matmul(device)):
        return torch.bfloat16
    return curvature_dtype


@functools.cache
def has_bfloat16_matmul(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively: a CUDA GPU of compute
    capability 8.0 or more (tensor cores), or a CPU with AVX512-BF16 or AMX instructions
    (as PyTorch detects them)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False
