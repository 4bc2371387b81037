"""K-FAC against exact computations on small cases (explicit expectations and Kroneckers).

The tests run on the CPU; tests/test_cuda.py runs them again on a GPU by overriding the
``exact_device`` fixture. Tensors are created on the default device (set by the autouse
fixture), and random data and networks are drawn on the CPU and then moved, so that
both runs see the same numbers.
"""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from skkfac import KFAC, KFACRegressor
from skkfac.curvature import DAMPING_SCHEMES, stat_decay
from skkfac.curvature.control import REJECTION_DAMPING_FACTOR
from skkfac.losses import CrossEntropy, SquaredError
from skkfac.nn import build_mlp


@pytest.fixture
def exact_device():
    """The device the tests run on."""
    return torch.device("cpu")


@pytest.fixture(autouse=True)
def float64_by_default(exact_device):
    """Exact comparisons in double precision, without leaking into other test modules."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    with exact_device:
        yield
    torch.set_default_dtype(previous)


def randn(*shape, seed):
    """Normal draws made on the CPU (the same on every device), on the default device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, device="cpu").to(torch.get_default_device())


def small_net(n_in=3, hidden=(4,), n_out=2, seed=0):
    return build_mlp(n_in, hidden, n_out, "tanh", generator=torch.Generator().manual_seed(seed),
                     dtype=torch.float64, device=torch.get_default_device())


def data(n=7, n_in=3, n_out=2, classes=False, seed=1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, n_in, generator=g, device="cpu")
    y = (torch.randint(n_out, (n,), generator=g, device="cpu") if classes
         else torch.randn(n, n_out, generator=g, device="cpu"))
    return X.to(torch.get_default_device()), y.to(torch.get_default_device())


def per_example_preactivation_grads(model, loss, X, targets):
    """g_i for every example and layer, one example at a time (the definition)."""
    layers = [m for m in model if isinstance(m, nn.Linear)]
    result = [[] for _ in layers]
    for x, t in zip(X, targets):
        outs = []
        hooks = [layer.register_forward_hook(lambda m, a, o, outs=outs: outs.append(o))
                 for layer in layers]
        z = model(x[None])
        for h in hooks:
            h.remove()
        grads = torch.autograd.grad(loss.per_example(z, t[None]).sum(), outs)
        for i, g in enumerate(grads):
            result[i].append(g[0])
    return [torch.stack(r) for r in result]


def layer_inputs(model, X):
    layers = [m for m in model if isinstance(m, nn.Linear)]
    ins = []
    hooks = [layer.register_forward_hook(lambda m, a, o: ins.append(a[0])) for layer in layers]
    model(X)
    for h in hooks:
        h.remove()
    return [torch.cat([a, torch.ones(len(a), 1)], 1).detach() for a in ins]


def plain(model, loss, **kw):
    params = dict(lr=1.0, damping=1e-3, adapt_damping=False, adaptive_step=False, kl_clip=None,
                  momentum=0.0)
    params.update(kw)
    return KFAC(model, loss, **params)


@pytest.mark.parametrize("loss_name", ["squared_error", "cross_entropy"])
def test_factors_equal_explicit_expectations_empirical_and_sampled(loss_name):
    loss = SquaredError() if loss_name == "squared_error" else CrossEntropy()
    X, y = data(classes=loss_name == "cross_entropy")
    for fisher in ("empirical", "sampled"):
        model = small_net()
        opt = plain(model, loss_name, fisher=fisher, random_state=3)
        with torch.no_grad():
            output = model(X)
        if fisher == "sampled":
            # KFAC draws from a generator on the model's device seeded with random_state.
            generator = torch.Generator(torch.get_default_device()).manual_seed(3)
            targets = loss.sample_targets(output, generator)
        else:
            targets = y
        opt.accumulate(X, y)
        gs = per_example_preactivation_grads(model, loss, X, targets)
        for block, a_bar, g in zip(opt.blocks, layer_inputs(model, X), gs):
            torch.testing.assert_close(block.A_sum / len(X), a_bar.T @ a_bar / len(X))
            torch.testing.assert_close(block.G_sum / len(X), g.T @ g / len(X))


