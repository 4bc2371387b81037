"""Devices on any machine: resolution, early errors, moving and pickling fitted models.

GPUs are simulated where the logic allows it: ``fake_gpus`` makes PyTorch report CUDA
devices (no tensor ever goes there), and ``saved_as_if_on_gpu`` makes ``torch.save``
record every tensor as a CUDA tensor, byte for byte what a GPU fit writes, so that
loading without mapping fails exactly as on a CPU-only machine.
"""

import io
import multiprocessing
import pickle
import warnings
from unittest import mock

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_regression

from skkfac import KFACAutoencoder, KFACRegressor, devices
from skkfac.devices import resolve_device, target_device


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_gpus(monkeypatch):
    """PyTorch reports two GPUs, the current one being cuda:1."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)


@pytest.fixture
def saved_as_if_on_gpu(monkeypatch):
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")


@pytest.fixture(scope="module")
def data():
    X, y = make_regression(n_samples=400, n_features=5, noise=0.5, random_state=0)
    return X, y / y.std()


def fitted(data, **params):
    X, y = data
    settings = dict(hidden_layer_sizes=(8,), max_iter=3, batch_size=50, device="cpu",
                    random_state=0)
    settings.update(params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning
        return KFACRegressor(**settings).fit(X, y)


def tensors_in(obj) -> list:
    """The tensors in nested lists and tuples."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in tensors_in(item)]
    return []


def weights(estimator):
    return [p.detach().clone() for p in estimator.model_.parameters()]


# -- resolving the device parameter ----------------------------------------------------------
def test_cpu_and_bad_values(no_gpu):
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="not a valid torch device"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match="MPS backend lacks float64"):
        resolve_device("mps")
    with pytest.raises(ValueError, match="cpu and cuda devices only"):
        resolve_device("meta")
    for device in ("cuda", "cuda:0", "cuda:worker"):
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device(device)


def test_cuda_devices_are_indexed_and_checked(fake_gpus):
    assert resolve_device("auto") == torch.device("cuda", 1)  # the current device
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"sees 2 CUDA device\(s\): cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    assert resolve_device("cuda:worker") == torch.device("cuda", 1)  # main process
    with mock.patch.object(devices, "worker_index", return_value=4):
        assert resolve_device("cuda:worker") == torch.device("cuda", 0)


def test_target_device_keeps_state_where_a_flexible_value_allows(fake_gpus):
    on_0, on_1 = torch.device("cuda", 0), torch.device("cuda", 1)
    assert target_device("auto", on_0) == on_0  # not moved because the current device is 1
    assert target_device("auto", torch.device("cuda", 5)) == on_1  # not on this machine
    assert target_device("auto", torch.device("cpu")) == on_1  # auto prefers the GPU
    assert target_device("cuda", on_0) == on_1  # explicit: the current CUDA device
    assert target_device("cpu", on_0) == torch.device("cpu")


def test_estimators_reject_bad_devices_before_training(data, fake_gpus):
    X, y = data
    for device, message in [("cuda:7", "sees 2 CUDA"), ("mps", "MPS"), ("tpu", "valid")]:
        reg = KFACRegressor(hidden_layer_sizes=(4,), device=device)
        with pytest.raises(ValueError, match=message):
            reg.fit(X, y)
        assert not hasattr(reg, "model_")


def test_torch_device_objects_are_accepted(data):
    reg = fitted(data, device=torch.device("cpu"))
    assert reg.device_ == torch.device("cpu")
    assert clone(reg).get_params()["device"] == torch.device("cpu")


def report_worker_device(_):
    """Run in a worker process: its number and what 'cuda:worker' picks among 2 GPUs."""
    with mock.patch.multiple(torch.cuda, is_available=lambda: True, device_count=lambda: 2,
                             current_device=lambda: 0):
        return (multiprocessing.current_process().name, devices.worker_index(),
                str(resolve_device("cuda:worker")))


def test_worker_index_spreads_loky_workers_over_gpus():
    assert devices.worker_index() is None  # the main process
    reports = set(joblib.Parallel(n_jobs=2)(
        joblib.delayed(report_worker_device)(i) for i in range(8)))
    by_name = {name: (index, device) for name, index, device in reports}
    assert len(by_name) == len(reports)  # one index per process
    for name, (index, device) in by_name.items():
        assert name.endswith(f"-{index + 1}")  # 'LokyProcess-3' is worker 2
        assert device == f"cuda:{index % 2}"


# -- moving and pickling fitted estimators ---------------------------------------------------
def test_pickled_gpu_model_loads_on_a_cpu_only_machine(data, no_gpu, saved_as_if_on_gpu):
    X = data[0]
    reg = fitted(data, device="auto")
    expected = reg.predict(X)
    reg.device_ = torch.device("cuda", 0)  # what a GPU fit records
    blob = pickle.dumps(reg)
    # The simulation is faithful: unmapped, the tensors ask for CUDA and fail to load.
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(io.BytesIO(reg.__getstate__()["_fitted_state"]), weights_only=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 'auto' finds a device here: no warning
        restored = pickle.loads(blob)
    assert restored.device_ == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in restored.model_.parameters())
    assert restored.solver_.generator.device.type == "cpu"
    np.testing.assert_array_equal(restored.predict(X), expected)
    # joblib, the usual way to save sklearn models, goes through the same mapping.
    buffer = io.BytesIO()
    joblib.dump(reg, buffer)
    buffer.seek(0)
    np.testing.assert_array_equal(joblib.load(buffer).predict(X), expected)


