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
            weight = torch.rand(fan_out, fan_in, generator=generator, dtype=torch.float64,
                                device=None if generator is None else generator.device)
            linear.weight.copy_(weight.mul_(2 * bound).sub_(bound))
            linear.bias.zero_()
        layers.append(linear)
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers).to(device=device, dtype=dtype)


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The ``nn.Linear`` modules of ``model`` in registration (forward) order."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _activation_derivative(module: nn.Module, pre: torch.Tensor, post: torch.Tensor):
    """Derivative of an elementwise activation at ``pre`` (``post`` = its output)."""
    if isinstance(module, nn.Tanh):
        return 1.0 - post * post
    if isinstance(module, nn.Sigmoid):
        return post * (1.0 - post)
    if isinstance(module, nn.ReLU):
        return (pre > 0).to(pre.dtype)
    return None


def supports_fast_jvp(model: nn.Module) -> bool:
    """Whether :func:`sequential_jvp` handles ``model`` (a plain MLP from :func:`build_mlp`)."""
    return isinstance(model, nn.Sequential) and all(
        isinstance(m, (nn.Linear, nn.Identity, nn.Tanh, nn.Sigmoid, nn.ReLU)) for m in model)


@torch.no_grad()
def sequential_jvp(model: nn.Sequential, X: torch.Tensor, tangent_sets):
    """Output of an MLP and its Jacobian-vector products for several parameter tangents.

    Forward-mode differentiation written out for ``Linear``/elementwise-activation
    stacks: the primal pass runs once and all tangents travel together as one batch,
    about half the cost of separate ``torch.func.jvp`` calls.

    Parameters
    ----------
    model : nn.Sequential
        Must satisfy :func:`supports_fast_jvp`.
    X : Tensor of shape (n, n_inputs)
    tangent_sets : list of lists of Tensor
        Per tangent, one ``[dW, db]`` matrix (``out × (in + 1)``) per Linear layer.

    Returns
    -------
    output : Tensor of shape (n, n_outputs)
    products : Tensor of shape (len(tangent_sets), n, n_outputs)
    """
    n_tangents = len(tangent_sets)
    a, da = X, None
    linear_index = 0
    for module in model:
        if isinstance(module, nn.Linear):
            dW = torch.stack([t[linear_index] for t in tangent_sets])  # (T, out, in + 1)
            s = module(a)
            ds = torch.matmul(a, dW[:, :, :-1].transpose(1, 2)) + dW[:, None, :, -1]
            if da is not None:
                ds += (da.reshape(-1, da.shape[-1]) @ module.weight.T).reshape(ds.shape)
            a, da = s, ds
            linear_index += 1
        elif isinstance(module, nn.Identity):
            continue
        else:
            post = module(a)
            da = da * _activation_derivative(module, a, post)
            a = post
    if da is None:  # pragma: no cover - a model without Linear layers is rejected earlier
        da = torch.zeros(n_tangents, *a.shape, dtype=a.dtype, device=a.device)
    return a, da
