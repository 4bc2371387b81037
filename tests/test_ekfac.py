"""EKFAC (damping_scheme='ekfac') against brute-force per-example computations."""

import copy
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, hessian, jacrev, vmap

from skkfac import KFAC, KFACClassifier, KFACRegressor
from skkfac.curvature import EigenvalueCorrectedTikhonov
from skkfac.losses import get_loss
from skkfac.nn import build_mlp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` lives at the root
from test_kfac_exact import exact_device, float64_by_default  # noqa: F401  (fixtures)


@pytest.fixture(autouse=True)
def keep_global_rng():
    """Leave torch's global generator as found: later modules draw unseeded from it."""
    with torch.random.fork_rng():
        yield


def network(activation="tanh", hidden=(5, 4), n_in=3, n_out=2, seed=0):
    return build_mlp(n_in, hidden, n_out, activation, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(seed))


def batch(loss_name, n=9, n_in=3, n_out=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, n_in, generator=g) + 0.5  # offset inputs: the bias column matters
    if loss_name == "cross_entropy":
        return X, torch.randint(n_out, (n,), generator=g)
    return X, torch.randn(n, n_out, generator=g)


def plain(model, loss, **kw):
    """Fixed step, no momentum, no adaptation: the update is ``-lr ·`` the preconditioned
    gradient and nothing else."""
    params = dict(lr=0.1, damping=0.1, damping_scheme="ekfac", adapt_damping=False,
                  adaptive_step=False, momentum=0.0, random_state=0)
    params.update(kw)
    return KFAC(model, loss, **params)


def fixed_targets(opt, targets):
    """Make the 'sampled' Fisher use known targets (drawn by the test, not the solver)."""
    def sample(output, generator=None):
        return targets[:len(output)]
    opt.loss.sample_targets = sample


def per_example_layer_gradients(model, loss_name, X, targets):
    """Per layer, ``[∇W_n, ∇b_n]`` of every example's own loss (torch.func, no hooks)."""
    loss = get_loss(loss_name)
    params = {name: p.detach() for name, p in model.named_parameters()}

    def example_loss(p, x, t):
        return loss.per_example(functional_call(model, p, (x[None],)), t[None]).sum()

    grads = vmap(grad(example_loss), in_dims=(None, 0, 0))(params, X, targets)
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return [torch.cat([grads[f"{name}.weight"], grads[f"{name}.bias"][:, :, None]], 2)
            for name in linear]


def per_example_fisher(model, loss_name, X):
    """Per layer and example, the exact Fisher block ``J_nᵀ H_n J_n`` over ``vec([W, b])``."""
    loss = get_loss(loss_name)
    params = {name: p.detach() for name, p in model.named_parameters()}
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    blocks = [[] for _ in linear]
    for x in X:
        jac = jacrev(lambda p, x=x: functional_call(model, p, (x[None],))[0])(params)
        output = model(x[None])[0].detach()
        target = loss.sample_targets(output[None])  # the Hessian does not depend on it
        H = hessian(lambda z, t=target: loss.per_example(z[None], t).sum())(output)
        for i, name in enumerate(linear):
            J = torch.cat([jac[f"{name}.weight"], jac[f"{name}.bias"][:, :, None]], 2)
            J = J.transpose(1, 2).reshape(len(output), -1)  # vec stacks columns
            blocks[i].append(J.T @ H @ J)
    return [torch.stack(b) for b in blocks]


def unvec(v, n_out):
    """Inverse of the column-stacking ``vec`` of an ``n_out``-row matrix."""
    return v.reshape(-1, n_out).T


def basis(inverse):
    return torch.kron(inverse.Qa, inverse.Qg)  # vec(Qg X Qaᵀ) = (Qa ⊗ Qg) vec(X)


@pytest.mark.parametrize("loss_name", ["squared_error", "cross_entropy"])
@pytest.mark.parametrize("fisher", ["empirical", "sampled"])
def test_scaling_is_mean_squared_per_example_gradient_in_the_eigenbasis(loss_name, fisher):
    X, y = batch(loss_name)
    model = network()
    before = copy.deepcopy(model)
    opt = plain(model, loss_name, fisher=fisher)
    targets = y
    if fisher == "sampled":
        with torch.no_grad():
            targets = get_loss(loss_name).sample_targets(
                model(X), generator=torch.Generator().manual_seed(7))
        fixed_targets(opt, targets)
    opt.accumulate(X, y)
    opt.step()
    for block, grads in zip(opt.blocks, per_example_layer_gradients(before, loss_name, X,
                                                                     targets)):
        Qa, Qg = block.inverse.Qa, block.inverse.Qg
        expected = (Qg.T @ grads @ Qa).square().mean(dim=0)
        torch.testing.assert_close(block.inverse.scaling, expected)
        assert block.inverse.estimated


@pytest.mark.parametrize("loss_name", ["squared_error", "cross_entropy"])
def test_exact_fisher_scaling_is_the_fisher_diagonal_in_the_eigenbasis(loss_name):
    """fisher='exact': s = diag(Qᵀ F Q) with F the layer's exact Fisher block."""
    X, y = batch(loss_name, n_out=3)
    model = network(n_out=3)
    before = copy.deepcopy(model)
    opt = plain(model, loss_name, fisher="exact")
    opt.accumulate(X, y)
    opt.step()
    for block, F in zip(opt.blocks, per_example_fisher(before, loss_name, X)):
        Q = basis(block.inverse)
        diagonal = torch.diagonal(Q.T @ F.mean(dim=0) @ Q)
        torch.testing.assert_close(block.inverse.scaling,
                                   unvec(diagonal, block.inverse.Qg.shape[0]))


@pytest.mark.parametrize("inv_update_freq", [1, 10])
def test_scaling_is_a_running_average_carried_into_each_new_basis(inv_update_freq):
    """s_2 = decay · diag(Q₂ᵀ Q₁ diag(s₁) Q₁ᵀ Q₂) + (1 - decay) · s_batch₂ (explicit)."""
    X, y = batch("squared_error", n=12)
    model = network()
    opt = plain(model, "squared_error", fisher="empirical", inv_update_freq=inv_update_freq,
                momentum_rate=3.0)
    opt.accumulate(X[:6], y[:6])
    opt.step()
    built = [block.inverse for block in opt.blocks]
    first = copy.deepcopy(built)  # set_scaling writes into the inverse's own tensor
    second_model = copy.deepcopy(model)
    opt.accumulate(X[6:], y[6:])
    assert opt.step().accepted  # (a rejection would refresh the basis early)
    decay = 0.05 * 2 * 3.0
    grads = per_example_layer_gradients(second_model, "squared_error", X[6:], y[6:])
    for block, old, original, g in zip(opt.blocks, first, built, grads):
        new = block.inverse
        assert (new is not original) == (inv_update_freq == 1)
        Q_old, Q_new = basis(old), basis(new)
        previous = Q_old @ torch.diag(old.scaling.T.reshape(-1)) @ Q_old.T
        carried = unvec(torch.diagonal(Q_new.T @ previous @ Q_new), new.Qg.shape[0])
        fresh = (new.Qg.T @ g @ new.Qa).square().mean(dim=0)
        torch.testing.assert_close(new.scaling, decay * carried + (1 - decay) * fresh)


def test_update_solves_with_the_explicit_eigenvalue_corrected_matrix():
    """The step is -lr (Q diag(s + λ) Qᵀ)⁻¹ vec(∇W̄), Q = Q_A ⊗ Q_G from torch.kron."""
    X, y = batch("cross_entropy", n=16)
    model = network()
    opt = plain(model, "cross_entropy", inv_update_freq=2, lr=0.3)
    for part in (slice(0, 8), slice(8, 16)):  # the second update reuses the first basis
        opt.accumulate(X[part], y[part])
        opt.step()
    opt.accumulate(X, y)
    before = copy.deepcopy(model)
    gradients = [torch.cat([layer.weight.grad, layer.bias.grad[:, None]], 1) / len(X)
                 for layer in opt.layers]
    opt.step()  # third update: new basis, carried-over and re-estimated scaling
    damping = opt.absolute_damping
    for old, new, block, V in zip([m for m in before if isinstance(m, nn.Linear)],
                                  opt.layers, opt.blocks, gradients):
        inverse = block.inverse
        torch.testing.assert_close(inverse.damping, damping)
        Q = basis(inverse)
        M = Q @ torch.diag(inverse.scaling.T.reshape(-1) + damping) @ Q.T
        expected = unvec(torch.linalg.solve(M, V.T.reshape(-1)), V.shape[0])
        torch.testing.assert_close(inverse.apply(V), expected)
        change = torch.cat([new.weight - old.weight, (new.bias - old.bias)[:, None]], 1)
        torch.testing.assert_close(change.detach(), -0.3 * expected)


def one_step(activation, scheme, X, y):
    model = network(activation)
    opt = plain(model, "squared_error", fisher="exact", damping_scheme=scheme)
    opt.accumulate(X, y)
    assert opt.step().accepted  # the weights did move
    return opt, [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("activation, factorises", [("identity", True), ("tanh", False)])
def test_equals_eigen_damping_when_the_scaling_factorises(activation, factorises):
    """Deep *linear* net, squared error, exact Fisher: g_c does not depend on the example,
    so E[(Q_Gᵀg)²(Q_Aᵀā)²] = γ aᵀ (eigenvalues of G and A) and EKFAC is K-FAC's eigen
    damping. A tanh net breaks it in the hidden layers (not in the output layer, whose g_c
    are the Hessian's constant columns), and there the two must differ."""
    X, y = batch("squared_error", n=10)
    ekfac, ekfac_weights = one_step(activation, "ekfac", X, y)
    _, eigen_weights = one_step(activation, "eigen", X, y)
    same_weights = all(torch.allclose(a, b) for a, b in zip(ekfac_weights, eigen_weights))
    assert same_weights == factorises
    for i, block in enumerate(ekfac.blocks):
        Qa, Qg = block.inverse.Qa, block.inverse.Qg
        products = torch.outer((Qg.T @ block.G @ Qg).diagonal(), (Qa.T @ block.A @ Qa).diagonal())
        torch.testing.assert_close(products.sum(), torch.trace(block.G) * torch.trace(block.A))
        output_layer = i == len(ekfac.blocks) - 1
        assert torch.allclose(block.inverse.scaling, products, atol=1e-12) == (
            factorises or output_layer)


def test_bias_free_rows_use_the_factor_width():
    """A layer without bias: ā = a (no 1 appended) when A has the input width."""
    g = torch.Generator().manual_seed(0)
    layer = nn.Linear(3, 2, bias=False)
    X = torch.randn(20, 3, generator=g) + 2.0
    y = torch.randn(20, 2, generator=g)

    def example_loss(w, x, t):
        return ((x @ w.T - t) ** 2).sum()

    grads = vmap(grad(example_loss), in_dims=(None, 0, 0))(layer.weight.detach(), X, y)
    out_grads = 2 * (X @ layer.weight.detach().T - y)  # ∂loss/∂z per example
    A, G = X.T @ X / 20, out_grads.T @ out_grads / 20
    inverse = EigenvalueCorrectedTikhonov(A, G, damping=0.0)
    scaling = inverse.scaling_sum(X, [out_grads]) / 20
    torch.testing.assert_close(scaling, (inverse.Qg.T @ grads @ inverse.Qa).square().mean(0))


class TwoRanks:
    """Two data-parallel "processes" as threads: ``all_reduce`` sums in place, in the same
    order on both, as the solver's data-parallel seam requires."""

    def __init__(self):
        self.barrier = threading.Barrier(2, timeout=60)
        self.slots = [None, None]

    def all_reduce(self, rank, tensors):
        self.slots[rank] = [t.clone() for t in tensors]
        self.barrier.wait()
        for tensor, first, second in zip(tensors, *self.slots):
            tensor.copy_(first + second)
        self.barrier.wait()


def test_data_parallel_ranks_share_the_scaling_and_match_one_process():
    """Each rank's rows are summed over the ranks through the solver's seam
    (``reductions``: ``all_reduce``, ``count``): two ranks on half batches make the update of one
    process on the whole batch (else their scalings, hence their weights, would differ)."""
    X, y = batch("cross_entropy", n=16)
    options = dict(fisher="empirical", inv_update_freq=2)
    single = network()
    ranks = [network(), network()]
    group, errors = TwoRanks(), []
    opt = plain(single, "cross_entropy", **options)
    for _ in range(3):
        opt.accumulate(X, y)
        opt.step()

    def run(rank):
        try:
            part = slice(8 * rank, 8 * rank + 8)
            rank_opt = plain(ranks[rank], "cross_entropy", **options)
            rank_opt.reductions.all_reduce = lambda tensors: group.all_reduce(rank, tensors)

            def reduce_count(count):
                total = torch.tensor([float(count)])
                group.all_reduce(rank, [total])
                return int(total.item())

            rank_opt.reductions.count = reduce_count
            for _ in range(3):
                rank_opt.accumulate(X[part], y[part])
                rank_opt.step()
        except Exception as error:  # re-raised in the main thread
            errors.append(error)
            group.barrier.abort()

    threads = [threading.Thread(target=run, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    for a, b, c in zip(single.parameters(), *(r.parameters() for r in ranks)):
        assert torch.equal(b, c)
        torch.testing.assert_close(b, a)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_cuda_updates_between_refreshes_do_not_synchronise():
    from test_kfac_cuda import updates_without_host_sync

    X, y = batch("cross_entropy", n=64)
    X, y = X.cuda(), y.cuda()
    opt = plain(network().cuda(), "cross_entropy", inv_update_freq=100, adaptive_step=True,
                adapt_damping=True, damping_adapt_interval=2)
    updates_without_host_sync(opt, X, y, updates=4)
    assert all(bool(block.inverse.estimated) for block in opt.blocks)


@needs_cuda
def test_cuda_update_matches_cpu():
    from test_kfac_cuda import assert_same_updates_on_cpu_and_cuda

    def build(device):
        model = network().to(device)
        return model, plain(model, "cross_entropy", fisher="empirical", inv_update_freq=2)

    assert_same_updates_on_cpu_and_cuda(build, *batch("cross_entropy", n=32))


def test_optimizer_pickles_with_its_statistics_and_keeps_training():
    import pickle

    X, y = batch("cross_entropy", n=32)
    opt = plain(network(), "cross_entropy", adaptive_step=True, adapt_damping=True)
    opt.accumulate(X, y)
    opt.step()
    clone = pickle.loads(pickle.dumps(opt))
    losses = []
    for _ in range(20):
        losses.append(float(clone.accumulate(X, y)) / len(X))
        clone.step()
    assert losses[-1] < 0.8 * losses[0]
    assert clone.ekfac.rows == []


def test_regressor_learns_with_ekfac():
    from sklearn.datasets import make_regression
    from sklearn.preprocessing import StandardScaler

    X, y = make_regression(n_samples=400, n_features=6, noise=5.0, random_state=0)
    X = StandardScaler().fit_transform(X)
    y = (y - y.mean()) / y.std()
    reg = KFACRegressor(hidden_layer_sizes=(16,), damping_scheme="ekfac", batch_size=100,
                        max_iter=30, random_state=0, device="cpu").fit(X, y)
    assert reg.solver_.ekfac is not None
    assert reg.loss_curve_[-1] < 0.1 * reg.loss_curve_[0]
    assert reg.score(X, y) > 0.95


def test_classifier_learns_with_ekfac():
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=400, n_features=8, n_informative=5, n_classes=3,
                               random_state=0)
    clf = KFACClassifier(hidden_layer_sizes=(16,), damping_scheme="ekfac", batch_size=100,
                         max_iter=30, early_stopping=False, random_state=0,
                         device="cpu").fit(X, y)
    assert np.isfinite(clf.loss_curve_).all()
    assert clf.loss_curve_[-1] < 0.5 * clf.loss_curve_[0]
    assert clf.score(X, y) > 0.9


def test_benchmark_script_runs(capsys):
    from benchmarks import ekfac as benchmark

    benchmark.main(["--problems", "digits", "--budget", "0.3", "--updates", "1", "--seeds", "1"])
    out = capsys.readouterr().out
    assert "load average" in out and "after 1 updates" in out
    assert all(label in out for label in benchmark.VARIANTS)
