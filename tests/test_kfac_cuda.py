"""K-FAC on a GPU: exactness, no synchronisation inside an update, portable state.

Skipped without CUDA.
"""

import io

import pytest
import torch

from skkfac import KFAC
from skkfac.nn import build_mlp

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make(device, seed=0, dtype=torch.float32, **kwargs):
    model = build_mlp(20, (32, 16), 4, generator=torch.Generator().manual_seed(seed),
                      dtype=dtype, device=device)
    return model, KFAC(model, "cross_entropy", random_state=seed, inv_update_freq=3,
                       damping_adapt_interval=2, curvature_batch_size=64, **kwargs)


def batch(device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(200, 20, generator=g, dtype=dtype)
    return X.to(device), torch.randint(0, 4, (200,), generator=g).to(device)


def updates_without_host_sync(opt, X, y, *, warmup=2, updates=6):
    """``updates`` accumulate + step calls after ``warmup`` ones, with any device-to-host
    synchronisation turned into an error; returns the last step's report."""
    for _ in range(warmup):
        opt.accumulate(X, y)
        opt.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(updates):
            opt.accumulate(X, y)
            report = opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return report


@pytest.mark.parametrize("precision", ["full", "bfloat16"])
def test_updates_do_not_synchronise_with_the_host(precision):
    X, y = batch("cuda")
    _, opt = make("cuda", precondition_precision=precision)
    report = updates_without_host_sync(opt, X, y)
    assert report.fetch()["accepted"] in (True, False)


def assert_same_updates_on_cpu_and_cuda(build, X, y, updates=4):
    """``build(device) -> (model, optimizer)``: after ``updates`` updates on ``(X, y)``
    the weights on the CPU and on CUDA agree to float64 round-off."""
    results = []
    for device in ("cpu", "cuda"):
        model, opt = build(device)
        for _ in range(updates):
            opt.accumulate(X.to(device), y.to(device))
            opt.step()
        results.append([p.detach().cpu() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_cuda_update_matches_cpu_in_float64():
    def build(device):
        model, opt = make(device, dtype=torch.float64)
        # Sampled targets differ between devices' generators: take the argmax instead.
        opt.loss.sample_targets = lambda output, generator=None: output.argmax(1)
        return model, opt

    assert_same_updates_on_cpu_and_cuda(build, *batch("cpu", torch.float64))


def test_state_saved_on_cuda_loads_on_cpu():
    X, y = batch("cuda")
    model, opt = make("cuda")
    opt.accumulate(X, y)
    opt.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, map_location="cpu")
    cpu_model, cpu_opt = make("cpu", seed=1)
    cpu_model.load_state_dict(saved["model"])
    cpu_opt.load_state_dict(saved["optimizer"])  # the CUDA generator state is re-seeded
    assert cpu_opt.generator.device.type == "cpu"
    cpu_opt.accumulate(X.cpu(), y.cpu())
    assert cpu_opt.step().fetch()["accepted"] in (True, False)
