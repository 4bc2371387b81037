"""K-FAC's optimizer state: state_dict round trips bit for bit, pickling, step reports."""

import copy
import io
import pickle

import pytest
import torch

from skkfac import KFAC
from skkfac.nn import build_mlp
from skkfac.solvers.spec import StepReport


def batches(n_updates, dtype, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(40, 5, generator=g, dtype=dtype),
             torch.randint(0, 3, (40,), generator=g)) for _ in range(n_updates)]


def make(seed, dtype, **kwargs):
    model = build_mlp(5, (7, 6), 3, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    params = dict(curvature_batch_size=16, inv_update_freq=4, damping_adapt_interval=3)
    params.update(kwargs)
    return model, KFAC(model, "cross_entropy", random_state=seed, **params)


def train(opt, data):
    reports = []
    for X, y in data:
        opt.accumulate(X, y)
        reports.append(opt.step())
    return reports


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("options", [{}, {"adaptive_step": False, "kl_clip": 0.01},
                                     {"damping_scheme": "eigen", "alpha": 1e-3},
                                     {"precondition_precision": "bfloat16"},
                                     # the first update after the restore refreshes the basis
                                     {"damping_scheme": "ekfac", "inv_update_freq": 7}])
def test_state_dict_round_trip_continues_bit_for_bit(dtype, options):
    data = batches(12, dtype)
    model, opt = make(0, dtype, **options)
    train(opt, data[:7])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)  # weights_only: plain tensors and numbers

    fresh_model, fresh = make(1, dtype, **options)  # another init and another seed
    assert_resumes_bit_for_bit(saved, (model, opt), (fresh_model, fresh), data[7:])


def assert_resumes_bit_for_bit(saved, original, other, data):
    """Load ``saved`` into ``other``; training both on ``data`` gives equal weights."""
    other[0].load_state_dict(saved["model"])
    other[1].load_state_dict(saved["optimizer"])
    train(original[1], data)
    train(other[1], data)
    for a, b in zip(original[0].parameters(), other[0].parameters()):
        assert torch.equal(a, b)
    assert torch.equal(original[1].damping, other[1].damping)


def test_state_lives_in_state_and_hyperparameters_in_param_groups():
    _, opt = make(0, torch.float64)
    train(opt, batches(2, torch.float64))
    state = opt.state_dict()
    group = state["param_groups"][0]
    assert {"step", "curvature_scale", "inverse_damping"}.isdisjoint(group)
    assert group["damping"] == 0.1  # the initial value; the adapted one is state
    shared = state["state"][0]
    assert shared["step"] == 2 and shared["rng_state"].dtype == torch.uint8
    for index, block in zip((0, 2, 4), opt.blocks):  # the weights' entries
        assert state["state"][index]["A"] is block.A and state["state"][index]["G"] is block.G
        assert set(state["state"][index]["inverse"]) == {"A_inv", "G_inv"}
    assert "rng_state" not in opt.state[opt.params[0]]  # written for state_dict only


def test_pickle_round_trip_continues_identically():
    data = batches(6, torch.float64)
    model, opt = make(0, torch.float64)
    train(opt, data[:3])
    clone = pickle.loads(pickle.dumps(opt))
    train(opt, data[3:])
    train(clone, data[3:])
    for a, b in zip(model.parameters(), clone.model.parameters()):
        assert torch.equal(a, b)


def test_generator_state_from_another_device_reseeds_deterministically():
    _, opt = make(0, torch.float64)
    cuda_like_state = torch.arange(16, dtype=torch.uint8)  # a Philox state: not a CPU one
    opt.curvature.set_generator_state(cuda_like_state)
    first = torch.rand(3, generator=opt.generator)
    opt.curvature.set_generator_state(cuda_like_state)
    assert torch.equal(first, torch.rand(3, generator=opt.generator))
    assert opt.generator.device == opt.device


def test_step_returns_a_report_with_device_values():
    _, opt = make(0, torch.float64, damping_adapt_interval=2)
    reports = train(opt, batches(2, torch.float64))
    assert all(isinstance(r, StepReport) for r in reports)
    first, second = (r.fetch() for r in reports)
    assert first["rho"] is not None  # the adaptive step evaluates the model every update
    assert first["damping"] == 0.1 and second["damping"] != 0.1  # adapted at update 2
    _, fixed = make(0, torch.float64, adaptive_step=False, damping_adapt_interval=2)
    rhos = [r.fetch()["rho"] for r in train(fixed, batches(2, torch.float64))]
    assert rhos[0] is None and rhos[1] is not None  # measured to adapt only
    assert first["accepted"] and first["loss_after"] < first["loss_before"]
    assert second["damping"] == pytest.approx(float(opt.damping))
    assert isinstance(reports[1].loss_before, torch.Tensor)
    assert opt.step() is None  # nothing accumulated
    assert not hasattr(opt, "n_rejected_steps")


def test_load_state_dict_keeps_float32_factors_of_a_bfloat16_model():
    data = [(X.bfloat16(), y) for X, y in batches(3, torch.float32)]
    _, opt = make(0, torch.bfloat16)
    train(opt, data[:2])
    assert opt.blocks[0].A.dtype == torch.float32
    state = copy.deepcopy(opt.state_dict())
    _, fresh = make(1, torch.bfloat16)
    fresh.load_state_dict(state)
    assert fresh.blocks[0].A.dtype == torch.float32
    assert torch.equal(fresh.blocks[0].A, opt.blocks[0].A)


def test_state_dict_round_trip_with_the_low_rank_preconditioning():
    """Batches of 8 rows on 30-40-30 layers take the low-rank route (only the factor
    inverses are state; the rows of an update are not): still bit for bit."""
    g = torch.Generator().manual_seed(4)
    data = [(X, X) for X in torch.randn(10, 8, 30, generator=g, dtype=torch.float64)]

    def fresh(seed):
        model = build_mlp(30, (40,), 30, generator=torch.Generator().manual_seed(seed),
                          dtype=torch.float64)
        return model, KFAC(model, random_state=seed, inv_update_freq=3)

    model, opt = fresh(0)
    assert all(limit > 8 for limit in opt.curvature.low_rank_rows)
    train(opt, data[:5])
    saved = copy.deepcopy({"model": model.state_dict(), "optimizer": opt.state_dict()})
    assert_resumes_bit_for_bit(saved, (model, opt), fresh(1), data[5:])
