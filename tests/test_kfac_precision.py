"""K-FAC's precision policy: curvature in true float32 (or float64) whatever the settings."""

import pytest
import torch

from skkfac import KFAC
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