@pytest.mark.parametrize("loss", [SquaredError(), CrossEntropy()])
def test_exact_fisher_factor_is_expectation_over_model_distribution(loss):
    """G (fisher='exact') = mean_k J_kᵀ H_k J_k with J_k = ∂z/∂s_i, H_k the loss Hessian."""
    classes = isinstance(loss, CrossEntropy)
    X, y = data(n=5, n_out=3, classes=classes)
    model = small_net(n_out=3)
    opt = plain(model, loss, fisher="exact")
    opt.accumulate(X, y)
    layers = [m for m in model if isinstance(m, nn.Linear)]
    for i, layer in enumerate(layers):
        expected = torch.zeros(layer.out_features, layer.out_features)
        for x, t in zip(X, y):
            def z_of_s(s, x=x, i=i):
                h = x[None]
                for module in model:
                    h = s if module is layers[i] else module(h)
                return h[0]
            with torch.no_grad():
                s0 = layers[i](layer_inputs(model, x[None])[i][:, :-1])
            J = torch.autograd.functional.jacobian(z_of_s, s0)[:, 0, :]
            H = torch.autograd.functional.hessian(
                lambda z, t=t: loss.per_example(z[None], t[None]).sum(), model(x[None])[0].detach())
            expected += J.T @ H @ J
        torch.testing.assert_close(opt.blocks[i].G_sum / len(X), expected / len(X))


@pytest.mark.parametrize("scheme", ["eigen", "tikhonov"])
def test_update_equals_explicit_kronecker_inverse(scheme):
    X, y = data()
    model = small_net()
    before = copy.deepcopy(model)
    damping, lr = 0.05, 0.7
    opt = plain(model, "squared_error", fisher="exact", damping_scheme=scheme,
                damping=damping, lr=lr)
    opt.accumulate(X, y)
    grads = [torch.cat([layer.weight.grad, layer.bias.grad[:, None]], 1) / len(X)
             for layer in opt.layers]
    A_list = [b.A_sum / len(X) for b in opt.blocks]
    G_list = [b.G_sum / len(X) for b in opt.blocks]
    opt.step()
    damping = damping * sum(torch.trace(A) / len(A) * torch.trace(G) / len(G)
                            for A, G in zip(A_list, G_list)) / len(A_list)  # relative → absolute
    assert float(opt.absolute_damping) == pytest.approx(float(damping))
    for l_old, l_new, V, A, G in zip([m for m in before if isinstance(m, nn.Linear)], opt.layers,
                                     grads, A_list, G_list):
        if scheme == "eigen":
            F = torch.kron(A, G) + damping * torch.eye(A.shape[0] * G.shape[0])
        else:
            pi = torch.sqrt((torch.trace(A) / A.shape[0]) / (torch.trace(G) / G.shape[0]))
            F = torch.kron(A + pi * damping**0.5 * torch.eye(len(A)),
                           G + damping**0.5 / pi * torch.eye(len(G)))
        vec_update = torch.linalg.solve(F, V.T.reshape(-1))  # vec stacks columns
        update = vec_update.reshape(V.shape[1], V.shape[0]).T
        change = torch.cat([l_new.weight - l_old.weight, (l_new.bias - l_old.bias)[:, None]], 1)
        torch.testing.assert_close(change.detach(), -lr * update)


def test_linear_layer_kfac_block_equals_true_fisher():
    X, y = data(n=6, n_in=3, n_out=2)
    model = build_mlp(3, (), 2, dtype=torch.float64, device=torch.get_default_device())
    opt = plain(model, "squared_error", fisher="exact")
    opt.accumulate(X, y)
    A = opt.blocks[0].A_sum / len(X)
    G = opt.blocks[0].G_sum / len(X)
    # True Fisher of N(z, (d/2) I): mean_k J_kᵀ (2/d) J_k with J_k = ∂z/∂vec([W, b]).
    fisher = torch.zeros(8, 8)
    for x in X:
        a_bar = torch.cat([x, torch.ones(1)])
        J = torch.kron(a_bar[None], torch.eye(2))  # z = [W b] ā → ∂z/∂vec = āᵀ ⊗ I
        fisher += J.T @ (2 / 2 * torch.eye(2)) @ J
    torch.testing.assert_close(torch.kron(A, G), fisher / len(X))


