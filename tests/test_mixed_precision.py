"""``precision='bf16-mixed'`` (issue 25): bfloat16 training passes under autocast, float32
weights, loss and curvature, and steps judged in full precision whatever the forward
pass's precision (bf16-mixed, or reduced-precision float32 matmuls)."""

import inspect
import io
import pickle

import numpy as np
import pytest
import torch
from sklearn.datasets import make_regression
from torch import nn

from skkfac import KFAC, KFACAutoencoder, KFACClassifier, KFACRegressor
from skkfac.curvature.precision import has_bfloat16_matmul
from skkfac.nn import build_mlp
from skkfac.solvers import SOLVERS, Adam, NesterovSGD
from skkfac.solvers.mixed_precision import PRECISION
from skkfac.solvers.spec import estimator_parameters


def test_precision_is_one_parameter_declared_by_every_solver():
    parameter = estimator_parameters()["precision"]
    assert set(parameter.declarations) == set(SOLVERS)
    assert all(hyper is PRECISION for hyper in parameter.declarations.values())
    assert parameter.default == "float32" and not parameter.per_solver_default
    for estimator in (KFACRegressor, KFACClassifier, KFACAutoencoder):
        assert inspect.signature(estimator).parameters["precision"].default == "float32"
        entry = estimator.__doc__.split("    precision : ")[1].split("\n    n_threads")[0]
        assert "bf16-mixed" in entry and "Only used with" not in entry


@pytest.fixture
def matmul_precision():
    """Set ``torch.set_float32_matmul_precision`` inside a test; restored after it."""
    previous = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(previous)


