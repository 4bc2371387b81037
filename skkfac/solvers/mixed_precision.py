"""The precision of the training passes: the solvers' ``precision`` hyperparameter.

``'float32'`` trains in the network's own dtype (float32, or float64 for a float64
network), as skkfac always did. ``'bf16-mixed'`` runs the forward pass of every training
micro-batch under ``torch.autocast(dtype=torch.bfloat16)``, so its matrix products (and
those of the backward pass, which follow the forward's dtypes) use the bfloat16 units of
recent CPUs and GPUs, while the weights, their gradients, the optimizer state and the loss
stay float32: the network's output is cast to float32 before the loss. K-FAC keeps its
curvature in float32 and judges every step (the quadratic model, ``ρ``, the rejection
test) on a full-precision forward pass of the curvature rows
(:meth:`skkfac.curvature.quadratic.GaussNewtonModel.in_full_precision`).

``'auto'`` resolves to ``'bf16-mixed'`` for a float32 network on a device with bfloat16
matrix units (:func:`skkfac.curvature.precision.has_bfloat16_matmul`), where it was
measured to reach an equal or better held-out loss in equal time for every solver (MNIST
autoencoder and CIFAR-10, ``docs/user_guide/gpus.rst``), else to ``'float32'``.
The default stays ``'float32'``: bfloat16's 8 significant bits in the activations change
the arithmetic, not only its speed, so the choice is the user's. Prediction and
evaluation never run under autocast.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from sklearn.utils._param_validation import StrOptions, validate_parameter_constraints

from skkfac.curvature.precision import has_bfloat16_matmul
from skkfac.solvers.spec import Hyperparameter

#: The values of ``precision``.
TRAINING_PRECISIONS = ("float32", "bf16-mixed", "auto")

#: Declared by every solver (same name, default and constraints), hence one estimator
#: parameter.
PRECISION = Hyperparameter(
    "precision", "float32", [StrOptions(set(TRAINING_PRECISIONS))],
    "Precision of the training forward and backward passes. ``'float32'``: the "
    "network's own dtype. ``'bf16-mixed'``: under ``torch.autocast`` in bfloat16 "
    "(faster matrix products on CPUs and GPUs with bfloat16 units), with float32 "
    "weights, gradients and loss; K-FAC's curvature stays float32 and its steps are "
    "judged in full precision. Needs ``dtype='float32'``. ``'auto'``: bf16-mixed for a "
    "float32 network on hardware with bfloat16 matrix units, else float32. Prediction "
    "always runs in the network's dtype.",
    solver_doc="Precision of :meth:`accumulate`'s forward and backward passes. "
    "``'float32'``: the network's own dtype (float64 for a float64 network). "
    "``'bf16-mixed'``: the forward pass runs under ``torch.autocast`` with bfloat16 "
    "(and the backward pass in the dtypes it chose), the weights and their gradients "
    "stay float32 (master weights) and the loss is computed in float32 from the output "
    "cast to float32; a network whose weights are not float32 is refused. K-FAC "
    "accumulates its statistics in float32 and judges each step (quadratic model, "
    "``ρ``, rejection test) on a full-precision pass over the curvature rows. "
    "``'auto'``: ``'bf16-mixed'`` for float32 weights on a device with bfloat16 matrix "
    "units (where it measured no worse at equal time: ``docs/user_guide/gpus.rst``, "
    "\"Mixed precision\"), else ``'float32'``.")


def resolve_precision(precision: str, weight_dtype: torch.dtype, caller: str,
                      device: torch.device | None = None) -> str:
    """``precision`` checked and resolved: ``'float32'`` or ``'bf16-mixed'``.

    Parameters
    ----------
    precision : {'float32', 'bf16-mixed', 'auto'}
    weight_dtype : torch.dtype
        The dtype of the network's weights (bf16-mixed needs float32 master weights).
    caller : str
        The solver's name, for the error messages.
    device : torch.device or None
        Where the network trains (``'auto'``: bf16-mixed only where it has bfloat16
        matrix units; ``None``: the CPU).

    Examples
    --------
    >>> import torch
    >>> from skkfac.solvers.mixed_precision import resolve_precision
    >>> resolve_precision("auto", torch.float64, "KFAC")  # a float64 network
    'float32'
    >>> resolve_precision("bf16-mixed", torch.float64, "KFAC")
    Traceback (most recent call last):
    ...
    ValueError: precision='bf16-mixed' needs float32 weights ...
    """
    validate_parameter_constraints({"precision": PRECISION.constraints},
                                   {"precision": precision}, caller_name=caller)
    if precision == "auto":
        device = torch.device("cpu") if device is None else torch.device(device)
        fast = weight_dtype == torch.float32 and has_bfloat16_matmul(device)
        return "bf16-mixed" if fast else "float32"
    if precision == "bf16-mixed" and weight_dtype != torch.float32:
        # autocast leaves float64 tensors alone: the request would silently do nothing.
        raise ValueError(
            f"precision='bf16-mixed' needs float32 weights (the float32 master copy of "
            f"mixed precision), but the network is {str(weight_dtype).removeprefix('torch.')}"
            ": use dtype='float32', or precision='float32' to train in the network's "
            "own precision.")
    return precision


def training_autocast(precision: str, device: torch.device):
    """The context of a training forward pass in the resolved ``precision``."""
    if precision == "bf16-mixed":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()