@pytest.mark.parametrize("n_outputs", [1, 3])
def test_one_undamped_full_batch_step_solves_least_squares(n_outputs):
    rng = np.random.RandomState(0)
    X = rng.randn(40, 4)
    y = X @ rng.randn(4, n_outputs) + 0.5 + 0.1 * rng.randn(40, n_outputs)
    y = y.ravel() if n_outputs == 1 else y
    reg = KFACRegressor(hidden_layer_sizes=(), solver="kfac", learning_rate_init=1.0,
                        alpha=0.0, damping=1e-12, damping_scheme="eigen", adapt_damping=False,
                        kl_clip=None, fisher="exact", batch_size=40, max_iter=1,
                        dtype="float64", random_state=0,
                        device=str(torch.get_default_device()))
    with pytest.warns(Warning):  # ConvergenceWarning: max_iter reached
        reg.fit(X, y)
    X1 = np.hstack([X, np.ones((40, 1))])
    solution, *_ = np.linalg.lstsq(X1, y.reshape(40, -1), rcond=None)
    layer = reg.model_[0]
    np.testing.assert_allclose(layer.weight.detach().cpu().numpy(), solution[:-1].T, atol=1e-8)
    np.testing.assert_allclose(layer.bias.detach().cpu().numpy(), solution[-1], atol=1e-8)


@pytest.mark.parametrize("fisher", ["exact", "empirical", "sampled"])
def test_artificial_batch_equals_concatenated_batch(fisher):
    X, y = data(n=9)
    noise = randn(9, 2, seed=5)

    def run(splits):
        model = small_net()
        opt = plain(model, "squared_error", fisher=fisher, lr=0.5, damping_scheme="eigen")
        rows = iter(range(9))

        def fixed_samples(output, generator=None):  # same sampled targets for the same rows
            index = torch.tensor([next(rows) for _ in range(len(output))])
            return output.detach() + noise[index]

        opt.loss.sample_targets = fixed_samples
        for _ in range(2):  # two updates so running averages and momentum take part
            rows = iter(range(9))
            for part in splits:
                opt.accumulate(X[part], y[part])
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    whole = run([slice(0, 9)])
    parts = run([slice(0, 4), slice(4, 7), slice(7, 9)])
    for a, b in zip(whole, parts):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("scheme", ["tikhonov", "max_norm"])
def test_low_rank_preconditioning_equals_the_full_product(scheme, monkeypatch):
    """G⁻¹ (Σ gᵢ āᵢᵀ/m) A⁻¹ computed as (G⁻¹ Gbᵀ)(Ab A⁻¹)/m, for a batch narrower than
    the layers, equals the full product: on one block, and over updates of a network
    fed micro-batches (an artificial batch) against the concatenated batch without it."""
    a, grads = randn(50, 9, seed=3), randn(50, 7, seed=4)
    inverse = DAMPING_SCHEMES[scheme](a.T @ a / 50, grads.T @ grads / 50, 0.01)
    left, right = randn(7, 4, seed=5), randn(4, 9, seed=6)
    torch.testing.assert_close(inverse.apply_outer(left, right), inverse.apply(left @ right))

    calls = []
    original = DAMPING_SCHEMES[scheme].apply_outer
    monkeypatch.setattr(DAMPING_SCHEMES[scheme], "apply_outer",
                        lambda self, *args: calls.append(1) or original(self, *args))
    X, y = data(n=9, n_in=12, n_out=12)

    def run(splits, low_rank):
        model = small_net(n_in=12, hidden=(40,), n_out=12)
        opt = KFAC(model, "squared_error", fisher="exact", damping_scheme=scheme,
                   damping_adapt_interval=2, random_state=0)
        if not low_rank:
            opt.curvature.low_rank_rows = [0] * len(opt.layers)
        for _ in range(4):
            for part in splits:
                opt.accumulate(X[part], y[part])
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    full = run([slice(0, 9)], low_rank=False)
    assert not calls
    low_rank = run([slice(0, 4), slice(4, 9)], low_rank=True)
    assert len(calls) == 4 * 2  # both layers, every update
    for p, q in zip(full, low_rank):
        torch.testing.assert_close(p, q)


def test_running_average_schedules():
    assert stat_decay("linear", 1, 0.5, 0.6) == pytest.approx(0.025)
    assert stat_decay("linear", 10, 0.5, 0.6) == pytest.approx(0.25)
    assert stat_decay("linear", 100, 0.5, 0.6) == pytest.approx(0.6)
    assert stat_decay("martens", 1, 0.0, 0.95) == 0.0
    assert stat_decay("martens", 4, 0.0, 0.95) == pytest.approx(0.75)
    assert stat_decay("martens", 1000, 0.0, 0.95) == pytest.approx(0.95)
    with pytest.raises(ValueError):
        stat_decay("linear", 0, 1.0, 0.5)