def quadratic_problem():
    """Linear least squares, whose loss is exactly its quadratic model: ρ must be 1."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 4, generator=g) + 2.0
    Y = X @ torch.randn(4, 2, generator=g) + 0.5
    layer = nn.Linear(4, 2)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return X, Y, layer


@pytest.mark.parametrize("setting, micro_batches, preconditioning", [
    ("bf16-mixed", 1, "full"),
    ("bf16-mixed", 3, "bfloat16"),          # artificial batch; bfloat16 products
    ("medium", 1, "full"),                  # reduced-precision float32 matmuls
    ("medium", 2, "auto"),
    ("autocast", 1, "full"),                # the user's own autocast around accumulate
])
def test_rho_is_one_on_an_exactly_quadratic_problem(matmul_precision, setting,
                                                    micro_batches, preconditioning):
    """The loss before a step and the model's terms came from the training pass: under
    bf16-mixed (or the user's autocast) ρ was off by up to 2e-3 here before they were
    evaluated again in full precision. 'medium' lets float32 products use bfloat16 (an
    AMX CPU does, issue 25); this project's AVX512-BF16 CPU keeps products this small in
    float32, so there the test checks that the rows are recognised as inexact."""
    X, Y, layer = quadratic_problem()
    precision = "bf16-mixed" if setting == "bf16-mixed" else "float32"
    opt = KFAC(layer, "squared_error", fisher="exact", damping=0.1,
               damping_adapt_interval=1, curvature_batch_size=None,
               precondition_precision=preconditioning, precision=precision,
               random_state=0)
    if setting == "medium":
        matmul_precision("medium")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=setting == "autocast")
    losses = []
    for _ in range(3):
        for rows in torch.tensor_split(torch.arange(len(X)), micro_batches):
            with autocast:
                opt.accumulate(X[rows], Y[rows])
        assert not opt.curvature.batch().exact  # evaluated again before the step
        report = opt.step().fetch()
        assert report["accepted"]
        assert report["rho"] == pytest.approx(1.0, abs=1e-6)
        losses.append(report["loss_after"])
    assert losses[-1] < 0.2 * losses[0]


def test_rows_of_a_full_precision_pass_are_not_evaluated_again():
    """float32 at 'highest' (the default): the recorded pass is the judge, unchanged."""
    X, Y, layer = quadratic_problem()
    opt = KFAC(layer, "squared_error", random_state=0)
    opt.accumulate(X, Y)
    batch = opt.curvature.batch()
    assert batch.exact and opt.quadratic.in_full_precision(batch) is batch


@pytest.mark.parametrize("name", list(SOLVERS))
def test_bf16_mixed_runs_the_training_pass_in_bfloat16_with_float32_weights(name):
    X = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    y = (X[:, 0] > 0).long()
    model = build_mlp(6, (16,), 2, generator=torch.Generator().manual_seed(0))
    seen = []
    model[0].register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    cls = SOLVERS[name]
    solver = cls(model, "cross_entropy", precision="bf16-mixed",
                 **({"random_state": 0} if cls.takes_random_state else {}))
    assert solver.training_precision == "bf16-mixed"
    loss = solver.accumulate(X, y)
    assert loss.dtype == torch.float32  # the loss of the float32-cast output
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.grad.dtype == torch.float32 for p in solver.params)
    solver.step()
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in solver.params)
    with torch.no_grad():
        assert model(X).dtype == torch.float32  # outside training: no autocast


@pytest.mark.parametrize("options", [{}, {"damping_scheme": "ekfac"},
                                     {"adaptive_step": False, "kl_clip": 0.01},
                                     {"damping_scheme": "eigen", "alpha": 1e-3}])
def test_kfac_keeps_float32_curvature_under_bf16_mixed(options):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 6, generator=g)
    y = (X[:, :1] > 0).long().squeeze(1) + (X[:, 1:2] > 0).long().squeeze(1)
    model = build_mlp(6, (16,), 3, generator=torch.Generator().manual_seed(0))
    opt = KFAC(model, "cross_entropy", precision="bf16-mixed", random_state=0, **options)
    losses = []
    for _ in range(15):
        losses.append(float(opt.accumulate(X, y)) / len(X))
        report = opt.step()
    assert all(block.A.dtype == torch.float32 and block.G.dtype == torch.float32
               for block in opt.blocks)
    assert all(block.A_sum.dtype == torch.float32 for block in opt.blocks)
    assert report.loss_before.dtype == torch.float64
    assert losses[-1] < 0.8 * losses[0]


def test_kfac_low_rank_route_under_bf16_mixed():
    """Small updates precondition from the kept bfloat16 rows, cast to float32."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(16, 40, generator=g)
    model = build_mlp(40, (64,), 40, generator=torch.Generator().manual_seed(0))
    opt = KFAC(model, "squared_error", precision="bf16-mixed", random_state=0)
    first = float(opt.accumulate(X, X))
    assert opt.curvature.gradient_rows  # the low-rank route is taken
    opt.step()
    for _ in range(10):
        last = float(opt.accumulate(X, X))
        opt.step()
    assert last < first


# -- the estimators -----------------------------------------------------------------------
@pytest.mark.parametrize("solver", list(SOLVERS))
def test_estimators_train_with_bf16_mixed(solver):
    X, y = make_regression(n_samples=400, n_features=8, noise=1.0, random_state=0)
    y = y / y.std()
    reg = KFACRegressor(hidden_layer_sizes=(32,), solver=solver, precision="bf16-mixed",
                        max_iter=30, batch_size=100, early_stopping=False, random_state=0,
                        **({"learning_rate_init": 0.01} if solver == "adam" else {}))
    with pytest.warns(Warning):  # ConvergenceWarning at max_iter
        reg.fit(X, y)
    assert reg.solver_.training_precision == "bf16-mixed"
    assert reg.loss_curve_[-1] < 0.5 * reg.loss_curve_[0]
    with torch.no_grad():  # predict runs the float32 network as it is, no autocast
        expected = reg.model_(torch.as_tensor(X, dtype=torch.float32)).squeeze(1)
    assert expected.dtype == torch.float32
    np.testing.assert_array_equal(reg.predict(X), expected.numpy().astype(np.float64))
    assert reg.score(X, y) > 0.5


def test_classifier_and_autoencoder_take_precision():
    X, y = make_regression(n_samples=200, n_features=6, random_state=0)
    clf = KFACClassifier(hidden_layer_sizes=(8,), precision="bf16-mixed", max_iter=3,
                         random_state=0)
    with pytest.warns(Warning):
        clf.fit(X, y > 0)
    assert clf.solver_.training_precision == "bf16-mixed"
    ae = KFACAutoencoder(encoder_layer_sizes=(8, 3), precision="auto", max_iter=2,
                         random_state=0)
    with pytest.warns(Warning):
        ae.fit(X / np.abs(X).max())
    # 'auto': bf16-mixed where the CPU has bfloat16 matrix units, float32 elsewhere.
    expected = "bf16-mixed" if has_bfloat16_matmul(torch.device("cpu")) else "float32"
    assert ae.solver_.precision == "auto" and ae.solver_.training_precision == expected


def test_auto_precision_follows_the_hardware(monkeypatch):
    import skkfac.solvers.mixed_precision as mixed

    model = build_mlp(3, (4,), 2)
    for fast, expected in ((True, "bf16-mixed"), (False, "float32")):
        monkeypatch.setattr(mixed, "has_bfloat16_matmul", lambda device, fast=fast: fast)
        for cls in (KFAC, NesterovSGD, Adam):
            assert cls(model, precision="auto").training_precision == expected


def test_float64_network_refuses_bf16_mixed():
    """autocast leaves float64 tensors alone: bf16-mixed would silently do nothing."""
    model = build_mlp(3, (4,), 2, dtype=torch.float64)
    for cls in (KFAC, NesterovSGD, Adam):
        with pytest.raises(ValueError, match="bf16-mixed' needs float32 weights"):
            cls(model, precision="bf16-mixed")
        assert cls(model, precision="auto").training_precision == "float32"
    X, y = make_regression(n_samples=40, n_features=3, random_state=0)
    reg = KFACRegressor(hidden_layer_sizes=(4,), dtype="float64", precision="bf16-mixed",
                        max_iter=1)
    with pytest.raises(ValueError, match="dtype='float32'"):
        reg.fit(X, y)
    assert not hasattr(reg, "model_")


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="'precision' parameter of NesterovSGD"):
        NesterovSGD(nn.Linear(2, 1), precision="float16")
    with pytest.raises(ValueError, match="'precision' parameter of KFACRegressor"):
        KFACRegressor(precision="bf16").fit(np.zeros((4, 2)), np.zeros(4))


