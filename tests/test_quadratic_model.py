"""The exact quadratic model on the curvature rows (skkfac.curvature.quadratic) against an
explicit Gauss–Newton computation from full Jacobians."""

import pytest
import torch

from skkfac.curvature.quadratic import CurvatureRows, GaussNewtonModel, concatenate_rows
from skkfac.curvature.reductions import Reductions
from skkfac.distributed import Communicator
from skkfac.losses import get_loss
from skkfac.nn import build_mlp, linear_layers

N_ROWS = 7


def problem(loss_name, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = build_mlp(3, (5,), 4, generator=g, dtype=torch.float64)
    with torch.no_grad():  # non-zero biases, so that they matter
        for layer in linear_layers(model):
            layer.bias.copy_(0.3 * torch.randn(layer.out_features, generator=g,
                                               dtype=torch.float64))
    X = torch.randn(N_ROWS, 3, generator=g, dtype=torch.float64)
    if loss_name == "cross_entropy":
        y = torch.randint(0, 4, (N_ROWS,), generator=g)
    else:
        y = torch.randn(N_ROWS, 4, generator=g, dtype=torch.float64)
    return model, X, y


def recorded_rows(model, X, y) -> CurvatureRows:
    """The rows with each Linear layer's input, as the optimizer records them."""
    inputs = []
    handles = [layer.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
               for layer in linear_layers(model)]
    with torch.no_grad():
        output = model(X)
    for handle in handles:
        handle.remove()
    return CurvatureRows(X, y, inputs, output)


def tangents(model, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(layer.out_features, layer.in_features + 1, generator=g,
                        dtype=torch.float64) for layer in linear_layers(model)]


def flat(per_layer):
    """``[W | b]`` per layer → one vector in the order of ``model.parameters()``."""
    return torch.cat([torch.cat([m[:, :-1].reshape(-1), m[:, -1]]) for m in per_layer])


def weights_only(per_layer):
    return flat([torch.cat([m[:, :-1], torch.zeros_like(m[:, -1:])], 1) for m in per_layer])


def explicit(model, loss_name, X, y):
    """Jacobian ``J`` (n, d, P), output-space Hessians ``H`` (n, d, d) and the gradient
    of the mean loss, in the order of ``model.parameters()``."""
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    names = [name for name, _ in model.named_parameters()]

    def output_of(theta):
        values, offset = {}, 0
        for name, shape in zip(names, shapes):
            size = shape.numel()
            values[name] = theta[offset:offset + size].reshape(shape)
            offset += size
        return torch.func.functional_call(model, values, (X,))

    J = torch.autograd.functional.jacobian(output_of, theta)
    output = output_of(theta)
    d = output.shape[1]
    if loss_name == "cross_entropy":
        p = torch.softmax(output, 1)
        H = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    else:
        H = torch.eye(d, dtype=theta.dtype).expand(len(X), d, d) * (2.0 / d)
    loss = get_loss(loss_name)
    gradient = torch.autograd.functional.jacobian(
        lambda t: loss.per_example(output_of(t), y).mean(), theta)
    return J, H, gradient


@pytest.mark.parametrize("fast_jvp", [True, False])
@pytest.mark.parametrize("alpha", [0.0, 0.1])
@pytest.mark.parametrize("loss_name", ["squared_error", "cross_entropy"])
def test_quadratic_model_is_the_explicit_gauss_newton_model(loss_name, alpha, fast_jvp):
    model, X, y = problem(loss_name)
    layers = linear_layers(model)
    quadratic = GaussNewtonModel(model, layers, get_loss(loss_name), alpha=alpha,
                                 dtype=torch.float64,
                                 reductions=Reductions(Communicator(None)))
    quadratic.fast_jvp = fast_jvp
    candidates = [tangents(model, 1), tangents(model, 2)]
    gradients = tangents(model, 3)  # the whole batch's gradient: any per-layer tensors
    rows = recorded_rows(model, X, y)
    got = quadratic.in_span(candidates, gradients, rows)

    J, H, gradient = explicit(model, loss_name, X, y)
    F = torch.einsum("ndp,nde,neq->pq", J, H, J) / len(X)
    C = torch.stack([flat(c) for c in candidates], 1)
    W = torch.stack([weights_only(c) for c in candidates], 1)
    weights = weights_only([torch.cat([layer.weight, layer.bias[:, None]], 1).detach()
                            for layer in layers])
    torch.testing.assert_close(got.fisher, C.T @ F @ C + alpha * W.T @ W)
    torch.testing.assert_close(got.identity, C.T @ C)
    torch.testing.assert_close(got.linear, C.T @ flat(gradients))
    torch.testing.assert_close(got.linear_curvature, C.T @ gradient + alpha * W.T @ weights)
    loss = get_loss(loss_name).per_example(rows.output, y).mean()
    torch.testing.assert_close(got.loss, loss + 0.5 * alpha * weights.square().sum())


def test_batch_loss_is_measured_at_the_current_weights_when_fresh():
    model, X, y = problem("squared_error")
    layers = linear_layers(model)
    quadratic = GaussNewtonModel(model, layers, get_loss("squared_error"), alpha=0.5,
                                 dtype=torch.float64,
                                 reductions=Reductions(Communicator(None)))
    rows = recorded_rows(model, X, y)

    def direct():
        return float((model(X) - y).square().mean(1).mean()
                     + 0.25 * sum(layer.weight.square().sum() for layer in layers))

    with torch.no_grad():
        assert float(quadratic.batch_loss(rows)) == pytest.approx(direct())
        layers[0].weight.mul_(2.0)
        assert float(quadratic.batch_loss(rows, fresh=True)) == pytest.approx(direct())


def test_rows_of_several_micro_batches_concatenate_in_order():
    model, X, y = problem("cross_entropy")
    parts = [recorded_rows(model, X[rows], y[rows]) for rows in (slice(0, 3), slice(3, 7))]
    whole = concatenate_rows(parts)
    reference = recorded_rows(model, X, y)
    assert torch.equal(whole.X, X) and torch.equal(whole.y, y)
    torch.testing.assert_close(whole.output, reference.output)
    for got, expected in zip(whole.inputs, reference.inputs):
        torch.testing.assert_close(got, expected)
    assert concatenate_rows(parts[:1]) is parts[0]
