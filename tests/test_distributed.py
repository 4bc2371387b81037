"""Data-parallel K-FAC: 2 gloo ranks on half a batch each = 1 process on the whole batch."""

import functools
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from skkfac import KFAC, KFACClassifier, KFACRegressor
from skkfac.distributed import Communicator, fit_data_parallel, shard_indices
from skkfac.nn import build_mlp

BATCH, N_UPDATES = 24, 6
SETTINGS = dict(fisher="exact", curvature_batch_size=None, adaptive_step=True,
                adapt_damping=True, damping_adapt_interval=1, inv_update_freq=2,
                damping=0.05, random_state=0)
#: name -> (KFAC options, wrap the model in DistributedDataParallel)
CASES = {
    "tikhonov, inverses shared out": (dict(damping_scheme="tikhonov"), False),
    "eigen, inverses shared out": (dict(damping_scheme="eigen"), False),
    "tikhonov, inverses on every rank": (dict(damping_scheme="tikhonov",
                                              distribute_inverses=False), False),
    "tikhonov, DistributedDataParallel": (dict(damping_scheme="tikhonov"), True),
}


def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 5, generator=g, dtype=torch.float64),
             torch.randn(BATCH, 3, generator=g, dtype=torch.float64))
            for _ in range(N_UPDATES)]


def train(options: dict, ddp: bool, rows) -> list[dict]:
    """Weights and decisions after each update, accumulating ``rows`` of every batch."""
    model = build_mlp(5, (8, 6), 3, "tanh", generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64)
    trained = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    opt = KFAC(trained, "squared_error", **SETTINGS, **options)
    history = []
    for X, y in batches():
        X, y = X[rows], y[rows]
        half = len(X) // 2
        opt.accumulate(X[:half], y[:half])  # two micro-batches per update
        opt.accumulate(X[half:], y[half:])
        report = opt.step().fetch()
        history.append(dict(weights=[p.detach().clone() for p in model.parameters()],
                            **report))
    return history