def test_model_pinned_to_a_missing_gpu_loads_on_cpu_with_a_warning(data, no_gpu,
                                                                   saved_as_if_on_gpu):
    X = data[0]
    reg = fitted(data)
    expected = reg.predict(X)
    reg.device_ = torch.device("cuda", 1)
    reg.device = "cuda:1"
    with pytest.warns(UserWarning, match=r"fitted on cuda:1.*loaded on the CPU"):
        restored = pickle.loads(pickle.dumps(reg))
    with pytest.raises(ValueError, match="CUDA is not available"):
        restored.predict(X)
    np.testing.assert_array_equal(restored.set_params(device="cpu").predict(X), expected)


def test_pickled_model_continues_training_exactly(data):
    """Weights, solver state, K-FAC's generator and the shuffling all survive pickling."""
    X, y = data
    original = fitted(data, warm_start=True)
    restored = pickle.loads(pickle.dumps(original))
    for reg in (original, restored):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reg.fit(X, y)
    for a, b in zip(weights(original), weights(restored)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_set_params_device_moves_the_fitted_model_at_predict(data, no_gpu):
    X = data[0]
    ae = KFACAutoencoder(encoder_layer_sizes=(4, 2), max_iter=2, device="cpu",
                         random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ae.fit(X)
    expected_codes, expected = ae.transform(X), ae.predict(X)
    old_model = ae.model_
    for method in ("transform", "predict", "inverse_transform"):
        ae.device_ = torch.device("cuda", 0)  # pretend it lives on a GPU ...
        ae.set_params(device="cpu")  # ... and ask for the CPU
        if method == "inverse_transform":
            result = ae.inverse_transform(expected_codes)
        else:
            result = getattr(ae, method)(X)
        assert ae.device_ == torch.device("cpu")
        np.testing.assert_allclose(result, expected_codes if method == "transform"
                                   else expected, rtol=1e-6)
    assert ae.model_ is not old_model  # it was moved (a copy), not left in place
    assert all(p is q for p, q in zip(ae.solver_.params, ae.model_.parameters()))


def test_warm_start_on_another_device_moves_model_and_solver(data, no_gpu):
    X, y = data
    twin, moved = fitted(data, warm_start=True), fitted(data, warm_start=True)
    moved.device_ = torch.device("cuda", 0)  # pretend it was fitted on a GPU
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twin.fit(X, y)
        moved.fit(X, y)
    assert moved.device_ == torch.device("cpu")
    # The solver still drives the model's own parameters, with its state intact.
    assert all(p is q for p, q in zip(moved.solver_.params, moved.model_.parameters()))
    for a, b in zip(weights(twin), weights(moved)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_pending_artificial_batch_keeps_no_view_of_the_data_set(no_gpu):
    X, y = make_regression(n_samples=4000, n_features=50, random_state=0)
    y = y / y.std()

    def chunked(between: str | None):
        reg = KFACRegressor(hidden_layer_sizes=(8,), batch_size=50, artificial_batch_size=1000,
                            device="cpu", random_state=0)
        reg.partial_fit(X[:2900], y[:2900])  # 2 updates, 900 rows pending
        if between == "move":  # the pending gradients and rows move with the model
            reg.device_ = torch.device("cuda", 0)
        if between == "pickle":
            blob = pickle.dumps(reg)
            # Pending rows copied: a pickle far smaller than the data set (it held the
            # whole shuffled copy once per pending micro-batch before).
            assert len(blob) < X.astype(np.float32).nbytes / 4
            held = tensors_in(reg.solver_.curvature.rows)
            assert held and all(
                t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in held)
            reg = pickle.loads(blob)
        reg.partial_fit(X[2900:], y[2900:])  # completes the pending update
        assert reg.n_updates_ == 4
        return weights(reg)

    reference = chunked(None)
    for between in ("pickle", "move"):
        for a, b in zip(reference, chunked(between)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_checkpoint_in_the_middle_of_an_update_keeps_no_view_of_the_data_set(tmp_path):
    from skkfac.callbacks import Checkpoint

    X, y = make_regression(n_samples=4000, n_features=50, random_state=0)
    # 3000 samples per update: the first epoch ends with 1000 rows pending.
    reg = KFACRegressor(hidden_layer_sizes=(8,), batch_size=50, artificial_batch_size=3000,
                        max_iter=1, device="cpu", random_state=0,
                        callbacks=[Checkpoint(tmp_path / "epoch-{epoch}.pkl", at_end=False)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg.fit(X, y / y.std())
    saved = tmp_path / "epoch-1.pkl"
    assert saved.stat().st_size < X.astype(np.float32).nbytes / 4
    assert Checkpoint.load(saved).n_updates_ == 1
