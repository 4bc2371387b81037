"""Full-precision arithmetic for the curvature, whatever the global matmul settings.

K-FAC's factors, inverses, preconditioning and quadratic model compare quantities that
differ by a few units in the last place of float16/bfloat16 or TF32 (a step's predicted
and actual loss changes), so they run in true float32 (or float64) even when the user
has enabled TF32 (``torch.set_float32_matmul_precision('high')``) or runs the forward
pass under ``torch.autocast``. The forward/backward pass that gives the gradient is left
to the user's settings.
"""

from __future__ import annotations

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
