"""K-FAC's precision policy: curvature in true float32 (or float64) whatever the settings,
except the products with the factor inverses when ``precondition_precision='bfloat16'``."""

import pytest
import torch

from skkfac import KFAC
from skkfac.curvature import DAMPING_SCHEMES
from skkfac.nn import build_mlp


def data(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(128, 6, generator=g, dtype=dtype)
    return X, (X[:, :1] > 0).long().squeeze(1) + (X[:, 1:2] > 0).long().squeeze(1)


def test_curvature_runs_at_highest_matmul_precision_whatever_the_global_setting():
    X, y = data()
    opt = KFAC(build_mlp(6, (8,), 3), "cross_entropy", random_state=0)
    seen = []
    original = opt._refresh_inverses

    def spy():
        seen.append(torch.get_float32_matmul_precision())
        original()

    opt._refresh_inverses = spy
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 on GPUs
    try:
        opt.accumulate(X, y)
        opt.step()
        assert torch.get_float32_matmul_precision() == "high"  # restored
    finally:
        torch.set_float32_matmul_precision(previous)
    assert seen == ["highest"]


def test_bfloat16_model_trains_with_float32_curvature():
    X, y = data()
    model = build_mlp(6, (8,), 3, dtype=torch.bfloat16,
                      generator=torch.Generator().manual_seed(0))
    opt = KFAC(model, "cross_entropy", random_state=0)
    losses = []
    for _ in range(15):
        losses.append(float(opt.accumulate(X.bfloat16(), y)) / len(X))
        report = opt.step()
    assert all(block.A.dtype == torch.float32 and block.G.dtype == torch.float32
               for block in opt.blocks)
    assert report.loss_before.dtype == torch.float64
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all()
               for p in model.parameters())
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_forward_does_not_break_the_optimizer(dtype):
    X, y = data()
    model = build_mlp(6, (8,), 3, generator=torch.Generator().manual_seed(0))
    opt = KFAC(model, "cross_entropy", random_state=0)
    losses = []
    for _ in range(15):
        with torch.autocast("cpu", dtype=dtype):
            losses.append(float(opt.accumulate(X, y)) / len(X))
        opt.step()
    assert all(block.A.dtype == torch.float32 for block in opt.blocks)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all()
               for p in model.parameters())
    assert losses[-1] < 0.8 * losses[0]


# -- precondition_precision='bfloat16': the one opt-in exception -------------------------------
def factors(n_in=30, n_out=20, seed=0):
    """Well-conditioned float64 factors (condition number ~100 after damping)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(400, n_in, generator=g, dtype=torch.float64)
    o = torch.randn(400, n_out, generator=g, dtype=torch.float64)
    return a.T @ a / 400, o.T @ o / 400


@pytest.mark.parametrize("scheme", ["tikhonov", "eigen", "max_norm", "ekfac"])
def test_bfloat16_products_agree_with_full_precision_to_bfloat16_rounding(scheme):
    cls = DAMPING_SCHEMES[scheme]
    A, G = factors()
    V = torch.randn(20, 30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    inverse = cls(A, G, 1e-2)
    full = inverse.apply(V)
    inverse.multiply_in(torch.bfloat16)
    reduced = inverse.apply(V)
    assert reduced.dtype == torch.float64
    error = float((reduced - full).norm() / full.norm())
    # bfloat16 keeps 8 significant bits (relative rounding 2⁻⁹ ≈ 0.2 %): the products
    # were computed in it (not silently in float64), and no worse than a few roundings.
    assert 1e-4 < error < 3e-2
    assert sorted(inverse.tensors()) == sorted(cls(A, G, 1e-2).tensors())  # casts not saved
    inverse.multiply_in(None)
    torch.testing.assert_close(inverse.apply(V), full, rtol=0, atol=0)


@pytest.mark.parametrize("scheme", ["tikhonov", "max_norm"])
def test_bfloat16_low_rank_route_equals_the_formed_product(scheme):
    A, G = factors()
    g = torch.Generator().manual_seed(2)
    left = torch.randn(20, 5, generator=g, dtype=torch.float64)
    right = torch.randn(5, 30, generator=g, dtype=torch.float64)
    inverse = DAMPING_SCHEMES[scheme](A, G, 1e-2)
    full = inverse.apply(left @ right)
    inverse.multiply_in(torch.bfloat16)
    outer = inverse.apply_outer(left, right)
    assert outer.dtype == torch.float64
    assert 1e-4 < float((outer - full).norm() / full.norm()) < 3e-2


def test_bfloat16_preconditioning_still_judges_the_step_it_takes_exactly():
    """On linear least squares the quadratic model is exact: ρ = 1 for *any* direction,
    so the bfloat16 direction (which differs from the full-precision one) must still give
    ρ = 1 — the model, ρ and the rejection test are evaluated for the step actually made."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 4, generator=g, dtype=torch.float64) + 2.0
    Y = X @ torch.randn(4, 2, generator=g, dtype=torch.float64)
    steps = {}
    for precision in ("full", "bfloat16"):
        layer = torch.nn.Linear(4, 2, dtype=torch.float64)
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
        opt = KFAC(layer, "squared_error", fisher="exact", damping=0.1,
                   damping_scheme="tikhonov", adapt_damping=True, damping_adapt_interval=1,
                   curvature_batch_size=None, precondition_precision=precision,
                   random_state=0)
        for _ in range(3):
            opt.accumulate(X, Y)
            assert opt.step().fetch()["rho"] == pytest.approx(1.0, abs=1e-9)
        steps[precision] = layer.weight.detach().clone()
    assert not torch.equal(steps["full"], steps["bfloat16"])  # another direction was taken
    torch.testing.assert_close(steps["bfloat16"], steps["full"], rtol=0.05, atol=0.05)


def test_unknown_precondition_precision_is_refused():
    with pytest.raises(ValueError, match="precondition_precision"):
        KFAC(build_mlp(6, (8,), 3), "cross_entropy", precondition_precision="float16")


@pytest.mark.parametrize("fast", [True, False])
def test_auto_precision_uses_bfloat16_only_for_float32_on_hardware_that_has_it(
        monkeypatch, fast):
    from skkfac.curvature import precision

    monkeypatch.setattr(precision, "has_bfloat16_matmul", lambda device: fast)
    X, y = data()
    expected = torch.bfloat16 if fast else torch.float32
    for dtype, wanted in ((torch.float32, expected), (torch.float64, torch.float64)):
        model = build_mlp(6, (8,), 3, dtype=dtype)
        opt = KFAC(model, "cross_entropy", random_state=0)  # precondition_precision='auto'
        assert opt.precondition_dtype == wanted
        opt.accumulate(X.to(dtype), y)
        opt.step()
        products = {block.inverse.product_dtype for block in opt.blocks}
        assert products == {None if wanted == dtype else torch.bfloat16}

