"""The fully connected networks that skkfac trains."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "logistic": nn.Sigmoid,
    "identity": nn.Identity,
}


def build_mlp(
    n_inputs: int,
    hidden_layer_sizes: tuple[int, ...],
    n_outputs: int,
    activation: str = "tanh",
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> nn.Sequential:
    """A ``Linear → activation → … → Linear`` network with biases and Glorot init.

    Weights are drawn from ``U(-r, r)`` with ``r = sqrt(6 / (fan_in + fan_out))``
    (Xavier/Glorot uniform, the study's eq. 56); biases start at zero. The output layer
    has no activation: the loss owns the link function (softmax for classification).

    Parameters
    ----------
    n_inputs, n_outputs : int
        Width of the input and of the output layer.
    hidden_layer_sizes : tuple of int
        Width of each hidden layer; ``()`` gives a single linear (affine) layer.
    activation : {'tanh', 'relu', 'logistic', 'identity'}
        Applied after every hidden layer.
    generator : torch.Generator, optional
        Source of randomness for the initialisation (CPU generator).
    dtype, device
        Floating dtype and device of the parameters.

    Examples
    --------
    >>> net = build_mlp(4, (8,), 2)
    >>> [type(m).__name__ for m in net]
    ['Linear', 'Tanh', 'Linear']
    """
    widths = [n_inputs, *hidden_layer_sizes, n_outputs]
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        linear = nn.Linear(fan_in, fan_out, bias=True)
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        with torch.no_grad():
            weight = torch.rand(fan_out, fan_in, generator=generator, dtype=torch.float64)
            linear.weight.copy_(weight.mul_(2 * bound).sub_(bound))
            linear.bias.zero_()
        layers.append(linear)
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers).to(device=device, dtype=dtype)


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The ``nn.Linear`` modules of ``model`` in registration (forward) order."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)]
