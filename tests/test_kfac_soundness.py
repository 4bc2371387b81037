"""K-FAC's soundness against independent computations (issue 14's defects and checks)."""

import itertools
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from skkfac import KFAC, KFACClassifier, KFACRegressor
from skkfac.curvature.control import MAX_DAMPING, levenberg_marquardt
from skkfac.curvature.inverses import damped_inverse, precision_floor
from skkfac.losses import CrossEntropy, SquaredError
from skkfac.nn import build_mlp


@pytest.fixture(autouse=True)
def float64_by_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def mlp(*args, **kwargs):
    return build_mlp(*args, dtype=torch.get_default_dtype(), **kwargs)


def least_squares_data(n=256, n_in=4, n_out=2, offset=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, n_in, generator=g) + offset
    Y = X @ torch.randn(n_in, n_out, generator=g) + 0.3 * torch.randn(n, n_out, generator=g)
    return X, Y


def exact(model, **kw):
    params = dict(fisher="exact", lr=1.0, damping=1e-12, damping_scheme="eigen",
                  adapt_damping=False, kl_clip=None, curvature_batch_size=None,
                  random_state=0)
    params.update(kw)
    return KFAC(model, "squared_error", **params)


# -- 1. layers without bias ------------------------------------------------------------------
def test_biasless_layer_block_equals_explicit_fisher_and_step_solves_least_squares():
    X, Y = least_squares_data()
    layer = nn.Linear(4, 2, bias=False)
    opt = exact(layer)
    opt.accumulate(X, Y)
    A, G = opt.blocks[0].A_sum / len(X), opt.blocks[0].G_sum / len(X)
    # z = W x: ∂z/∂vec(W) = xᵀ ⊗ I, Hessian of mean_j (z_j - y_j)² is (2/d) I.
    fisher = sum(torch.kron(x[None], torch.eye(2)).T @ torch.kron(x[None], torch.eye(2))
                 for x in X) * (2 / 2) / len(X)
    torch.testing.assert_close(torch.kron(A, G), fisher)
    opt.step()
    solution = torch.linalg.lstsq(X, Y).solution.T  # no intercept
    torch.testing.assert_close(layer.weight.detach(), solution, atol=1e-8, rtol=1e-8)


def test_biasless_fast_jvp_matches_torch_func():
    X, Y = least_squares_data(n=9)
    model = nn.Sequential(nn.Linear(4, 5, bias=False), nn.Tanh(), nn.Linear(5, 3),
                          nn.ReLU(), nn.Linear(3, 2, bias=False))
    opt = exact(model, curvature_batch_size=6)
    opt.accumulate(X, Y)
    batch = opt.curvature.batch()
    g = torch.Generator().manual_seed(2)
    tangents = [[torch.randn(*block.G_sum.shape[:1], block.A_sum.shape[0], generator=g)
                 for block in opt.blocks] for _ in range(2)]
    assert [t.shape[1] for t in tangents[0]] == [4, 6, 3]
    fast = opt.quadratic.jacobian_products(batch, tangents)
    opt.quadratic.fast_jvp = False
    reference = opt.quadratic.jacobian_products(batch, tangents)
    for a, b in zip(fast, reference):
        torch.testing.assert_close(a, b)


# -- 2-4. the reduction ratio ------------------------------------------------------------------
@pytest.mark.parametrize("damping", [0.1, 1.0, 10.0])
def test_rho_is_one_on_an_exact_quadratic_at_any_damping(damping):
    X, Y = least_squares_data()
    opt = exact(nn.Linear(4, 2), damping=damping, damping_scheme="tikhonov",
                adapt_damping=True, damping_adapt_interval=1)
    for _ in range(3):
        opt.accumulate(X, Y)
        assert opt.step().fetch()["rho"] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_rho_is_one_with_a_curvature_subset_and_l2(alpha):
    """Predicted and actual changes come from the same 32 of 256 examples."""
    X, Y = least_squares_data()
    opt = exact(nn.Linear(4, 2), damping=1e-8, min_damping=1e-10, adapt_damping=True,
                damping_adapt_interval=1, curvature_batch_size=32, alpha=alpha,
                fisher="sampled")
    for _ in range(3):
        opt.accumulate(X, Y)
        report = opt.step().fetch()
        assert report["rho"] == pytest.approx(1.0, abs=1e-9)
    # the losses include the L2 penalty: check against a direct evaluation
    layer = opt.layers[0]
    with torch.no_grad():
        direct = ((layer(X[:32]) - Y[:32]).square().mean(1).mean()
                  + alpha / 2 * layer.weight.square().sum())
    assert report["loss_after"] == pytest.approx(float(direct), rel=1e-12)


