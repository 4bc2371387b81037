"""The benchmark suite (``benchmarks/``) and the search spaces (``skkfac.search``).

A smoke test runs the quick path end to end with even tinier budgets; the other tests
cover the pieces with logic of their own: resuming a search from its CSV, the verdict
rules (spreads, floor, time to target, budget rule), the training-set loss, the GPU
check on fixture data, the ``max_time`` criterion, exact update budgets and the
crash-safe CSV log.
"""

from __future__ import annotations

import gzip
import json
import math
import pickle
import struct
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` lives at the root

from benchmarks import budgets, compare, records, report, tune
from benchmarks.batch_size import train_for_updates
from benchmarks.problems import get_problem
from benchmarks.solvers import label, registered_solvers
from benchmarks.time_budget import budget_ok
from benchmarks.trials import is_diverged
from skkfac.search import kfac_search_space, search_space, sgd_search_space

# -- search spaces ------------------------------------------------------------------------


def test_search_spaces_cover_the_useful_ranges_and_cap_batch_size():
    kfac = kfac_search_space()
    assert set(kfac) == {"learning_rate_init", "batch_size", "momentum_rate", "momentum_max",
                         "damping"}
    assert kfac["batch_size"].bounds == (250, 8000)
    assert kfac["learning_rate_init"].bounds == (0.2, 3.0)  # around the adaptive optimum
    assert kfac["learning_rate_init"].prior == "log-uniform"
    assert kfac["damping"].prior == "log-uniform"
    sgd = sgd_search_space(n_samples=1000)
    assert set(sgd) == {"learning_rate_init", "batch_size", "momentum"}
    assert sgd["batch_size"].bounds == (16, 1000)
    assert sgd["momentum"].bounds == (0.1, 0.999)
    small = kfac_search_space(n_samples=100)  # smaller than the lower end
    low, high = small["batch_size"].bounds
    assert 1 <= low < high == 100
    assert search_space("sgd", 500)["batch_size"].bounds == (16, 500)
    assert search_space("sgd", 100)["batch_size"].bounds == (16, 100)
    assert search_space("sgd", 10)["batch_size"].bounds == (1, 10)  # below the lower end
    with pytest.raises(ValueError):
        search_space("no-such-solver")
    with pytest.raises(ValueError):
        sgd_search_space(n_samples=1)


def test_search_spaces_include_the_ends_the_benchmark_searches_reached():
    # Earlier benchmark searches put their best trials at these ends' former values.
    space = {solver: search_space(solver, 50000) for solver in registered_solvers()}
    assert space["sgd"]["learning_rate_init"].bounds[0] == 1e-4
    assert space["sgd"]["batch_size"].bounds[0] == 16
    assert space["sgd"]["momentum"].bounds[1] == 0.999
    assert space["kfac"]["learning_rate_init"].bounds[1] == 3.0
    assert space["kfac"]["momentum_rate"].bounds[1] == 3.0
    assert space["kfac"]["momentum_max"].bounds[1] == 0.99
    assert space["kfac"]["damping"].bounds[1] == 3.0
    assert space["adam"]["learning_rate_init"].bounds[0] == 1e-5


def test_solver_list_comes_from_the_registry():
    from skkfac.solvers import SOLVERS

    assert set(registered_solvers()) == set(SOLVERS) and registered_solvers()[0] == "kfac"
    assert label("kfac") == "K-FAC" and label("some_new_solver") == "some_new_solver"


def test_problem_budgets_meet_the_protocol():
    mnist, regression, cifar = (budgets.problem_budget(p)
                                for p in ("mnist_ae", "regression", "cifar10"))
    assert mnist.compare_time >= 110 and regression.compare_time >= 55
    assert cifar.compare_time >= 170
    assert mnist.n_trials >= 24 and regression.n_trials >= 24 and cifar.n_trials >= 12
    assert budgets.problem_budget("protein") == regression
    assert all(b.seeds >= 3 for b in (mnist, regression, cifar))
    assert budgets.problem_budget("digits") == budgets.DEFAULT


def test_bayessearchcv_works_with_our_estimators():
    """skopt 0.10.2's BayesSearchCV runs unchanged with scikit-learn and skkfac."""
    from sklearn.datasets import make_regression
    from sklearn.model_selection import PredefinedSplit
    from skopt import BayesSearchCV

    from skkfac import KFACRegressor

    X, y = make_regression(n_samples=200, n_features=4, random_state=0)
    y = y / y.std()
    fold = np.r_[np.full(150, -1), np.zeros(50, dtype=int)]
    search = BayesSearchCV(
        KFACRegressor(hidden_layer_sizes=(8,), max_time=0.05, device="cpu", random_state=0),
        search_space("kfac", 150), n_iter=2, cv=PredefinedSplit(fold),
        scoring="neg_mean_squared_error", refit=False, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search.fit(X, y)
    assert len(search.cv_results_["params"]) == 2
    assert set(search.best_params_) == set(search_space("kfac"))


# -- crash-safe records -------------------------------------------------------------------


def test_csv_log_survives_a_torn_last_line(tmp_path):
    log = records.CsvLog(tmp_path / "x.csv", ["a", "b"])
    log.append({"a": 1, "b": 0.5})
    with open(log.path, "a") as handle:
        handle.write("2,0.2")  # a crash in the middle of a write: no newline
    assert log.read().to_dict("records") == [{"a": 1, "b": 0.5}]
    log.append({"a": 3, "b": float("nan")})
    frame = log.read()
    assert frame["a"].tolist() == [1, 3] and np.isnan(frame["b"].iloc[1])
    with pytest.raises(ValueError):
        log.append({"c": 1})


def test_settings_mismatch_refuses_to_mix_results(tmp_path):
    path = tmp_path / "tune_sgd.json"
    records.check_settings(path, {"max_time": 20}, fresh=False)
    records.check_settings(path, {"max_time": 20}, fresh=False)  # same: fine
    with pytest.raises(SystemExit, match="--fresh"):
        records.check_settings(path, {"max_time": 10}, fresh=False)
    records.check_settings(path, {"max_time": 10}, fresh=True)
    assert records.read_settings(path) == {"max_time": 10}


# -- resuming a search ----------------------------------------------------------------------


def _toy_space():
    from skopt.space import Integer, Real

    return {"learning_rate_init": Real(1e-3, 1.0, prior="log-uniform"),
            "batch_size": Integer(8, 512, prior="log-uniform")}


def _toy_objective(calls):
    def evaluate(params, trial):
        calls.append(trial)
        loss = (np.log10(params["learning_rate_init"]) + 1.5) ** 2 + \
            (np.log2(params["batch_size"]) - 6) ** 2 / 10 + 0.01
        return {"val_loss": loss, "objective": float(np.log10(loss))}
    return evaluate


def _search(path, n_trials, evaluate):
    space = _toy_space()
    log = records.CsvLog(path, tune.tune_columns(space))
    return tune.run_search(space, evaluate, log, n_trials=n_trials, n_initial_points=3,
                           random_state=0, progress=lambda message: None)


def test_interrupted_search_resumes_from_csv_without_losing_trials(tmp_path):
    # Reference: one uninterrupted search of 5 trials (3 random, 2 proposed by the GP),
    # numbered from 1.
    calls = []
    _, reference = _search(tmp_path / "ref.csv", 5, _toy_objective(calls))
    assert calls == [1, 2, 3, 4, 5] and len(reference) == 5
    assert reference["trial"].tolist() == [1, 2, 3, 4, 5]

    # Interrupted during trial 4: trials 1-3 are on disk.
    calls = []
    objective = _toy_objective(calls)

    def interrupted(params, trial):
        if trial == 4:
            raise KeyboardInterrupt
        return objective(params, trial)

    path = tmp_path / "tune.csv"
    with pytest.raises(KeyboardInterrupt):
        _search(path, 5, interrupted)
    assert len(pd.read_csv(path)) == 3

    # Resume: only the missing trials run; the CSV is replayed into the optimiser.
    calls = []
    optimizer, resumed = _search(path, 5, _toy_objective(calls))
    assert calls == [4, 5]
    assert len(optimizer.Xi) == 5 and len(resumed) == 5
    # The replay repeats the optimiser's random draws: same trials as uninterrupted.
    columns = ["trial", "learning_rate_init", "batch_size", "val_loss"]
    pd.testing.assert_frame_equal(resumed[columns], reference[columns])

    # Asking for more trials extends the same search; asking for fewer runs nothing.
    calls = []
    _search(path, 6, _toy_objective(calls))
    assert calls == [6]
    calls = []
    optimizer, trials = _search(path, 3, _toy_objective(calls))
    assert calls == [] and len(trials) == 6 and len(optimizer.Xi) == 6


def test_every_search_starts_from_the_solvers_defaults(tmp_path, monkeypatch):
    from skkfac.search import search_space

    problem = get_problem("digits")
    data = problem.load()
    n_train = len(data.X_train)
    adam = tune.default_point(problem, data, "adam", search_space("adam", n_samples=n_train))
    assert adam == {"learning_rate_init": 1e-3, "batch_size": min(200, n_train),
                    "beta_1": 0.9}
    kfac_space = search_space("kfac", n_samples=n_train)
    kfac = tune.default_point(problem, data, "kfac", kfac_space)
    estimator = problem.make_estimator("kfac")
    assert kfac["damping"] == estimator.damping
    assert estimator.learning_rate_init is None and kfac["learning_rate_init"] == 1.0
    # 'auto' resolved as a fit resolves it, then held within the space
    low, high = kfac_space["batch_size"].low, kfac_space["batch_size"].high
    assert isinstance(kfac["batch_size"], int) and low <= kfac["batch_size"] <= high

    # The defaults trial runs once, is trial 1 of a new search and counts towards n_trials;
    # the search then replays it like any other trial.
    space = _toy_space()
    log = records.CsvLog(tmp_path / "tune.csv", tune.tune_columns(space))
    calls = []
    evaluate = _toy_objective(calls)
    point = {"learning_rate_init": 0.5, "batch_size": 300}
    monkeypatch.setattr(tune, "default_point", lambda *args: point)
    for _ in range(2):
        tune.run_default_trial(problem, data, "adam", space, evaluate, log,
                               label="toy", progress=lambda message: None)
    assert calls == [1]
    optimizer, trials = tune.run_search(space, evaluate, log, n_trials=4,
                                        n_initial_points=2, random_state=0,
                                        progress=lambda message: None)
    assert calls == [1, 2, 3, 4] and len(optimizer.Xi) == 4
    first = trials.iloc[0]
    assert (first["learning_rate_init"], first["batch_size"]) == (0.5, 300)


# -- verdicts -------------------------------------------------------------------------------


def _curve(solver, trial, seed_index, times, losses, train=None):
    return pd.DataFrame({"solver": solver, "trial": trial, "seed_index": seed_index,
                         "time": times, "update": np.arange(len(times)) * 10,
                         "eval_loss": losses,
                         "train_set_loss": train if train is not None else losses})


def _runs_from(curves, params=None):
    rows = []
    for curve in curves:
        first = curve.iloc[0]
        rows.append({"solver": first["solver"], "trial": first["trial"], "rank": 1,
                     "seed_index": first["seed_index"], "params": json.dumps(params or {}),
                     "tune_val_loss": 1.0, "final_loss": curve["eval_loss"].iloc[-1],
                     "final_train_loss": curve["train_set_loss"].iloc[-1],
                     "final_accuracy": math.nan, "n_updates": 10,
                     "train_time": curve["time"].iloc[-1]})
    return pd.DataFrame(rows)


def test_spread_and_winner_need_separated_spreads():
    assert compare.spread([3.0, 1.0, 2.0, math.nan]) == {"median": 2.0, "min": 1.0,
                                                        "max": 3.0, "n": 3}
    assert compare.spread([])["n"] == 0
    separated = {"a": compare.spread([1.0, 1.1, 1.2]), "b": compare.spread([1.3, 1.5]),
                 "c": compare.spread([2.0, 3.0])}
    assert compare.winner(separated) == {"winner": "a", "ranking": ["a", "b", "c"],
                                         "overlapping": []}
    overlapping = {"a": compare.spread([1.0, 1.4]), "b": compare.spread([1.3, 1.5]),
                   "c": compare.spread([2.0])}
    result = compare.winner(overlapping)
    assert result["winner"] is None and result["overlapping"] == ["b"]
    assert compare.winner({"a": compare.spread([1.0])})["winner"] is None  # one solver


def test_curve_rules_time_to_target_floor_and_budget():
    curve = _curve("sgd", 1, 0, [0, 2.5, 5, 7.5, 10], [1.0, 0.5, 0.3, 0.21, 0.2])
    assert compare.first_time_at_or_below(curve, 0.3) == 5
    assert compare.first_time_at_or_below(curve, 0.1) == math.inf
    # 0.5 at t=2.5 (a quarter of 10 s) is not within 10 % of the final 0.2.
    assert not compare.reaches_floor_early(curve, 10)
    flat = _curve("sgd", 1, 0, [0, 2.5, 5, 10], [1.0, 0.21, 0.2, 0.2])
    assert compare.reaches_floor_early(flat, 10)
    # At 3/4 of the budget (7.5 s) the loss was 0.21: a 5 % change to the final 0.2.
    assert compare.last_quarter_change(curve, 10) == pytest.approx(0.05)
    assert compare.last_quarter_change(flat, 10) == pytest.approx(0.0)


def test_verdict_three_solvers_with_seeds():
    grid = [0, 2.5, 5, 7.5, 10]
    curves = [
        # K-FAC: clearly best, reaches Adam's median final loss (0.20) at 5 s or 7.5 s.
        _curve("kfac", 3, 0, grid, [1.0, 0.4, 0.2, 0.12, 0.10], [1, .4, .2, .11, .09]),
        _curve("kfac", 3, 1, grid, [1.0, 0.4, 0.25, 0.15, 0.11], [1, .4, .2, .13, .10]),
        _curve("kfac", 3, 2, grid, [1.0, 0.5, 0.3, 0.2, 0.12], [1, .5, .3, .2, .11]),
        # Adam: the best first-order solver; flat over the last quarter (< 2 %).
        _curve("adam", 1, 0, grid, [1.0, 0.5, 0.3, 0.201, 0.20]),
        _curve("adam", 1, 1, grid, [1.0, 0.5, 0.3, 0.191, 0.19]),
        _curve("adam", 1, 2, grid, [1.0, 0.5, 0.3, 0.211, 0.21]),
        # SGD: worse, one seed never reaches the target.
        _curve("sgd", 2, 0, grid, [1.0, 0.6, 0.4, 0.3, 0.25]),
        _curve("sgd", 2, 1, grid, [1.0, 0.6, 0.4, 0.3, 0.19]),
        _curve("sgd", 2, 2, grid, [1.0, 0.6, 0.4, 0.35, 0.30]),
    ]
    histories = pd.concat(curves)
    runs = _runs_from(curves)
    verdict = compare.compute_verdict(runs, histories, 10.0)
    assert verdict["target_solver"] == "adam" and verdict["target"] == pytest.approx(0.20)
    assert verdict["verdicts"]["held-out loss"]["winner"] == "kfac"
    assert verdict["verdicts"]["training loss"]["winner"] == "kfac"
    kfac = verdict["solvers"]["kfac"]
    assert kfac["held-out loss"] == {"median": 0.11, "min": 0.10, "max": 0.12, "n": 3}
    assert kfac["training loss"]["median"] == pytest.approx(0.10)
    assert kfac["time_to_target"]["min"] == 5 and kfac["time_to_target"]["median"] == 7.5
    sgd = verdict["solvers"]["sgd"]["time_to_target"]
    assert (sgd["reached"], sgd["runs"], sgd["median"]) == (1, 3, 10)
    assert not verdict["floor_limited"]
    assert verdict["budget_rule"]["solver"] == "adam" and verdict["budget_rule"]["holds"]
    lines = compare.format_verdict(verdict)
    text = "\n".join(lines)
    assert "verdict on the held-out loss: K-FAC wins" in text
    assert "time to target (the best first-order solver Adam's median" in text
    assert "SGD-Nesterov 10 s [10-10 s], reached in 1 of 3 runs" in text
    assert "budget rule (Adam's held-out loss" in text and ": holds (0.5 %)" in text

    # Overlapping spreads: no winner. Everyone flat from a quarter of the budget on:
    # floor-limited, and the verdict names no winner even where spreads separate.
    flat = [_curve(s, 1, i, grid, [1.0, f * 1.05, f, f, f])
            for s, finals in (("kfac", (0.10, 0.12, 0.2)), ("sgd", (0.15, 0.2, 0.3)))
            for i, f in enumerate(finals)]
    verdict = compare.compute_verdict(_runs_from(flat), pd.concat(flat), 10.0)
    assert verdict["verdicts"]["held-out loss"]["winner"] is None
    assert verdict["floor_limited"]
    text = "\n".join(compare.format_verdict(verdict))
    assert "verdict on the held-out loss: floor-limited" in text
    assert "verdict on the training loss: no winner: the spreads of K-FAC" in text


def test_chosen_configuration_is_the_best_median_over_seeds():
    runs = pd.DataFrame({"solver": ["sgd"] * 4, "trial": [1, 1, 2, 2],
                         "final_loss": [0.1, 0.5, 0.2, 0.25]})
    assert compare.choose_configs(runs) == {"sgd": 2}


# -- time budget and update budget --------------------------------------------------------


def test_time_budget_criterion():
    assert budget_ok([2.00, 2.09], 2.0, update_seconds=0.0)
    assert not budget_ok([2.00, 2.11], 2.0, update_seconds=0.0)
    assert budget_ok([2.3], 2.0, update_seconds=0.25)  # 0.1 s + one update of 0.25 s
    assert not budget_ok([1.8], 2.0, update_seconds=0.05)


@pytest.mark.parametrize("artificial", [None, 64])
def test_train_for_updates_is_exact(artificial):
    problem = get_problem("digits")
    data = problem.load()
    estimator = problem.make_estimator("kfac", batch_size=32,
                                       artificial_batch_size=artificial or 32,
                                       device="cpu", random_state=0)
    train_for_updates(estimator, data.X_train, None, 20, seed=0)
    assert estimator.n_updates_ + estimator.n_rejected_updates_ == 20


# -- training-set loss, diverged trials, problems -------------------------------------------


def test_training_set_loss_is_recorded_at_every_evaluation():
    from benchmarks.train_loss import TrainingSetLoss, training_rows

    problem = get_problem("digits")
    data = problem.load()
    callback = TrainingSetLoss(problem.loss, data.X_full)
    # A budget of several first updates: on a loaded 2-core machine one takes ~0.35 s.
    estimator = problem.make_estimator("sgd", max_time=1.0, eval_interval=0.1, device="cpu",
                                       random_state=0, learning_rate_init=0.05,
                                       callbacks=[callback])
    estimator.fit(data.X_full, eval_set=data.X_test)
    history = estimator.history_
    assert len(history) >= 3 and history["train_set_loss"].notna().all()
    # The last value is the loss of the final weights on every training row...
    assert history["train_set_loss"].iloc[-1] == pytest.approx(
        problem.loss(estimator, data.X_full), rel=1e-5)
    # ...the held-out column is still the eval_set's, and the first row is before training.
    assert history["eval_loss"].iloc[-1] == pytest.approx(
        problem.loss(estimator, data.X_test), rel=1e-5)
    assert history["train_set_loss"].iloc[0] > history["train_set_loss"].iloc[-1]
    # The evaluations do not count against the time budget.
    assert estimator.train_time_ < 1.0 + 0.5
    sample = training_rows(1000, 100, seed=0)
    assert len(set(sample)) == 100 and sample.max() < 1000
    assert len(training_rows(50, None)) == 50
    assert len(TrainingSetLoss(problem.loss, data.X_full, limit=100).X) == 100


def test_diverged_trials_are_reported_and_marked(tmp_path):
    from benchmarks.plotting import plot_tune_losses

    folder = tmp_path / "digits"
    folder.mkdir()
    pd.DataFrame({"trial": [1, 2, 3, 4], "val_loss": [0.1, math.inf, 0.2, 0.3],
                  "stop_reason": ["max_time", "diverged", "max_time", "diverged;max_time"]}
                 ).to_csv(folder / "tune_sgd.csv", index=False)
    assert report._diverged_trials(folder) == [f"{label('sgd')} trials 2, 4"]
    assert plot_tune_losses(folder, get_problem("digits")).is_file()
    assert is_diverged({"val_loss": float("nan"), "stop_reason": "max_time"})
    assert not is_diverged({"val_loss": 0.1, "stop_reason": "max_time"})


def _write_fixture_data(home: Path, seed=0) -> Path:
    """Tiny MNIST (IDX), CIFAR-10 (pickled batches) and UCI CSVs in the loaders' layouts."""
    rng = np.random.default_rng(seed)
    mnist = home / "mnist"
    mnist.mkdir(parents=True)
    for name, shape in (("train-images-idx3-ubyte", (40, 28, 28)),
                        ("t10k-images-idx3-ubyte", (12, 28, 28)),
                        ("train-labels-idx1-ubyte", (40,)), ("t10k-labels-idx1-ubyte", (12,))):
        array = rng.integers(0, 256 if len(shape) > 1 else 10, shape).astype(np.uint8)
        idx = (b"\x00\x00\x08" + bytes([array.ndim])
               + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())
        (mnist / f"{name}.gz").write_bytes(gzip.compress(idx, mtime=0))
    cifar = home / "cifar10" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name, n in [*((f"data_batch_{i}", 8) for i in range(1, 6)), ("test_batch", 10)]:
        batch = {b"labels": [int(v) for v in rng.integers(0, 10, n)],
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        (cifar / name).write_bytes(pickle.dumps(batch, protocol=2))
    (home / "uci").mkdir()
    for name, features in (("keggundirected", 27), ("protein", 9)):
        table = rng.normal(size=(80, features + 1))
        table[:, -1] = table[:, :3] @ [1.0, -1.0, 0.5]
        np.savetxt(home / "uci" / f"{name}.csv", table, delimiter=",")
    return home


def test_protein_is_a_second_regression_problem(tmp_path):
    home = _write_fixture_data(tmp_path / "data")
    data = get_problem("protein").load(home)
    assert data.dataset == "UCI protein" and "'protein'" in data.note
    assert data.X_train.shape[1] == 9
    assert get_problem("protein").make_estimator("sgd").hidden_layer_sizes == \
        get_problem("regression").layers


def test_gpu_check_on_cpu_with_fixture_data(tmp_path):
    """The GPU check end to end on the CPU: tiny data and networks, 0.05 s budgets."""
    import subprocess

    from benchmarks.gpu_check import PROBLEMS, planned_runs, run_gpu_check

    home = _write_fixture_data(tmp_path / "data")
    path = run_gpu_check(tmp_path / "gpu", data_home=home, device="cpu", max_time=0.05,
                         layers={"mnist_ae": (8, 4), "regression": (8,), "cifar10": (4,)},
                         progress=lambda message: None)
    text = path.read_text()
    assert path.name == "gpu_check_cpu.txt"
    assert "device: cpu = " in text and "torch " in text
    for name in PROBLEMS:
        problem = get_problem(name)
        assert f"({name}):" in text
        runs = planned_runs(problem)
        assert {solver for _, solver, _ in runs} >= {"kfac", "sgd"}
        for run_name, _, _ in runs:
            assert run_name in text
    assert "network 3072-4-10" in text  # CIFAR-10: ten classes
    kfac_study = planned_runs(get_problem("mnist_ae"))[0][2]
    assert kfac_study["learning_rate_init"] == 0.1809 and kfac_study["adaptive_step"] is False
    # Through the command line (the study's full regression network, 0.05 s runs).
    from benchmarks.cli import main

    assert main(["gpu", "--data-home", str(home), "--device", "cpu", "--max-time", "0.05",
                 "--problems", "regression", "--out", str(tmp_path / "cli")]) == 0
    text = (tmp_path / "cli" / "gpu" / "gpu_check_cpu.txt").read_text()
    assert "network 27-500-750-500-250-100-1" in text and "(mnist_ae)" not in text
    assert "python -m benchmarks gpu" in (tmp_path / "cli" / "commands.txt").read_text()
    # The check imports nothing from scikit-optimize (GPU machines may lack it).
    code = ("import sys, benchmarks.cli, benchmarks.gpu_check; "
            "assert 'skopt' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parents[1])


# -- end to end -----------------------------------------------------------------------------


def test_quick_path_end_to_end(tmp_path, capsys):
    from benchmarks.cli import main
    from benchmarks.quick import run_quick

    start = time.time()
    result = run_quick(tmp_path, budgets.TINY, device="cpu", progress=lambda message: None)
    elapsed = time.time() - start
    assert elapsed < 120  # ~15 s on 2 idle cores; far more means the budgets grew
    folder = tmp_path / "digits"
    solvers = registered_solvers()
    for name in ["compare_runs.csv", "compare_history.csv", "table.csv", "table.md",
                 "verdict.txt", "verdict.json", "compare_loss.png", "tune_losses.png",
                 "batch_size.csv", "batch_size_fig2.png", "batch_size_fig3.png",
                 "batch_size_fig4.png", *(f"tune_{s}.csv" for s in solvers)]:
        assert (folder / name).is_file(), name
    trials = pd.read_csv(folder / "tune_kfac.csv")
    assert trials["trial"].tolist() == list(range(1, budgets.TINY.n_trials + 1))
    runs = pd.read_csv(folder / "compare_runs.csv")
    per_solver = budgets.TINY.top_k * budgets.TINY.seeds
    assert runs["solver"].value_counts().to_dict() == {s: per_solver for s in solvers}
    assert runs["final_train_loss"].notna().all()
    assert set(runs["trial"]) <= set(trials["trial"]) | set(
        pd.read_csv(folder / "tune_sgd.csv")["trial"])
    history = pd.read_csv(folder / "compare_history.csv")
    assert history["train_set_loss"].notna().all()
    points = pd.read_csv(folder / "batch_size.csv")  # Figure 2 has every solver
    assert set(points.loc[points["experiment"] == "fig2_time", "solver"]) == set(solvers)
    assert set(points.loc[points["experiment"] == "fig4_time", "solver"]) == {"kfac"}
    assert (tmp_path / "time_budget" / "time_budget.txt").is_file()
    for solver in solvers:  # each search records the space it used: the library's
        settings = records.read_settings(folder / f"tune_{solver}.json")
        assert settings["space"] == {name: repr(dimension) for name, dimension in
                                     search_space(solver, settings["n_train"]).items()}
        assert set(pd.read_csv(folder / f"tune_{solver}.csv")) >= set(settings["space"])
    report_text = (tmp_path / "REPORT.md").read_text()
    assert "another search space" not in report_text
    assert "digits/compare_loss.png" in report_text and "verdict on the held-out loss" \
        in report_text and "time to target" in report_text and "budget rule" in report_text
    output = capsys.readouterr().out
    assert "Solver comparison" in output
    assert all(label(s) in output for s in solvers)
    # The run ends by listing where its report and figures are.
    assert output.rstrip().splitlines()[-1].strip().endswith(".png")
    assert f"{tmp_path / 'REPORT.md'}" in output and "compare_loss.png" in output
    assert result["lines"][0].startswith("each solver's best configuration")

    # Re-running compare resumes: every run is already there, nothing is retrained.
    problem = get_problem("digits")
    data = problem.load()
    before = len(pd.read_csv(folder / "compare_history.csv"))
    compare.run_compare(problem, data, folder, budgets.TINY, device="cpu",
                        progress=lambda message: None)
    assert len(pd.read_csv(folder / "compare_history.csv")) == before

    # The report sub-command through the command line.
    assert main(["report", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "REPORT.md").is_file()


def test_study_benchmark_with_fixture_data(tmp_path):
    """``python -m benchmarks study`` end to end on tiny data and networks: every
    ablation row and every budget run is written, with the machine header."""
    from benchmarks.study import BUDGET_PROBLEMS, VARIANTS, run_study

    home = _write_fixture_data(tmp_path / "data")
    ablation, budget = run_study(
        tmp_path / "study", data_home=home, seeds=1, threads=1, progress=lambda m: None,
        encoder=(8, 4), batch_size=32, seconds=0.05,
        layers={"mnist_ae": (8, 4), "cifar10": (4,)})
    text = ablation.read_text()
    assert "# cpu:" in text and "# load_start:" in text
    for variant, _, _ in VARIANTS:
        assert variant in text
    assert text.count("after 8:") == len(VARIANTS)
    text = budget.read_text()
    for name in BUDGET_PROBLEMS:
        assert f"{name} seed 0:" in text and " updates in " in text


def test_precision_benchmark_with_fixture_data(tmp_path):
    """``python -m benchmarks precision``: every solver at float32 and bf16-mixed."""
    from benchmarks.precision import PRECISIONS, run_precision
    from benchmarks.solvers import registered_solvers

    home = _write_fixture_data(tmp_path / "data")
    lines = run_precision("mnist_ae", data_home=home, budget=0.05, threads=1,
                          layers=(8, 4), progress=lambda m: None)
    assert len(lines) == len(registered_solvers()) * len(PRECISIONS)
    assert all(" updates " in line and "test loss" in line for line in lines)
    for precision in PRECISIONS:
        assert sum(f" {precision} " in line for line in lines) == len(registered_solvers())
