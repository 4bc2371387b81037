"""``python -m benchmarks defaults``: every solver at its defaults (benchmarks/defaults.py).

Runs on tiny fixture files in ``tmp_path`` (the loaders' formats, written by
``test_benchmarks._write_fixture_data`` plus a gzipped UCI table) with tiny networks and
budgets: the CSV's columns, resuming, the verdict rules on hand-made numbers, and
skipping a cell whose data are missing.
"""

from __future__ import annotations

import gzip
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` lives at the root

from test_benchmarks import _write_fixture_data

from benchmarks import defaults
from benchmarks.defaults_report import cell_verdict, compare_medians, tabular_bars
from benchmarks.solvers import registered_solvers
from benchmarks.tabular import REFERENCES, load_tabular

REQUIRED_COLUMNS = ["cell", "kind", "method", "seed", "score", "score_name",
                    "higher_is_better", "eval_loss", "fit_seconds", "updates", "stop_reason",
                    "max_eval_jump"]
TINY_LAYERS = {"mnist_ae": (8, 4), "protein": (8,), "keggundirected": (8,), "cifar10": (4,)}


def _stat(median, low, high):
    return {"median": median, "min": low, "max": high, "n": 3}


def _write_uci_gz(home: Path, name: str, rows: int = 60, seed: int = 0) -> Path:
    """A gzipped UCI-style table: 4 features, one constant column, target last."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 4))
    table = np.column_stack([X[:, :2], np.full(rows, 3.0), X[:, 2:], X @ [1, -1, 0.5, 2]])
    path = home / "uci" / f"{name}.csv.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(",".join(repr(float(v)) for v in row) for row in table) + "\n"
    path.write_bytes(gzip.compress(text.encode(), mtime=0))
    return path


# -- verdict rules ------------------------------------------------------------------------------


def test_ahead_level_behind_on_hand_made_numbers():
    # Higher is better (R², accuracy).
    assert compare_medians(_stat(0.90, 0.88, 0.92), _stat(0.85, 0.80, 0.95), True) == "ahead"
    assert compare_medians(_stat(0.90, 0.84, 0.92), _stat(0.85, 0.80, 0.95), True) == "level"
    assert compare_medians(_stat(0.80, 0.70, 0.95), _stat(0.85, 0.81, 0.86), True) == "behind"
    assert compare_medians(_stat(0.80, 0.70, 0.95), _stat(0.85, 0.79, 0.86), True) == "level"
    assert compare_medians(_stat(0.85, 0.85, 0.85), _stat(0.85, 0.85, 0.85), True) == "level"
    # Lower is better (MSE): the worst seed is the largest.
    assert compare_medians(_stat(0.010, 0.009, 0.012), _stat(0.020, 0.011, 0.03),
                           False) == "ahead"
    assert compare_medians(_stat(0.010, 0.009, 0.021), _stat(0.020, 0.011, 0.03),
                           False) == "level"
    assert compare_medians(_stat(0.030, 0.02, 0.04), _stat(0.020, 0.011, 0.025),
                           False) == "behind"


def _runs(cell, scores: dict, seconds: dict, higher=True) -> pd.DataFrame:
    rows = []
    for method, values in scores.items():
        for seed, value in enumerate(values):
            rows.append({"cell": cell, "kind": "regression", "method": method, "seed": seed,
                         "score": value, "score_name": "test R2",
                         "higher_is_better": higher, "fit_seconds": seconds[method][seed],
                         "updates": 10, "stop_reason": "converged", "max_eval_jump": np.nan,
                         "convergence_warnings": 0})
    return pd.DataFrame(rows)


def test_cell_verdict_picks_the_best_first_order_solver_and_applies_the_tabular_bars():
    seconds = {m: [1.0, 1.0, 1.0] for m in ("kfac", "sgd", "adam", "sklearn_mlp")}
    seconds["sklearn_mlp"] = [0.4, 0.5, 0.6]  # K-FAC takes 2x the MLP's median
    scores = {"kfac": [0.90, 0.91, 0.92], "sgd": [0.70, 0.80, 0.99],
              "adam": [0.905, 0.915, 0.92], "sklearn_mlp": [0.91, 0.918, 0.93]}
    info = cell_verdict(_runs("energy", scores, seconds), tabular=True)
    assert info["best_first_order"] == "adam"  # by median, not by best seed (SGD's 0.99)
    assert info["verdict"] == "level"  # Adam's median is better, its worst seed is not
    assert info["bars"]["score"]["reference"] == "sklearn_mlp"
    assert info["bars"]["score"]["pass"] is True  # 0.91 >= 0.918 - 0.01
    assert info["bars"]["time"]["pass"] is True and info["bars"]["time"]["ratio"] == 2.0
    scores["kfac"] = [0.90, 0.905, 0.912]  # 0.905 < 0.918 - 0.01: fails the bar
    seconds["sklearn_mlp"] = [0.3, 0.3, 0.3]  # 3.33x the MLP's fit time
    info = cell_verdict(_runs("energy", scores, seconds), tabular=True)
    assert info["bars"]["score"]["pass"] is False and info["bars"]["time"]["pass"] is False
    assert info["verdict"] == "level"  # Adam's worst seed 0.905 does not beat 0.905
    scores["adam"] = [0.91, 0.915, 0.92]  # now Adam's worst seed beats K-FAC's median
    assert cell_verdict(_runs("energy", scores, seconds), tabular=True)["verdict"] == "behind"
    scores["kfac"] = [0.95, 0.96, 0.97]
    info = cell_verdict(_runs("energy", scores, seconds), tabular=False)
    assert info["verdict"] == "ahead" and "bars" not in info


def test_tabular_bars_edges():
    scores = {"kfac": _stat(0.90, 0.9, 0.9), "adam": _stat(0.91, 0.9, 0.92),
              "sklearn_mlp": _stat(0.85, 0.8, 0.9)}
    times = {"kfac": _stat(3.0, 3, 3), "sklearn_mlp": _stat(1.0, 1, 1)}
    bars = tabular_bars(scores, times)
    assert bars["score"]["reference"] == "adam" and bars["score"]["pass"] is True  # exactly
    assert bars["time"]["pass"] is True  # exactly 3x passes
    times["kfac"] = _stat(3.01, 3, 3.1)
    assert tabular_bars(scores, times)["time"]["pass"] is False
    del times["sklearn_mlp"]
    assert tabular_bars(scores, times)["time"]["pass"] is None  # no MLP run: n/a


def test_max_eval_jump_looks_after_20_seconds_only():
    history = pd.DataFrame({"time": [0, 10, 20, 25, 30, 35],
                            "eval_loss": [1.0, 3.0, 0.5, 0.6, 0.4, 0.5]})
    assert defaults.max_eval_jump(history) == pytest.approx(0.25)  # 0.4 -> 0.5
    falling = history.assign(eval_loss=[1.0, 0.9, 0.8, 0.7, 0.6, 0.5])
    assert defaults.max_eval_jump(falling) == 0.0
    assert defaults.max_eval_jump(history.assign(eval_loss=[1, 1, 1, np.inf, 1, 1])) == math.inf
    assert math.isnan(defaults.max_eval_jump(history, after=31))


def test_cell_selection_quick_and_groups():
    names = [c.name for c in defaults.select_cells()]
    assert names[:4] == ["mnist_ae", "cifar10", "protein", "keggundirected"]
    assert {"diabetes", "breast_cancer", "digits", "wine", "energy", "bike"} <= set(names)
    budgets = {c.name: c.budget for c in defaults.select_cells(["big"])}
    assert budgets == {"mnist_ae": 60, "cifar10": 120, "protein": 30, "keggundirected": 30}
    quick = defaults.select_cells(quick=True)
    assert {c.budget for c in quick if c.group == "big"} == {defaults.QUICK_BUDGET}
    assert [c.name for c in quick if c.group == "tabular"] == [
        "diabetes", "breast_cancer", "digits", "wine"]
    assert [c.name for c in defaults.select_cells(["energy", "tabular", "energy"],
                                                  quick=True)][:2] == ["energy", "diabetes"]
    with pytest.raises(ValueError, match="unknown cell"):
        defaults.select_cells(["nope"])
    # The full default run is sized for about an hour on 2 idle cores (the study row
    # included).
    total = sum(defaults.estimate_run_seconds(c) * len(c.methods()) * 3
                for c in defaults.select_cells())
    assert 55 * 60 < total < 75 * 60


def test_uci_table_loads_without_its_constant_column(tmp_path):
    _write_uci_gz(tmp_path, "energy")
    X, y, kind = load_tabular("energy", tmp_path)
    assert X.shape == (60, 4) and y.shape == (60,) and kind == "regression"


# -- end to end ----------------------------------------------------------------------------------


def test_defaults_end_to_end_resumes_and_skips_missing_data(tmp_path):
    home = _write_fixture_data(tmp_path / "data")
    _write_uci_gz(home, "energy")
    out = tmp_path / "out"
    messages = []
    kwargs = dict(cells=["mnist_ae", "protein", "energy", "yacht"], seeds=2, splits=3,
                  threads=1, data_home=home, budget=0.2, layers=TINY_LAYERS,
                  progress=messages.append)
    result = defaults.run_defaults(out, **kwargs)
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs.columns[:len(REQUIRED_COLUMNS)]) == REQUIRED_COLUMNS
    solvers = registered_solvers()
    # The big cells also run the study's K-FAC (its rule and table, skkfac.study).
    big_methods = (*solvers, defaults.STUDY_METHOD)
    # Big cells get `seeds` seeds, tabular cells `splits` splits.
    assert len(runs) == 2 * 2 * len(big_methods) + 3 * (len(solvers) + len(REFERENCES))
    energy = runs[runs["cell"] == "energy"]
    assert set(energy["method"]) == {*solvers, *REFERENCES}
    assert set(energy["seed"]) == {0, 1, 2}
    assert set(runs.loc[runs["cell"] == "mnist_ae", "method"]) == set(big_methods)
    big = runs[runs["cell"].isin(["mnist_ae", "protein"])]
    assert set(big["seed"]) == {0, 1}
    assert (big["stop_reason"] == "max_time").all() and not big["higher_is_better"].any()
    assert big["score_name"].eq("test MSE").all() and big["eval_loss"].notna().all()
    assert (runs["updates"] > 0).all() and (runs["fit_seconds"] > 0).all()
    history = pd.read_csv(out / "history.csv")
    assert set(history["cell"]) == {"mnist_ae", "protein"} and history["eval_loss"].notna().all()
    # Each run's jump is its own learning curve's (jump_after = budget / 4 here); NaN only
    # where fewer than two evaluations came after it (a slow first update in 0.2 s).
    for run in big.itertuples():
        curve = history[(history["cell"] == run.cell) & (history["method"] == run.method)
                        & (history["seed"] == run.seed)]
        expected = defaults.max_eval_jump(curve, after=0.05)
        assert run.max_eval_jump == pytest.approx(expected, nan_ok=True)
    assert big["max_eval_jump"].notna().sum() >= len(big) // 2
    # yacht has no file: skipped with a note, not a crash.
    assert "yacht" in result["skipped"] and "yacht" not in set(runs["cell"])
    assert any("skipping cell yacht" in m for m in messages)
    text = (out / "table.md").read_text()
    for needle in ("load average", "CPU:", "commit", "## energy", "## Skipped cells",
                   "## protein (regression, 0.2 s per run)",
                   "score bar", "median"):
        assert needle in text, needle
    verdict = json.loads((out / "verdict.json").read_text())
    assert set(verdict["cells"]) == {"mnist_ae", "protein", "energy"}
    assert verdict["cells"]["energy"]["bars"]["score"]["pass"] in (True, False)
    assert "bars" not in verdict["cells"]["protein"]
    assert (out / "scores.png").stat().st_size > 1000
    assert (out / "curves.png").stat().st_size > 1000

    # Resuming: nothing is redone; an interrupted run (its row lost) is done again.
    messages.clear()
    defaults.run_defaults(out, **kwargs)
    assert len(pd.read_csv(out / "runs.csv")) == len(runs)
    assert not any(" seed " in m for m in messages)
    lines = (out / "runs.csv").read_text().splitlines()
    (out / "runs.csv").write_text("\n".join(lines[:-1]) + "\n")
    messages.clear()
    defaults.run_defaults(out, **kwargs)
    assert len(pd.read_csv(out / "runs.csv")) == len(runs)
    assert sum(" seed " in m for m in messages) == 1
    # Other settings must not be mixed into the same folder.
    with pytest.raises(SystemExit, match="--fresh"):
        defaults.run_defaults(out, **{**kwargs, "budget": 0.3})


def test_command_line_quick_skips_a_missing_big_cell(tmp_path, capsys):
    import torch

    from benchmarks.cli import main

    threads = torch.get_num_threads()
    out = tmp_path / "out"
    try:
        assert main(["defaults", "--quick", "--cells", "cifar10", "wine", "--methods",
                     "kfac", "sklearn_mlp", "--threads", "1",
                     "--data-home", str(tmp_path / "empty"), "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    runs = pd.read_csv(out / "runs.csv")
    assert runs[["cell", "method", "seed"]].values.tolist() == [["wine", "kfac", 0],
                                                                 ["wine", "sklearn_mlp", 0]]
    assert runs["score_name"].eq("test accuracy").all() and runs["higher_is_better"].all()
    assert runs["eval_loss"].notna().all()  # the test cross-entropy
    output = capsys.readouterr().out
    assert "skipping cell cifar10" in output and "estimated" in output
    assert "wine: no verdict" in output  # the summary at the end: no first-order run
    assert "python -m benchmarks defaults --quick" in (out / "commands.txt").read_text()
    assert "python -m benchmarks defaults --quick" in (out / "table.md").read_text()


# -- the one-default ablation ---------------------------------------------------------------------


def test_ablation_values_are_parsed_as_the_estimators_take_them():
    from benchmarks.default_ablation import parse_value

    assert [parse_value(t) for t in ("True", "False", "None", "auto")] == [
        True, False, None, "auto"]
    # An integer stays an integer: n_iter_no_change refuses 10.0.
    assert type(parse_value("10")) is int and type(parse_value("0.5")) is float
    assert parse_value("1e-3") == pytest.approx(1e-3)


def test_ablation_prints_one_row_per_set_and_one_column_per_value(capsys):
    from benchmarks.default_ablation import main

    main(["--parameter", "n_iter_no_change", "--values", "2", "5", "--sets", "wine",
          "--seeds", "1", "--threads", "1"])
    out = capsys.readouterr().out.splitlines()
    assert "n_iter_no_change =" in out[-3] and out[-2].split() == ["set", "2", "5"]
    name, *cells = out[-1].split()
    assert name == "wine" and len(cells) == 4  # score and seconds per value
    assert all(0 <= float(score) <= 1 for score in cells[::2])