class ScaledSquaredError(SquaredError):
    """A loss whose value is ``c`` times the squared error but whose gradient and
    curvature are the plain squared error's.

    On linear least squares the plain quadratic model is exact, so ``ρ = c`` exactly.
    """

    def __init__(self, c):
        self.c = c

    def per_example(self, output, target):
        plain = super().per_example(output, target)
        return plain + (self.c - 1.0) * plain.detach()


@pytest.mark.parametrize(("c", "direction"), [(4.0, "down"), (0.5, "same"), (0.1, "up")])
def test_damping_adaptation_moves_the_right_way_for_a_known_rho(c, direction):
    X, Y = least_squares_data()
    model = nn.Linear(4, 2)
    opt = KFAC(model, ScaledSquaredError(c), fisher="exact", damping=1.0, min_damping=1e-6,
               damping_adapt_interval=1, curvature_batch_size=None, random_state=0)
    opt.accumulate(X, Y)
    report = opt.step().fetch()
    assert report["rho"] == pytest.approx(c, rel=1e-9)
    omega = 19 / 20
    expected = {"down": omega, "same": 1.0, "up": 1 / omega}[direction]
    assert report["damping"] == pytest.approx(expected)


@pytest.mark.parametrize(("damping", "min_damping", "floor"),
                         [(0.1, 0.05, 0.05), (0.01, 0.05, 0.01)])
def test_damping_adaptation_stops_at_the_floor(damping, min_damping, floor):
    """ρ = 4 every update (the model is trusted): λ shrinks by 19/20 per update down to
    min(min_damping, initial damping), never below, and never up to it."""
    X, Y = least_squares_data()
    opt = KFAC(nn.Linear(4, 2), ScaledSquaredError(4.0), fisher="exact", damping=damping,
               min_damping=min_damping, damping_adapt_interval=1,
               curvature_batch_size=None, random_state=0)
    dampings = []
    for _ in range(20):
        opt.accumulate(X, Y)
        dampings.append(opt.step().fetch()["damping"])
    assert dampings[0] == pytest.approx(max(damping * 19 / 20, floor))
    assert all(later <= earlier for earlier, later in itertools.pairwise(dampings))
    assert dampings[-1] == pytest.approx(floor)


def test_levenberg_marquardt_bounds():
    d = torch.tensor(1e-8)
    assert float(levenberg_marquardt(d, torch.tensor(1.0), 0.5, 1e-8)) == 1e-8
    big = torch.tensor(MAX_DAMPING)
    assert float(levenberg_marquardt(big, torch.tensor(0.0), 0.5, 1e-8)) == MAX_DAMPING
    assert float(levenberg_marquardt(d, torch.tensor(float("nan")), 0.5, 1e-9)) == 1e-8


# -- 5. zero gradient ------------------------------------------------------------------------
def test_zero_gradient_step_keeps_weights_finite_and_damping_unchanged():
    model = mlp(3, (4,), 2, generator=torch.Generator().manual_seed(0))
    X = torch.randn(16, 3)
    with torch.no_grad():
        Y = model(X)  # a perfect fit: the gradient is exactly zero
    opt = KFAC(model, "squared_error", fisher="empirical", damping_adapt_interval=1,
               random_state=0)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        opt.accumulate(X, Y)
        report = opt.step().fetch()
    assert report["accepted"] and report["step_size"] == 0.0
    assert report["damping"] == pytest.approx(0.1)
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)


def test_batch_size_one_classifier_stays_finite():
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=60, n_features=5, n_informative=3, n_classes=3,
                               random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = KFACClassifier(hidden_layer_sizes=(8,), batch_size=1, max_iter=40,
                             random_state=0).fit(X, y)
    assert np.isfinite(clf.loss_curve_).all()
    assert np.isfinite(float(clf.solver_.damping))
    assert all(torch.isfinite(p).all() for p in clf.model_.parameters())