def _rank(rank, world_size, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    try:
        share = BATCH // world_size
        rows = slice(rank * share, (rank + 1) * share)
        results = {name: train(options, ddp, rows) for name, (options, ddp) in CASES.items()}
        results["max_time"] = fit_with_time_budget(rank, world_size)
        results["max_wall_time"] = fit_with_wall_deadline(rank, world_size)
        results["sampled_after_load"] = sample_after_load_state_dict()
        results["bf16_mixed"] = train_mixed_precision([rows])
        try:
            KFACRegressor(early_stopping=True).fit(*regression_data(50))
            results["early_stopping"] = "fitted"
        except ValueError as error:
            results["early_stopping"] = str(error)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def train_mixed_precision(parts) -> list[dict]:
    """K-FAC with precision='bf16-mixed' through DistributedDataParallel (float32 weights
    under bfloat16 autocast), accumulating the rows ``parts`` of every batch in turn."""
    model = build_mlp(5, (8, 6), 3, "tanh", generator=torch.Generator().manual_seed(0))
    trained = (torch.nn.parallel.DistributedDataParallel(model) if dist.is_initialized()
               else model)
    opt = KFAC(trained, "squared_error", precision="bf16-mixed", **SETTINGS)
    history = []
    for X, y in batches():
        for rows in parts:
            opt.accumulate(X[rows].float(), y[rows].float())
        report = opt.step().fetch()
        history.append(dict(weights=[p.detach().clone() for p in model.parameters()],
                            **report))
    return history


def fit_with_time_budget(rank, world_size):
    """An estimator fitted on this rank's shard with max_time (the trainer's agreement)."""
    X, y = regression_data(400)
    rows = shard_indices(len(X), rank, world_size)
    estimator = KFACRegressor(hidden_layer_sizes=(16,), batch_size=20, max_iter=10**6,
                              tol=0.0, n_iter_no_change=10**6, max_time=0.5,
                              random_state=0, device="cpu").fit(X[rows], y[rows])
    return dict(stop_reason=estimator.stop_reason_, n_updates=estimator.n_updates_,
                train_time=estimator.train_time_,
                weights=[p.detach().clone() for p in estimator.model_.parameters()])


def fit_with_wall_deadline(rank, world_size):
    """max_wall_time from clocks that started 0.3 s apart: the ranks still stop together."""
    import time

    X, y = regression_data(400)
    rows = shard_indices(len(X), rank, world_size)
    time.sleep(0.3 * rank)
    estimator = KFACRegressor(hidden_layer_sizes=(16,), batch_size=20, max_iter=10**6,
                              tol=0.0, n_iter_no_change=10**6, max_wall_time=1.0,
                              random_state=0, device="cpu").fit(X[rows], y[rows])
    return dict(stop_reason=estimator.stop_reason_, n_updates=estimator.n_updates_,
                weights=[p.detach().clone() for p in estimator.model_.parameters()])


def sample_after_load_state_dict():
    """Targets sampled by an optimizer restored from rank 0's state_dict."""
    model = build_mlp(5, (4,), 3, generator=torch.Generator().manual_seed(0))
    opt = KFAC(model, "squared_error", random_state=0)
    state = [None]
    if dist.get_rank() == 0:
        state = [opt.state_dict()]
    dist.broadcast_object_list(state, src=0)
    opt.load_state_dict(state[0])
    return opt.loss.sample_targets(torch.zeros(4, 3), generator=opt.generator)


@functools.lru_cache(maxsize=1)
def run_ranks(world_size=2):
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(_rank, nprocs=world_size, start_method="spawn",
                           args=(world_size, os.path.join(folder, "init"), folder))
        return [torch.load(Path(folder) / f"rank{r}.pt") for r in range(world_size)]


def test_two_ranks_make_the_updates_of_one_process_on_the_whole_batch():
    """Also: an estimator with max_time on each rank's shard stops on the same update."""
    ranks = run_ranks()
    for name, (options, _) in CASES.items():
        reference = train(options, False, slice(None))
        adapted = {step["damping"] for step in reference}
        assert len(adapted) > 2, "damping adaptation must take part"
        for rank in ranks:
            for mine, expected in zip(rank[name], reference):
                for a, b in zip(mine["weights"], expected["weights"]):
                    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
                assert mine["accepted"] == expected["accepted"]
                for key in ("damping", "rho", "step_size", "momentum", "loss_before",
                            "loss_after"):
                    assert mine[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-13), key
        # The ranks hold bit-identical weights: every decision was taken together.
        for a, b in zip(ranks[0][name][-1]["weights"], ranks[1][name][-1]["weights"]):
            assert torch.equal(a, b)
    # With a time budget, the ranks stop on the same update (the slowest rank's clock).
    budgeted = [rank["max_time"] for rank in ranks]
    assert [b["stop_reason"] for b in budgeted] == ["max_time", "max_time"]
    assert budgeted[0]["n_updates"] == budgeted[1]["n_updates"] > 1
    assert budgeted[0]["train_time"] == budgeted[1]["train_time"] >= 0.5
    for a, b in zip(budgeted[0]["weights"], budgeted[1]["weights"]):
        assert torch.equal(a, b)


def test_two_ranks_train_in_bf16_mixed_precision_together():
    """bf16-mixed composes with data-parallel training: the ranks stay bit-identical, and
    make the updates of one process accumulating their two halves of each batch. (Not
    of one process on the whole batch at once: the bfloat16 rounding of each half's
    weight gradient differs from the whole's, as with artificial batches.)"""
    first, second = (rank["bf16_mixed"] for rank in run_ranks())
    half = BATCH // 2
    reference = train_mixed_precision([slice(0, half), slice(half, None)])
    for a, b in zip(first[-1]["weights"], second[-1]["weights"]):
        assert torch.equal(a, b)
    for mine, expected in zip(first, reference):
        assert mine["accepted"] == expected["accepted"]
        assert mine["rho"] == pytest.approx(expected["rho"], rel=1e-5)
        for a, b in zip(mine["weights"], expected["weights"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert reference[-1]["loss_after"] < 0.7 * reference[0]["loss_before"]


def test_communicator_is_inactive_in_a_single_process():
    comm = Communicator()
    assert not comm.active and comm.world_size == 1
    values = torch.tensor([1.0, 2.0])
    comm.all_reduce([values])
    assert values.tolist() == [1.0, 2.0] and comm.sum(5) == 5 and comm.max(2.5) == 2.5
    total = torch.tensor(6.0)
    assert comm.global_sum(total, 3) == (total, 3)
    opt = KFAC(build_mlp(2, (), 1), "squared_error")
    assert not opt.communicator.active


def test_shards_have_equal_sizes_and_cover_the_rows():
    shards = [shard_indices(11, r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert sorted(np.concatenate(shards)) == list(range(9))


def regression_data(n=80):
    rng = np.random.RandomState(0)
    X = rng.randn(n, 4)
    return X, np.tanh(X @ rng.randn(4, 2)) + 0.1 * rng.randn(n, 2)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_fit_data_parallel_equals_a_single_process_fit():
    """Unshuffled, rank r's share of batch k are the rows r, r+2, ... of it: same fit."""
    X, y = regression_data()
    estimator = KFACRegressor(hidden_layer_sizes=(6,), batch_size=40, artificial_batch_size=40,
                              max_iter=3,
                              shuffle=False, fisher="exact", curvature_batch_size=None,
                              dtype="float64", random_state=0, device="cpu")
    parallel = fit_data_parallel(estimator, X, y, n_processes=2)
    single = KFACRegressor(**estimator.get_params()).fit(X, y)
    assert parallel.batch_size == 40 and not hasattr(estimator, "model_")
    assert parallel.n_updates_ == single.n_updates_ == 6
    np.testing.assert_allclose(parallel.loss_curve_, single.loss_curve_, rtol=1e-10)
    np.testing.assert_allclose(parallel.predict(X), single.predict(X), rtol=1e-9,
                               atol=1e-12)


def test_fit_data_parallel_rejects_what_it_cannot_do():
    X, y = regression_data()
    with pytest.raises(ValueError, match="solver='kfac'"):
        fit_data_parallel(KFACRegressor(solver="sgd"), X, y)
    with pytest.raises(ValueError, match="multiple of n_processes"):
        fit_data_parallel(KFACRegressor(batch_size=41), X, y)
    with pytest.raises(ValueError, match="early_stopping"):
        fit_data_parallel(KFACRegressor(early_stopping=True), X, y)
    labels = np.array(["a", "b"] * 40)  # rank 0 gets every 'a', rank 1 every 'b'
    with pytest.raises(ValueError, match=r"Rank 0's shard lacks classes \['b'\]"):
        fit_data_parallel(KFACClassifier(batch_size=40), X, labels)


def test_ranks_agree_on_max_wall_time_and_refuse_early_stopping():
    ranks = run_ranks()
    budgeted = [rank["max_wall_time"] for rank in ranks]
    assert [b["stop_reason"] for b in budgeted] == ["max_wall_time", "max_wall_time"]
    assert budgeted[0]["n_updates"] == budgeted[1]["n_updates"]
    for a, b in zip(budgeted[0]["weights"], budgeted[1]["weights"]):
        assert torch.equal(a, b)
    for rank in ranks:
        assert "early_stopping=True is not supported in data-parallel" in rank["early_stopping"]


def test_ranks_sample_apart_after_load_state_dict():
    first, second = (rank["sampled_after_load"] for rank in run_ranks())
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("world_size, rows", [(2, 64), (3, 43), (5, 26), (7, 19)])
def test_curvature_rows_need_not_split_evenly(world_size, rows):
    """The default curvature_batch_size is accepted by any number of processes."""
    from skkfac.distributed import _per_rank_params

    params = _per_rank_params(KFACRegressor(batch_size=210 * world_size), 0, world_size)
    assert params == {"batch_size": 210, "curvature_batch_size": rows}


def test_automatic_batch_size_is_the_single_process_rule():
    """batch_size='auto' follows K-FAC's rule for the network (not a constant 1000)."""
    from skkfac.distributed import _global_auto_batch_size, _per_rank_params

    X = np.random.RandomState(0).rand(6000, 50)
    y = X[:, :3]
    estimator = KFACRegressor(hidden_layer_sizes=(400, 400), max_iter=1, random_state=0)
    auto = _global_auto_batch_size(estimator, X, y, 2)
    single = KFACRegressor(**estimator.get_params()).fit(X[:500], y[:500])
    assert auto == single.solver_.preferred_batch_size() != 1000
    assert _per_rank_params(estimator, auto, 2)["batch_size"] == auto // 2
    assert not hasattr(estimator, "model_")  # the estimator itself is not fitted