# -- state ---------------------------------------------------------------------------------
def _make(seed):
    model = build_mlp(5, (7, 6), 3, generator=torch.Generator().manual_seed(seed))
    return model, KFAC(model, "cross_entropy", curvature_batch_size=16, inv_update_freq=4,
                       damping_adapt_interval=3, precision="bf16-mixed", random_state=seed)


def _train(opt, data):
    for X, y in data:
        opt.accumulate(X, y)
        opt.step()


def _batches(n):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g))
            for _ in range(n)]


def test_state_dict_round_trip_is_bit_for_bit_under_bf16_mixed():
    data = _batches(12)
    model, opt = _make(0)
    _train(opt, data[:7])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    fresh_model, fresh = _make(1)
    fresh_model.load_state_dict(saved["model"])
    fresh.load_state_dict(saved["optimizer"])
    _train(opt, data[7:])
    _train(fresh, data[7:])
    for a, b in zip(model.parameters(), fresh_model.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(opt.damping, fresh.damping)


def test_pickle_keeps_the_precision_and_continues_identically():
    data = _batches(8)
    _, opt = _make(0)
    _train(opt, data[:4])
    copy = pickle.loads(pickle.dumps(opt))
    assert copy.precision == "bf16-mixed" and copy.training_precision == "bf16-mixed"
    _train(opt, data[4:])
    _train(copy, data[4:])
    for a, b in zip(opt.params, copy.params):
        assert torch.equal(a, b)
