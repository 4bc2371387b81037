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


def _derivative_from_output(module: nn.Module, post: torch.Tensor) -> torch.Tensor:
    """Derivative of an elementwise activation written with its *output* ``post``."""
    if isinstance(module, nn.Tanh):
        return 1.0 - post * post
    if isinstance(module, nn.Sigmoid):
        return post * (1.0 - post)
    return (post > 0).to(post.dtype)  # ReLU: post > 0 exactly where pre > 0


_ELEMENTWISE = (nn.Tanh, nn.Sigmoid, nn.ReLU)


def supports_fast_jvp(model: nn.Module) -> bool:
    """Whether :func:`linear_jvp` handles ``model``.

    That is an ``nn.Sequential`` of distinct ``Linear`` layers separated by at most one
    ``Tanh``/``Sigmoid``/``ReLU`` each (``Identity`` anywhere), as :func:`build_mlp`
    makes: every activation's derivative is then a function of the next layer's input
    (or of the output), which the optimizer has already recorded.
    """
    if not isinstance(model, nn.Sequential):
        return False
    modules = [m for m in model if not isinstance(m, nn.Identity)]
    if not all(isinstance(m, (nn.Linear, *_ELEMENTWISE)) for m in modules):
        return False
    linears = [m for m in modules if isinstance(m, nn.Linear)]
    if not linears or len({id(m) for m in linears}) != len(linears):
        return False
    return not any(isinstance(a, _ELEMENTWISE) and isinstance(b, _ELEMENTWISE)
                   for a, b in itertools.pairwise(modules))


@torch.no_grad()
def linear_jvp(model: nn.Sequential, inputs, output: torch.Tensor, tangent_sets, *,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """Jacobian-vector products of an MLP's output, from the inputs its layers recorded.

    Forward-mode differentiation written out for ``Linear``/elementwise-activation
    stacks, without a primal pass: the layers' inputs of the forward pass already made
    hold everything needed (an activation's derivative is a function of its output,
    which is the next layer's input). All tangents travel together as one batch.

    Parameters
    ----------
    model : nn.Sequential
        Must satisfy :func:`supports_fast_jvp`.
    inputs : list of Tensor of shape (n, in_features)
        The input of every ``Linear`` layer, in order, for the same ``n`` examples.
    output : Tensor of shape (n, n_outputs)
        The network's output on them (used when an activation follows the last layer).
    tangent_sets : list of lists of Tensor
        Per tangent, one ``[dW, db]`` matrix (``out × (in + 1)``, or ``out × in`` for a
        layer without bias) per Linear layer.
    dtype : torch.dtype, optional
        Precision of the computation (default: the inputs').

    Returns
    -------
    Tensor of shape (len(tangent_sets), n, n_outputs)
    """
    dtype = dtype or inputs[0].dtype
    da = None
    index = 0
    for module in model:
        if isinstance(module, nn.Linear):
            a = inputs[index].to(dtype)
            n_in = module.in_features
            # One product per tangent on views of its [dW, db] (stacking the tangents
            # would copy every weight-sized matrix), then one GEMM for all of them.
            ds = torch.stack([a @ t[index][:, :n_in].to(dtype).T for t in tangent_sets])
            if module.bias is not None:
                ds += torch.stack([t[index][:, n_in].to(dtype) for t in tangent_sets])[:, None]
            if da is not None:
                n_tangents, n_rows, _ = da.shape
                ds.view(n_tangents * n_rows, -1).addmm_(
                    da.reshape(n_tangents * n_rows, -1), module.weight.to(dtype).T)
            da = ds
            index += 1
        elif isinstance(module, _ELEMENTWISE) and da is not None:
            post = inputs[index] if index < len(inputs) else output
            da = da * _derivative_from_output(module, post.to(dtype))
    return da


@torch.no_grad()
def forward_in(model: nn.Module, X: torch.Tensor, dtype: torch.dtype, *,
               inputs: list | None = None) -> torch.Tensor:
    """``model(X)`` computed in ``dtype`` (a low-precision MLP evaluated in float32).

    Models that :func:`supports_fast_jvp` are evaluated layer by layer with their
    weights cast to ``dtype``; any other model runs as it is and its output is cast.
    ``inputs``: a list that receives each ``Linear`` layer's input, for a model that
    :func:`supports_fast_jvp` only.
    """
    if inputs is None and (not supports_fast_jvp(model)
                           or all(p.dtype == dtype for p in model.parameters())):
        return model(X).to(dtype)
    h = X.to(dtype)
    for module in model:
        if isinstance(module, nn.Linear):
            if inputs is not None:
                inputs.append(h)
            bias = None if module.bias is None else module.bias.to(dtype)
            h = torch.nn.functional.linear(h, module.weight.to(dtype), bias)
        else:
            h = module(h)
    return h