def test_running_average_of_factors_follows_the_schedule():
    X, y = data(n=6)
    model = small_net()
    opt = plain(model, "squared_error", fisher="exact", momentum_rate=2.0, momentum_max=0.9)
    opt.accumulate(X[:3], y[:3])
    A1 = opt.blocks[0].A_sum / 3
    opt.step()
    torch.testing.assert_close(opt.blocks[0].A, A1)  # first update: the batch itself
    opt.accumulate(X[3:], y[3:])
    A2 = opt.blocks[0].A_sum / 3
    opt.step()
    alpha = 0.05 * 2 * 2.0
    torch.testing.assert_close(opt.blocks[0].A, alpha * A1 + (1 - alpha) * A2)


def test_inverses_are_refreshed_every_inv_update_freq_updates():
    X, y = data(n=8)
    # The exact Fisher: no sampling, so no update is rejected by chance (a rejection
    # refreshes the inverses too, and with sampled targets it depended on the global RNG).
    opt = plain(small_net(), "squared_error", inv_update_freq=3, lr=0.05, fisher="exact")
    refreshed = []
    original = opt._refresh_inverses
    opt._refresh_inverses = lambda: (refreshed.append(opt.state[opt.params[0]]["step"]),
                                     original())
    for _ in range(7):
        opt.accumulate(X, y)
        opt.step()
    assert refreshed == [1, 4, 7]


def test_rejected_update_restores_weights_and_raises_damping():
    X, y = data(n=8)
    model = small_net()
    opt = plain(model, "squared_error", damping=0.01, lr=0.1)
    opt.accumulate(X, y)
    opt.backup()
    saved = [p.detach().clone() for p in model.parameters()]
    assert opt.step().fetch()["accepted"]  # a modest step passes the same-batch check
    assert not all(torch.equal(a, b) for a, b in zip(saved, model.parameters()))
    assert opt.is_rejected(float("nan")) and not opt.is_rejected(1.5)
    opt.restore()
    for a, b in zip(saved, model.parameters()):
        torch.testing.assert_close(a, b.detach())
    assert float(opt.damping) == pytest.approx(0.01 * REJECTION_DAMPING_FACTOR)
    assert all("momentum_buffer" not in opt.state[layer.weight] for layer in opt.layers)


def test_curvature_subsample_uses_only_the_first_rows():
    X, y = data(n=10)
    full = plain(small_net(), "squared_error", fisher="exact")
    sub = plain(small_net(), "squared_error", fisher="exact", curvature_batch_size=4)
    full.accumulate(X[:4], y[:4])
    sub.accumulate(X, y)
    for a, b in zip(full.blocks, sub.blocks):
        torch.testing.assert_close(a.A_sum, b.A_sum)
        torch.testing.assert_close(a.G_sum, b.G_sum)
    assert sub.n_accumulated == 10 and sub.curvature.n_examples == 4
    split = plain(small_net(), "squared_error", fisher="exact", curvature_batch_size=4)
    for part in (slice(0, 3), slice(3, 6), slice(6, 10)):  # rows 0-3 span two micro-batches
        split.accumulate(X[part], y[part])
    for a, b in zip(full.blocks, split.blocks):
        torch.testing.assert_close(a.A_sum, b.A_sum)
        torch.testing.assert_close(a.G_sum, b.G_sum)
    torch.testing.assert_close(split.curvature.batch()[0], X[:4])


def test_state_dict_round_trip_and_pickle():
    import pickle

    X, y = data(n=8)
    opt = plain(small_net(), "squared_error")
    opt.accumulate(X, y)
    opt.step()
    state = opt.state_dict()
    assert state["state"][0]["step"] == 1
    assert "step" not in state["param_groups"][0]
    clone = pickle.loads(pickle.dumps(opt))
    clone.accumulate(X, y)
    clone.step()
    assert clone.state[clone.params[0]]["step"] == 2


