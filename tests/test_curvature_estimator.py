"""K-FAC's curvature estimate on its own (skkfac.curvature.estimator), against explicit
Fishers and dense inverses, without the optimizer around it."""

import pytest
import torch
from torch import nn

from skkfac.curvature.estimator import CurvatureEstimator
from skkfac.curvature.reductions import Reductions
from skkfac.distributed import Communicator
from skkfac.losses import get_loss


def estimator(layers, loss="squared_error", **settings):
    options = dict(fisher="exact", damping_scheme="eigen", inv_update_freq=1,
                   curvature_batch_size=None, precondition_precision="full")
    options.update(settings)
    return CurvatureEstimator(layers, get_loss(loss), options, alpha=0.0,
                              reductions=Reductions(Communicator(None)), seed=0)


def observe(curvature, model, X, y):
    """One micro-batch's statistics, as the optimizer's ``accumulate`` adds them."""
    with curvature.capture() as (inputs, outputs):
        output = model(X)
    curvature.add_statistics(X, y, output, inputs, outputs)
    return output, list(inputs), list(outputs)


def linear_data(n=50, n_in=3, n_out=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, n_in, generator=g, dtype=torch.float64) + 1.0
    y = torch.randn(n, n_out, generator=g, dtype=torch.float64)
    return X, y


def linear_layer(n_in=3, n_out=2, seed=1):
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out, dtype=torch.float64)


def explicit_fisher(layer, X):
    """``mean_n J_nᵀ H J_n`` for ``z = [W b] ā`` under the squared error (``H = 2/d I``),
    in the column-major order of ``[W b]`` (K-FAC's ``A ⊗ G``)."""
    n_out, n_a = layer.out_features, layer.in_features + 1
    theta = torch.cat([layer.weight, layer.bias[:, None]], 1).detach().T.reshape(-1)
    a = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)

    def outputs(theta):
        return a @ theta.reshape(n_a, n_out)

    J = torch.autograd.functional.jacobian(outputs, theta)  # (n, d, P)
    return torch.einsum("ndp,ndq->pq", J, J) * (2.0 / n_out) / len(X)


def test_block_of_a_linear_gaussian_layer_is_its_exact_fisher():
    X, y = linear_data()
    layer = linear_layer()
    curvature = estimator([layer])
    observe(curvature, layer, X, y)
    assert curvature.n_examples == len(X)
    states = [{}]
    curvature.update_factors(0.0, states)
    block = curvature.blocks[0]
    assert states[0]["A"] is block.A and states[0]["G"] is block.G
    torch.testing.assert_close(torch.kron(block.A, block.G), explicit_fisher(layer, X))


def test_directions_are_the_dense_damped_inverse_applied_to_the_gradient():
    X, y = linear_data()
    layer = linear_layer()
    curvature = estimator([layer])
    observe(curvature, layer, X, y)
    states = [{}]
    curvature.update_factors(0.0, states)
    damping = torch.tensor(0.3, dtype=torch.float64)
    curvature.refresh_inverses(damping, states)
    assert set(states[0]["inverse"]) == set(curvature.blocks[0].inverse.tensors())
    V = torch.randn(2, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (direction,) = curvature.precondition([V], len(X))
    fisher = explicit_fisher(layer, X)
    expected = -torch.linalg.solve(fisher + damping * torch.eye(len(fisher)), V.T.reshape(-1))
    torch.testing.assert_close(direction, expected.reshape(4, 2).T)


def test_low_rank_directions_equal_the_full_product():
    """Micro-batches narrower than the layer: ``G⁻¹ (Σ gᵢ āᵢᵀ / m) A⁻¹`` from the kept rows."""
    X, y = linear_data(n=6, n_in=12, n_out=10)
    layer = linear_layer(12, 10)
    curvature = estimator([layer], damping_scheme="tikhonov", fisher="empirical")
    loss = get_loss("squared_error")
    for part in (slice(0, 4), slice(4, 6)):
        assert curvature.keep_gradient_rows(part.stop)
        output, inputs, outputs = observe(curvature, layer, X[part], y[part])
        curvature.watch_gradients(inputs, outputs)
        loss.per_example(output, y[part]).sum().backward()
    states = [{}]
    curvature.update_factors(0.0, states)
    curvature.refresh_inverses(torch.tensor(0.1, dtype=torch.float64), states)
    V = torch.cat([layer.weight.grad, layer.bias.grad[:, None]], 1) / 6
    assert curvature._gradient_outer_factors(6)[0] is not None  # the low-rank route
    (low_rank,) = curvature.precondition([V], 6)
    curvature.gradient_rows = None
    (full,) = curvature.precondition([V], 6)
    torch.testing.assert_close(low_rank, full)


def test_rows_beyond_the_curvature_batch_are_not_kept():
    X, y = linear_data(n=10)
    layer = linear_layer()
    curvature = estimator([layer], curvature_batch_size=4)
    taken = []
    for part in (slice(0, 3), slice(3, 6), slice(6, 10)):
        n = curvature.rows_wanted(part.stop - part.start)
        taken.append(n)
        if n:
            rows = slice(part.start, part.start + n)
            observe(curvature, layer, X[rows], y[rows])
    assert taken == [3, 1, 0] and curvature.n_examples == 4
    torch.testing.assert_close(curvature.batch().X, X[:4])
    curvature.reset()
    assert curvature.n_examples == 0 and not curvature.rows


def test_restore_from_recorded_state_gives_the_same_directions():
    X, y = linear_data()
    layer = linear_layer()
    curvature = estimator([layer], damping_scheme="tikhonov")
    observe(curvature, layer, X, y)
    states = [{}]
    curvature.update_factors(0.0, states)
    curvature.refresh_inverses(torch.tensor(0.2, dtype=torch.float64), states)
    fresh = estimator([layer], damping_scheme="tikhonov")
    fresh.restore(states, curvature.generator.get_state())
    V = torch.randn(2, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(fresh.precondition([V], 1)[0], curvature.precondition([V], 1)[0])
    assert torch.equal(torch.rand(3, generator=fresh.generator),
                       torch.rand(3, generator=curvature.generator))


@pytest.mark.parametrize("scheme", ["tikhonov", "max_norm"])
def test_curvature_scale_is_the_mean_average_eigenvalue(scheme):
    X, y = linear_data()
    model = nn.Sequential(linear_layer(3, 5), nn.Tanh(), linear_layer(5, 2))
    curvature = estimator([model[0], model[2]], damping_scheme=scheme)
    observe(curvature, model, X, y)
    curvature.update_factors(0.0, [{}, {}])
    fallback = torch.tensor(7.0, dtype=torch.float64)
    expected = torch.stack([torch.trace(b.A) / len(b.A) * torch.trace(b.G) / len(b.G)
                            for b in curvature.blocks]).mean()
    scale = curvature.scale(fallback)
    assert float(scale) == pytest.approx(1.0 if scheme == "max_norm" else float(expected))
