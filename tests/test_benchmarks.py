"""The benchmark suite (``benchmarks/``) and the search spaces (``skkfac.search``).

A smoke test runs the quick path end to end with even tinier budgets; the other tests
cover the pieces with logic of their own: resuming a search from its CSV, the verdict,
the ``max_time`` criterion, exact update budgets and the crash-safe CSV log.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` lives at the root

from benchmarks import budgets, compare, records, tune
from benchmarks.batch_size import train_for_updates
from benchmarks.problems import get_problem
from benchmarks.time_budget import budget_ok
from skkfac.search import kfac_search_space, search_space, sgd_search_space

# -- search spaces ------------------------------------------------------------------------


def test_search_spaces_cover_the_useful_ranges_and_cap_batch_size():
    kfac = kfac_search_space()
    assert set(kfac) == {"learning_rate_init", "batch_size", "momentum_rate", "momentum_max",
                         "damping"}
    assert kfac["batch_size"].bounds == (250, 8000)
    assert kfac["learning_rate_init"].bounds == (0.2, 1.5)  # around the adaptive optimum
    assert kfac["learning_rate_init"].prior == "log-uniform"
    assert kfac["damping"].prior == "log-uniform"
    sgd = sgd_search_space(n_samples=1000)
    assert set(sgd) == {"learning_rate_init", "batch_size", "momentum"}
    assert sgd["batch_size"].bounds == (32, 1000)
    assert sgd["momentum"].bounds == (0.1, 0.99)
    small = kfac_search_space(n_samples=100)  # smaller than the lower end
    low, high = small["batch_size"].bounds
    assert 1 <= low < high == 100
    assert search_space("sgd", 500)["batch_size"].bounds == (32, 500)
    with pytest.raises(ValueError):
        search_space("lbfgs")
    with pytest.raises(ValueError):
        sgd_search_space(n_samples=1)


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
    # Reference: one uninterrupted search of 5 trials (3 random, 2 proposed by the GP).
    calls = []
    _, reference = _search(tmp_path / "ref.csv", 5, _toy_objective(calls))
    assert calls == list(range(5)) and len(reference) == 5

    # Interrupted during trial index 3: trials 0-2 are on disk.
    calls = []
    objective = _toy_objective(calls)

    def interrupted(params, trial):
        if trial == 3:
            raise KeyboardInterrupt
        return objective(params, trial)

    path = tmp_path / "tune.csv"
    with pytest.raises(KeyboardInterrupt):
        _search(path, 5, interrupted)
    assert len(pd.read_csv(path)) == 3

    # Resume: only the missing trials run; the CSV is replayed into the optimiser.
    calls = []
    optimizer, resumed = _search(path, 5, _toy_objective(calls))
    assert calls == [3, 4]
    assert len(optimizer.Xi) == 5 and len(resumed) == 5
    # The replay repeats the optimiser's random draws: same trials as uninterrupted.
    columns = ["trial", "learning_rate_init", "batch_size", "val_loss"]
    pd.testing.assert_frame_equal(resumed[columns], reference[columns])

    # Asking for more trials extends the same search; asking for fewer runs nothing.
    calls = []
    _search(path, 6, _toy_objective(calls))
    assert calls == [5]
    calls = []
    optimizer, trials = _search(path, 3, _toy_objective(calls))
    assert calls == [] and len(trials) == 6 and len(optimizer.Xi) == 6


# -- verdicts -------------------------------------------------------------------------------


def _history(solver, rank, times, losses, scores=None):
    n = len(times)
    return pd.DataFrame({"solver": solver, "rank": rank, "time": times,
                         "update": np.arange(n) * 10, "eval_loss": losses,
                         "eval_score": scores if scores is not None else np.nan})


def test_verdict_all_beat_and_first_reach():
    runs = pd.DataFrame({"solver": ["kfac", "kfac", "sgd", "sgd"], "rank": [1, 2, 1, 2],
                         "final_loss": [0.010, 0.012, 0.020, 0.030]})
    histories = pd.concat([
        _history("kfac", 1, [0, 2, 4, 6, 8, 10], [0.1, 0.05, 0.03, 0.019, 0.012, 0.010]),
        _history("kfac", 2, [0, 2, 4, 6, 8, 10], [0.1, 0.06, 0.02, 0.015, 0.013, 0.012]),
        _history("sgd", 1, [0, 5, 10], [0.1, 0.04, 0.020]),
        _history("sgd", 2, [0, 5, 10], [0.1, 0.05, 0.030]),
    ])
    verdict = compare.compute_verdict(runs.assign(train_time=[10.2, 11.5, 10.0, 10.1]),
                                      histories, 10.0)
    assert verdict["all_kfac_beat_all_sgd"] is True
    assert verdict["end_times"] == {"kfac": (10.2, 11.5), "sgd": (10.0, 10.1)}
    assert verdict["sgd_best_final"] == pytest.approx(0.020)
    hit = verdict["kfac_reached_sgd_best"]
    # K-FAC #2 reaches 0.020 at t=4 (update 20), before K-FAC #1 (t=6).
    assert hit["time"] == 4 and hit["update"] == 20 and hit["run"] == "K-FAC #2"
    assert hit["fraction"] == pytest.approx(0.4)
    lines = compare.format_verdict(verdict)
    assert lines[0].endswith(": yes")
    assert "at t = 4.00 s (40 % of the 10 s budget)" in lines[2]
    assert lines[3].endswith("K-FAC 10.2-11.5 s, SGD 10.0-10.1 s")

    # One SGD run better than one K-FAC run: "no"; K-FAC never reaching SGD's best.
    worse = runs.assign(final_loss=[0.010, 0.025, 0.005, 0.030])
    verdict = compare.compute_verdict(worse, histories, 10.0)
    assert verdict["all_kfac_beat_all_sgd"] is False
    assert verdict["kfac_reached_sgd_best"] is None
    assert "never reached" in compare.format_verdict(verdict)[2]


def test_verdict_on_accuracy_prefers_higher():
    runs = pd.DataFrame({"solver": ["kfac", "sgd"], "rank": [1, 1],
                         "final_loss": [1.6, 1.5], "final_accuracy": [0.50, 0.45]})
    histories = pd.concat([
        _history("kfac", 1, [0, 5, 10], [2.3, 1.7, 1.6], [0.1, 0.46, 0.50]),
        _history("sgd", 1, [0, 5, 10], [2.3, 1.6, 1.5], [0.1, 0.40, 0.45]),
    ])
    by_loss = compare.compute_verdict(runs, histories, 10.0, metric="loss")
    by_accuracy = compare.compute_verdict(runs, histories, 10.0, metric="accuracy")
    assert by_loss["all_kfac_beat_all_sgd"] is False
    assert by_accuracy["all_kfac_beat_all_sgd"] is True
    assert by_accuracy["kfac_reached_sgd_best"]["time"] == 5


def test_all_beat_edge_cases():
    assert compare.all_beat([1.0], [2.0])
    assert not compare.all_beat([], [2.0])
    assert not compare.all_beat([float("nan")], [2.0])
    assert not compare.all_beat([1.0, 2.0], [2.0])  # ties do not beat


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
    estimator = problem.make_estimator("kfac", batch_size=32, artificial_batch_size=artificial,
                                       device="cpu", random_state=0)
    train_for_updates(estimator, data.X_train, None, 20, seed=0)
    assert estimator.n_updates_ + estimator.n_rejected_updates_ == 20


# -- end to end -----------------------------------------------------------------------------


def test_quick_path_end_to_end(tmp_path, capsys):
    from benchmarks.cli import main
    from benchmarks.quick import run_quick

    start = time.time()
    result = run_quick(tmp_path, budgets.TINY, device="cpu", progress=lambda message: None)
    elapsed = time.time() - start
    assert elapsed < 120  # ~10 s on 2 idle cores; far more means the budgets grew
    folder = tmp_path / "digits"
    for name in ["tune_kfac.csv", "tune_sgd.csv", "compare_runs.csv", "compare_history.csv",
                 "table.csv", "table.md", "verdict.txt", "compare_loss.png",
                 "tune_losses.png", "batch_size.csv", "batch_size_fig2.png",
                 "batch_size_fig3.png", "batch_size_fig4.png"]:
        assert (folder / name).is_file(), name
    assert len(pd.read_csv(folder / "tune_kfac.csv")) == budgets.TINY.n_trials
    runs = pd.read_csv(folder / "compare_runs.csv")
    assert sorted(runs["solver"].value_counts().tolist()) == [2, 2]
    assert (tmp_path / "time_budget" / "time_budget.txt").is_file()
    report = (tmp_path / "REPORT.md").read_text()
    assert "digits/compare_loss.png" in report and "all 2 K-FAC runs beat" in report
    output = capsys.readouterr().out
    assert "Solver comparison" in output and "K-FAC" in output and "SGD" in output
    assert result["lines"][0].startswith("all 2 K-FAC runs beat all 2 SGD runs")

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