def test_adaptive_step_minimises_the_exact_quadratic_model():
    """α, μ solve the 2 × 2 system of the Gauss–Newton model built from explicit Jacobians."""
    X, y = data(n=5)
    model = small_net()
    damping = 0.01
    opt = plain(model, "squared_error", damping=damping, adaptive_step=True, random_state=0)
    captured = {}
    original = opt._take_step

    def spy(k, decay, directions, gradients):
        captured.update(directions=[d.clone() for d in directions],
                        gradients=[g.clone() for g in gradients],
                        previous=[opt._layer_state(i, "previous_step").clone()
                                  for i in range(len(opt.layers))],
                        params=[p.detach().clone() for p in model.parameters()],
                        damping=opt.damping * opt.state[opt.params[0]]["curvature_scale"])
        return original(k, decay, directions, gradients)

    opt._take_step = spy
    for _ in range(2):
        opt.accumulate(X, y)
        report = opt.step()

    def flat(per_layer):  # [W | b] blocks → the order of model.parameters()
        return torch.cat([torch.cat([m[:, :-1].reshape(-1), m[:, -1]]) for m in per_layer])

    shapes = [p.shape for p in model.parameters()]

    def output_of(theta):
        tensors, offset = [], 0
        for shape in shapes:
            size = int(torch.tensor(shape).prod())
            tensors.append(theta[offset:offset + size].reshape(shape))
            offset += size
        h = X
        for i in range(len(opt.layers)):
            h = h @ tensors[2 * i].T + tensors[2 * i + 1]
            if i < len(opt.layers) - 1:
                h = torch.tanh(h)
        return h

    theta = torch.cat([p.reshape(-1) for p in captured["params"]])
    J = torch.autograd.functional.jacobian(output_of, theta)  # (n, d, P)
    d = J.shape[1]
    F = torch.einsum("ndp,ndq->pq", J, J) * (2 / d) / len(X)
    C = torch.stack([flat(captured["directions"]), flat(captured["previous"])], 1)
    M = C.T @ (F + captured["damping"] * torch.eye(len(F))) @ C
    b = C.T @ flat(captured["gradients"])
    expected = torch.linalg.solve(M, -b)
    low, high = KFAC.MOMENTUM_BOUNDS
    if not low <= expected[1] <= high:  # the best step with the momentum on its bound
        momentum = expected[1].clamp(low, high)
        expected = torch.stack([-(b[0] + M[0, 1] * momentum) / M[0, 0], momentum])
    torch.testing.assert_close(torch.stack([report.step_size, report.momentum]), expected)


def test_adaptive_step_is_newton_on_least_squares():
    """One linear layer, exact Fisher: the K-FAC direction is Newton's, and α = 1."""
    X, y = data(n=20, n_in=3, n_out=2)
    model = build_mlp(3, (), 2, dtype=torch.float64, device=torch.get_default_device())
    opt = plain(model, "squared_error", fisher="exact", damping=1e-12, adaptive_step=True,
                damping_scheme="eigen")
    opt.accumulate(X, y)
    assert opt.step().fetch()["step_size"] == pytest.approx(1.0, rel=1e-6)
    X1 = torch.cat([X, torch.ones(20, 1)], 1)
    solution = torch.linalg.lstsq(X1, y).solution
    torch.testing.assert_close(model[0].weight.detach(), solution[:-1].T)


@pytest.mark.parametrize("activation", ["tanh", "relu", "logistic", "identity"])
def test_fast_jvp_from_recorded_inputs_matches_torch_func(activation):
    from torch.func import functional_call, jvp

    from skkfac.nn import linear_jvp

    model = build_mlp(3, (5, 4), 2, activation, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(0),
                      device=torch.get_default_device())
    X, _ = data(n=6)
    inputs = [m_input[:, :-1] for m_input in layer_inputs(model, X)]
    layers = [m for m in model if isinstance(m, nn.Linear)]
    tangents = [[randn(layer.out_features, layer.in_features + 1, seed=1 + 10 * k + i)
                 for i, layer in enumerate(layers)] for k in range(2)]
    fast = linear_jvp(model, inputs, model(X).detach(), tangents)
    names = [name for name, _ in model.named_parameters()]
    for tangent, product in zip(tangents, fast):
        flat = [part for t in tangent for part in (t[:, :-1], t[:, -1])]
        _, reference = jvp(lambda *p: functional_call(model, dict(zip(names, p)), (X,)),
                           tuple(model.parameters()), tuple(flat))
        torch.testing.assert_close(product, reference)


def test_step_that_increases_the_loss_on_its_own_batch_is_undone():
    X, y = data(n=8)
    model = small_net()
    opt = plain(model, "squared_error", lr=1e4, damping=1e-6)  # a wild step
    opt.accumulate(X, y)
    saved = [p.detach().clone() for p in model.parameters()]
    report = opt.step().fetch()
    assert not report["accepted"] and report["loss_after"] > 2 * report["loss_before"]
    for a, b in zip(saved, model.parameters()):
        assert torch.equal(a, b.detach())
    assert float(opt.damping) == pytest.approx(1e-4)  # max(10 λ, 1e-4)
    sane = plain(small_net(), "squared_error", adaptive_step=True)
    sane.accumulate(X, y)
    assert sane.step().fetch()["accepted"]