# -- 6. huge inputs --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("scheme", ["tikhonov", "eigen"])
def test_huge_inputs_give_a_finite_fit(dtype, scheme):
    from sklearn.datasets import make_regression

    X, y = make_regression(n_samples=200, n_features=4, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = KFACRegressor(hidden_layer_sizes=(8,), max_iter=5, random_state=0, dtype=dtype,
                            damping_scheme=scheme).fit(X * 1e20, y)
    assert np.isfinite(reg.predict(X * 1e20)).all()
    assert all(torch.isfinite(p).all() for p in reg.model_.parameters())


def test_damped_inverse_guards_non_finite_and_rank_deficient_factors():
    # float32, rank one, tiny shift: the factorisation needs the precision floor.
    v = torch.arange(1.0, 201.0, dtype=torch.float32)[:, None]
    low_rank = v @ v.T
    assert not bool(torch.linalg.cholesky_ex(low_rank + 1e-30 * torch.eye(200))[1] == 0)
    inverse = damped_inverse(low_rank, 1e-30)
    assert torch.isfinite(inverse).all()
    # float64 reference with the shift the float32 computation used
    shift = float(precision_floor(low_rank))
    reference = torch.linalg.inv(low_rank.double() + shift * torch.eye(200))
    error = (inverse.double() - reference).norm() / reference.norm()
    assert error < 0.05  # condition number ~1e6 in float32
    nan_factor = torch.full((3, 3), float("nan"))
    torch.testing.assert_close(damped_inverse(nan_factor, 0.5), torch.eye(3) / 0.5)
    inf_factor = torch.eye(3) * float("inf")
    assert torch.isfinite(damped_inverse(inf_factor, 0.5)).all()


# -- 7. curvature scale and the rejection rule -----------------------------------------------
def test_curvature_scale_is_measured_at_the_first_update_only():
    """It converts the relative damping once; the LM rule moves λ afterwards."""
    X, Y = least_squares_data(n=64)
    opt = KFAC(mlp(4, (5,), 2, generator=torch.Generator().manual_seed(0)),
               "squared_error", inv_update_freq=2, random_state=0)
    opt.accumulate(X, Y)
    A0 = [b.A_sum / 64 for b in opt.blocks]
    G0 = [b.G_sum / 64 for b in opt.blocks]
    opt.step()
    expected = np.mean([float(torch.trace(A) / len(A) * torch.trace(G) / len(G))
                        for A, G in zip(A0, G0)])
    assert float(opt.state[opt.params[0]]["curvature_scale"]) == pytest.approx(expected)
    for _ in range(4):  # the curvature changes by orders of magnitude: the scale does not
        opt.accumulate(X * 10.0, Y)
        opt.step()
    assert float(opt.state[opt.params[0]]["curvature_scale"]) == pytest.approx(expected)
    assert float(opt.absolute_damping) == pytest.approx(float(opt.damping) * expected)


def test_rejection_ignores_rounding_noise_of_a_loss_near_zero():
    torch.set_default_dtype(torch.float32)
    model = nn.Linear(2, 2)
    opt = KFAC(model, "cross_entropy", random_state=0)
    X = torch.tensor([[8.0, -8.0], [-8.0, 8.0]])
    y = torch.tensor([0, 1])
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    opt.accumulate(X, y)
    batch = opt.curvature.batch()
    before = opt.quadratic.batch_loss(batch)
    assert 0 < float(before) < 1e-6  # near zero: doubling it is noise
    nudge = [torch.tensor([[-0.05, 0.05, 0.0], [0.05, -0.05, 0.0]])]  # loss x ~2.2
    with torch.no_grad():
        accepted, after = opt._apply_checked(nudge, batch, before)
    assert float(after) > 2 * float(before)
    assert bool(accepted)
    wild = [torch.tensor([[-2.0, 2.0, 0.0], [2.0, -2.0, 0.0]])]
    saved = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        accepted, _ = opt._apply_checked(wild, batch, opt.quadratic.batch_loss(batch))
    assert not bool(accepted)
    for a, b in zip(saved, model.parameters()):
        assert torch.equal(a, b)


def test_nan_step_is_undone_exactly():
    X, Y = least_squares_data(n=16)
    model = mlp(4, (3,), 2, generator=torch.Generator().manual_seed(0))
    opt = KFAC(model, "squared_error", random_state=0)
    opt.accumulate(X, Y)
    saved = [p.detach().clone() for p in model.parameters()]
    steps = [torch.full((3, 5), float("nan")), torch.zeros(2, 4)]
    batch = opt.curvature.batch()
    with torch.no_grad():
        accepted, after = opt._apply_checked(steps, batch, opt.quadratic.batch_loss(batch))
    assert not bool(accepted) and not torch.isfinite(after)
    for a, b in zip(saved, model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("ratio, kept", [(2.0, False), (None, True), (1e6, True)])
def test_rejection_ratio_decides_whether_a_loss_increase_is_undone(ratio, kept):
    X, Y = least_squares_data(n=16)
    model = nn.Linear(4, 2)
    opt = KFAC(model, "squared_error", rejection_ratio=ratio, random_state=0)
    opt.accumulate(X, Y)
    batch = opt.curvature.batch()
    before = opt.quadratic.batch_loss(batch)
    saved = [p.detach().clone() for p in model.parameters()]
    steps = [torch.full((2, 5), -3.0)]  # the loss grows far more than tenfold, finitely
    with torch.no_grad():
        accepted, after = opt._apply_checked(steps, batch, before)
    assert torch.isfinite(after) and float(after) > 10 * float(before)
    assert bool(accepted) is kept
    moved = [not torch.equal(a, b) for a, b in zip(saved, model.parameters())]
    assert all(moved) if kept else not any(moved)


def test_without_rejection_ratio_a_non_finite_step_is_still_undone():
    X, Y = least_squares_data(n=16)
    model = nn.Linear(4, 2)
    opt = KFAC(model, "squared_error", rejection_ratio=None, random_state=0)
    opt.accumulate(X, Y)
    batch = opt.curvature.batch()
    saved = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        accepted, _ = opt._apply_checked([torch.full((2, 5), float("inf"))], batch,
                                         opt.quadratic.batch_loss(batch))
    assert not bool(accepted)
    for a, b in zip(saved, model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("ratio", [0.5, float("nan")])
def test_rejection_ratio_below_one_is_refused(ratio):
    with pytest.raises(ValueError, match="rejection_ratio"):
        KFAC(nn.Linear(2, 1), "squared_error", rejection_ratio=ratio)
    X, y = np.random.default_rng(0).normal(size=(20, 2)), np.arange(20.0)
    with pytest.raises(ValueError, match="rejection_ratio"):
        KFACRegressor(rejection_ratio=ratio, max_iter=1).fit(X, y)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_estimator_passes_rejection_ratio_to_its_solver():
    X = np.random.default_rng(0).normal(size=(40, 3))
    reg = KFACRegressor(hidden_layer_sizes=(4,), rejection_ratio=None, max_iter=2,
                        random_state=0).fit(X, X[:, 0])
    assert reg.solver_.hyper["rejection_ratio"] is None
    assert np.all(np.isfinite(reg.predict(X)))


# -- independent checks of the math ----------------------------------------------------------
@pytest.mark.parametrize("loss", [SquaredError(), CrossEntropy()])
def test_sampled_G_averages_to_the_exact_G(loss):
    """Monte Carlo G over many draws → the closed-form expectation, computed here with
    explicit Jacobians and Hessians (not the optimizer's 'exact' code)."""
    classes = isinstance(loss, CrossEntropy)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 3, generator=g)
    y = torch.randint(3, (20,), generator=g) if classes else torch.randn(20, 3, generator=g)
    model = mlp(3, (4,), 3, generator=torch.Generator().manual_seed(1))
    last = model[2]
    expected = torch.zeros(3, 3)
    for x in X:
        z = model(x[None])[0].detach()
        # the last layer's pre-activation is the output: G = E_x[H_z]
        expected += torch.autograd.functional.hessian(
            lambda out: loss.per_example(out[None], torch.zeros(1, 3) if not classes
                                         else torch.zeros(1, dtype=torch.long)).sum(), z)
    expected /= len(X)
    draws = 300
    total = torch.zeros(3, 3)
    for seed in range(draws):
        opt = KFAC(model, loss, fisher="sampled", random_state=seed)
        opt.accumulate(X, y)
        total += opt.blocks[1].G_sum / len(X)
        opt.discard()
    error = (total / draws - expected).norm() / expected.norm()
    assert error < 0.05
    assert last.weight.shape == (3, 4)


def test_kl_clip_bounds_the_kronecker_fisher_norm_of_the_update():
    X, Y = least_squares_data(n=64)
    model = mlp(4, (5,), 2, generator=torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in model.parameters()]
    kappa, damping = 1e-4, 1e-2
    opt = KFAC(model, "squared_error", fisher="exact", damping_scheme="eigen", lr=5.0,
               damping=damping, adapt_damping=False, adaptive_step=False, kl_clip=kappa,
               momentum=0.0, random_state=0)
    opt.accumulate(X, Y)
    opt.step()
    absolute = float(opt.absolute_damping)
    norm = 0.0
    for i, block in enumerate(opt.blocks):
        dW = model[2 * i].weight.detach() - before[2 * i]
        db = model[2 * i].bias.detach() - before[2 * i + 1]
        delta = torch.cat([dW, db[:, None]], 1).T.reshape(-1)  # vec stacks columns
        F = torch.kron(block.A, block.G) + absolute * torch.eye(len(delta))
        norm += float(delta @ F @ delta)
    assert norm == pytest.approx(kappa, rel=1e-6)


def test_max_norm_scheme_trains_with_steps_bounded_by_lr():
    X, Y = least_squares_data(n=128, offset=0.0)
    model = mlp(4, (8,), 2, generator=torch.Generator().manual_seed(0))
    opt = KFAC(model, "squared_error", damping_scheme="max_norm", damping=1e-3,
               adaptive_step=False, lr=0.05, momentum=0.0, random_state=0)
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for k in range(40):
        losses.append(float(opt.accumulate(X, Y)) / len(X))
        opt.step()
        if k == 0:
            for i in range(2):
                change = torch.cat([(model[2 * i].weight - before[2 * i]),
                                    (model[2 * i].bias - before[2 * i + 1])[:, None]], 1)
                assert float(change.abs().max()) == pytest.approx(0.05)
    assert losses[-1] < 0.5 * losses[0]


def test_adaptive_step_with_a_curvature_subset_uses_its_fisher_and_the_full_gradient():
    """α, μ from explicit Jacobians: F on the first 5 of 12 rows, ∇ on all 12."""
    X, Y = least_squares_data(n=12, n_in=3, offset=0.5)
    model = mlp(3, (4,), 2, generator=torch.Generator().manual_seed(0))
    opt = KFAC(model, "squared_error", fisher="exact", damping=0.05, curvature_batch_size=5,
               adapt_damping=False, random_state=0)
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    shapes = [p.shape for p in model.parameters()]

    def output_of(theta, rows):
        tensors, offset = [], 0
        for shape in shapes:
            size = int(np.prod(shape))
            tensors.append(theta[offset:offset + size].reshape(shape))
            offset += size
        h = torch.tanh(rows @ tensors[0].T + tensors[1])
        return h @ tensors[2].T + tensors[3]

    def loss_of(theta, rows, targets):
        return (output_of(theta, rows) - targets).square().mean()

    captured = {}
    original = opt._take_step

    def spy(k, decay, directions, gradients):
        captured["directions"] = [d.clone() for d in directions]
        captured["damping"] = float(opt.damping * opt.state[opt.params[0]]["curvature_scale"])
        return original(k, decay, directions, gradients)

    opt._take_step = spy
    for part in (slice(0, 3), slice(3, 12)):  # the subset spans two micro-batches
        opt.accumulate(X[part], Y[part])
    report = opt.step().fetch()

    def flat(per_layer):
        return torch.cat([torch.cat([m[:, :-1].reshape(-1), m[:, -1]]) for m in per_layer])

    J = torch.autograd.functional.jacobian(lambda t: output_of(t, X[:5]), theta0)
    F = torch.einsum("ndp,ndq->pq", J, J) * (2 / 2) / 5
    grad = torch.autograd.functional.jacobian(lambda t: loss_of(t, X, Y), theta0)
    d = flat(captured["directions"])
    alpha = -(grad @ d) / (d @ F @ d + captured["damping"] * d @ d)
    assert report["step_size"] == pytest.approx(float(alpha), rel=1e-8)
    assert report["momentum"] == 0.0  # no previous step yet


def test_a_predicted_increase_on_the_curvature_rows_leaves_the_damping_alone():
    """The step is chosen with the whole batch's gradient; on the curvature rows alone the
    model may predict an increase. That is mini-batch noise, not evidence against the
    damping: ρ is NaN and Levenberg–Marquardt keeps λ (a ρ of -inf used to raise it)."""
    from skkfac.curvature.control import levenberg_marquardt, reduction_ratio

    rho = reduction_ratio(torch.tensor(0.3), torch.tensor(0.2))
    assert torch.isnan(rho)
    damping = torch.tensor(0.1)
    assert float(levenberg_marquardt(damping, rho, 0.77, 1e-8)) == pytest.approx(0.1)
    assert float(reduction_ratio(torch.tensor(-0.1), torch.tensor(-0.2))) == pytest.approx(0.5)
