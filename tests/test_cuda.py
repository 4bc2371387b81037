"""The GPU path, on a real GPU (the whole module is skipped without one).

tests/test_cuda_exact.py runs the exactness tests of tests/test_kfac_exact.py on the GPU;
this module checks devices, portability, host synchronisations and precision, and prints
its measurements (lines starting with ``[sync]``, ``[cost]``, ``[precision]``) even
without ``-s``.
"""

import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

from sklearn.datasets import make_regression

from skkfac import KFAC, KFACAutoencoder, KFACRegressor
from skkfac.nn import build_mlp

#: Host synchronisations allowed per update (the engine's target) and per epoch
#: (shuffling, the epoch's loss, the history row), plus a fixed allowance per fit
#: (copying the data in, the first update, the final checks).
SYNCS_PER_UPDATE = {"kfac": 2, "sgd": 1}
SYNCS_PER_EPOCH = 5
SYNCS_PER_FIT = 40


@pytest.fixture(scope="module")
def data():
    X, y = make_regression(n_samples=2000, n_features=20, noise=0.5, random_state=0)
    return X, y / y.std()


def fit_quietly(estimator, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning
        return estimator.fit(*args)


def current_cuda():
    return torch.device("cuda", torch.cuda.current_device())


def test_auto_is_the_indexed_current_device(data):
    reg = fit_quietly(KFACRegressor(hidden_layer_sizes=(16,), max_iter=2, random_state=0),
                      *data)
    assert reg.device_ == current_cuda()
    assert all(p.device == current_cuda() for p in reg.model_.parameters())
    assert reg.solver_.generator.device.type == "cuda"


def test_missing_gpu_index_fails_early(data):
    reg = KFACRegressor(device=f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(ValueError, match="CUDA device"):
        reg.fit(*data)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_training_on_a_gpu_other_than_the_current_one(data):
    other = torch.device("cuda", 1 - torch.cuda.current_device() if
                         torch.cuda.current_device() < 2 else 0)
    reg = fit_quietly(KFACRegressor(hidden_layer_sizes=(16,), max_iter=2, device=str(other),
                                    random_state=0), *data)
    assert reg.device_ == other and reg.predict(data[0]).shape == (2000,)


def test_set_params_device_moves_between_gpu_and_cpu(data):
    X, y = data
    reg = fit_quietly(KFACRegressor(hidden_layer_sizes=(16,), max_iter=3, dtype="float64",
                                    warm_start=True, random_state=0, device="cuda"), X, y)
    on_gpu = reg.predict(X)
    on_cpu = reg.set_params(device="cpu").predict(X)
    assert reg.device_ == torch.device("cpu")
    np.testing.assert_allclose(on_cpu, on_gpu, rtol=1e-9, atol=1e-12)
    loss = reg.loss_
    fit_quietly(reg.set_params(device="cuda"), X, y)  # back to the GPU, solver state too
    assert reg.device_ == current_cuda() and reg.loss_ < loss
    assert all(block.A.device == current_cuda() for block in reg.solver_.blocks)


LOAD_ON_CPU = textwrap.dedent("""
    import pickle, sys, warnings
    import numpy as np, torch
    assert not torch.cuda.is_available()
    folder = sys.argv[1]
    X = np.load(f"{folder}/X.npy")
    auto = pickle.load(open(f"{folder}/auto.pkl", "rb"))
    np.save(f"{folder}/auto_cpu.npy", auto.predict(X))
    auto.partial_fit(X, X[:, 0])  # K-FAC samples from its generator: it must be on the CPU
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pinned = pickle.load(open(f"{folder}/pinned.pkl", "rb"))
    print("WARNINGS:", [str(w.message) for w in caught])
    np.save(f"{folder}/pinned_cpu.npy", pinned.set_params(device="cpu").predict(X))
""")


def test_gpu_pickle_loads_on_a_cpu_only_machine(data, tmp_path):
    X, y = data
    for name, device in (("auto", "auto"), ("pinned", "cuda")):
        reg = fit_quietly(KFACRegressor(hidden_layer_sizes=(16,), max_iter=3, dtype="float64",
                                        device=device, random_state=0), X, y)
        assert reg.device_.type == "cuda"
        np.save(tmp_path / f"{name}_gpu.npy", reg.predict(X))
        (tmp_path / f"{name}.pkl").write_bytes(pickle.dumps(reg))
    np.save(tmp_path / "X.npy", X)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", LOAD_ON_CPU, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert "loaded on the CPU" in result.stdout  # only the pinned model warns
    for name in ("auto", "pinned"):
        np.testing.assert_allclose(np.load(tmp_path / f"{name}_cpu.npy"),
                                   np.load(tmp_path / f"{name}_gpu.npy"),
                                   rtol=1e-9, atol=1e-12)


def count_syncs(estimator, X, y):
    """Fit with CUDA's sync debug mode on; count the warnings by source line."""
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            estimator.fit(X, y)
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    syncs = [w for w in caught if "synchronizing CUDA operation" in str(w.message)]
    return len(syncs), Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)


@pytest.mark.parametrize("solver", ["kfac", "sgd"])
def test_host_synchronisations_per_update(data, solver, capsys):
    X, y = data
    reg = KFACRegressor(hidden_layer_sizes=(64, 64), solver=solver, batch_size=50,
                        max_iter=3, tol=0.0, random_state=0)
    fit_quietly(reg.set_params(max_iter=1), X, y)  # warm-up: CUDA/cuBLAS initialisation
    count, sources = count_syncs(reg.set_params(max_iter=3), X, y)
    allowed = (SYNCS_PER_UPDATE[solver] * reg.n_updates_ + SYNCS_PER_EPOCH * reg.n_iter_
               + SYNCS_PER_FIT)
    with capsys.disabled():
        print(f"\n[sync] {solver}: {count} synchronising operations over {reg.n_updates_} "
              f"updates and {reg.n_iter_} epochs ({count / reg.n_updates_:.2f} per update; "
              f"allowed {allowed}); top sources: {sources.most_common(8)}")
    assert count <= allowed


def test_kfac_and_sgd_seconds_per_update_on_the_autoencoder(capsys):
    """The study's MNIST autoencoder on random pixels (cost does not depend on values)."""
    X = np.random.RandomState(0).rand(10_000, 784).astype(np.float32)
    results = {}
    for solver in ("sgd", "kfac"):
        for batch_size in (1000, 4000):
            ae = KFACAutoencoder(solver=solver, batch_size=batch_size, max_iter=1,
                                 random_state=0, device="cuda")
            fit_quietly(ae, X)  # warm-up
            fit_quietly(ae.set_params(max_iter=3), X)
            results[solver, batch_size] = ae.train_time_ / ae.n_updates_
    with capsys.disabled():
        for batch_size in (1000, 4000):
            sgd, kfac = results["sgd", batch_size], results["kfac", batch_size]
            print(f"\n[cost] autoencoder on {torch.cuda.get_device_name()}, batch "
                  f"{batch_size}: SGD {1e3 * sgd:.2f} ms/update, K-FAC {1e3 * kfac:.2f} "
                  f"ms/update, ratio {kfac / sgd:.2f}")


def test_curvature_ignores_a_global_tf32_setting(capsys):
    """With TF32 on, the first layer's factor is still X̄ᵀX̄ to float32 accuracy."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    X = torch.randn(4096, 256, device="cuda", generator=generator)
    y = torch.randn(4096, 10, device="cuda", generator=generator)
    opt = KFAC(build_mlp(256, (256,), 10, device="cuda"), "squared_error",
               curvature_batch_size=None, random_state=0)
    X1 = torch.cat([X, torch.ones(len(X), 1, device="cuda")], 1)
    expected = X1.double().T @ X1.double()
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        opt.accumulate(X, y)
        tf32 = X1.T @ X1  # what a plain float32 product gives under this setting
    finally:
        torch.set_float32_matmul_precision(previous)
    scale = expected.abs().max()
    error = float((opt.blocks[0].A_sum.double() - expected).abs().max() / scale)
    tf32_error = float((tf32.double() - expected).abs().max() / scale)
    with capsys.disabled():
        print(f"\n[precision] factor A relative error with TF32 allowed: K-FAC {error:.2e}, "
              f"a plain float32 product {tf32_error:.2e}")
    assert error < 1e-5
