"""One declaration per solver: the registry, the estimators built from it, step reports."""

import inspect
import math
from numbers import Real

import numpy as np
import pytest
import torch
from sklearn.datasets import make_regression
from sklearn.utils._param_validation import Interval
from torch import nn

from skkfac import KFAC, KFACAutoencoder, KFACClassifier, KFACRegressor
from skkfac.estimators.base import BaseKFACEstimator
from skkfac.search import SEARCH_SPACES, search_space
from skkfac.solvers import SOLVERS, Adam, Hyperparameter, Solver, StepReport
from skkfac.solvers.spec import estimator_parameters, solver_arguments
from skkfac.training import MAX_CONSECUTIVE_REJECTIONS, Trainer, TrainingConfig, TrainingProgress

ESTIMATORS = [KFACRegressor, KFACClassifier, KFACAutoencoder]
LAYER_SIZES = {"hidden_layer_sizes", "encoder_layer_sizes"}


def test_registry_holds_the_three_solvers_with_their_declarations():
    assert list(SOLVERS) == ["kfac", "sgd", "adam"]
    for name, cls in SOLVERS.items():
        assert cls.name == name and issubclass(cls, Solver)
        assert cls.hyperparameters and all(isinstance(h, Hyperparameter)
                                           for h in cls.hyperparameters)
        assert cls.auto_batch_size >= 1
    assert {name: cls.auto_batch_size for name, cls in SOLVERS.items()} == {
        "kfac": 1000, "sgd": 200, "adam": 200}


@pytest.mark.parametrize("name", list(SOLVERS))
def test_solver_constructors_match_their_declarations(name):
    cls = SOLVERS[name]
    signature = inspect.signature(cls).parameters
    for hyper in (*cls.hyperparameters, *cls.internal_hyperparameters):
        assert signature[hyper.name].default == hyper.default, hyper.name
    # Every keyword but the model, the loss and the plumbing is declared.
    plumbing = {"model", "loss", "alpha", "random_state", "process_group",
                "distribute_inverses"}
    declared = {h.name for h in (*cls.hyperparameters, *cls.internal_hyperparameters)}
    assert set(signature) - plumbing == declared
    assert cls.takes_random_state == ("random_state" in signature)


def test_kfac_checks_every_option_through_its_declarations():
    model = torch.nn.Linear(3, 1)
    for bad in (dict(damping_adapt_interval=0), dict(min_damping=-1.0),
                dict(momentum=-0.5), dict(damping_scheme="lm"), dict(lr=0.0),
                dict(curvature_batch_size=0), dict(rejection_ratio=0.5)):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=f"'{name}' parameter of KFAC"):
            KFAC(model, **bad)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: e.__name__)
def test_estimator_signature_is_the_union_of_the_declarations(estimator):
    """Every solver option is a parameter, with the declared default; nothing else is."""
    signature = inspect.signature(estimator.__init__).parameters
    declared = estimator_parameters()
    own = set(BaseKFACEstimator._parameter_constraints) - set(declared)
    assert set(signature) - {"self"} == own | set(declared) | (LAYER_SIZES & set(signature))
    for name, parameter in declared.items():
        assert signature[name].default == parameter.default, name
        assert estimator._parameter_constraints[name] == parameter.constraints
    assert signature["learning_rate_init"].default is None  # each solver's own default
    # The docstring documents exactly the signature's parameters, in order.
    documented = [line.split(" : ")[0].strip() for line in estimator.__doc__.splitlines()
                  if line.startswith("    ") and not line.startswith("     ")
                  and " : " in line]
    assert documented[:len(signature) - 1] == [n for n in signature if n != "self"]


@pytest.mark.parametrize("solver, expected", [
    ("sgd", dict(lr=0.01, momentum=0.5, nesterov=False, precision="float32")),
    ("adam", dict(lr=0.001, beta_1=0.8, beta_2=0.999, epsilon=1e-8, precision="float32")),
])
def test_solver_arguments_pick_the_declared_parameters(solver, expected):
    reg = KFACRegressor(solver=solver, momentum=0.5, nesterovs_momentum=False, beta_1=0.8)
    assert solver_arguments(SOLVERS[solver], reg.get_params()) == expected
    kfac = solver_arguments(SOLVERS["kfac"], KFACRegressor(learning_rate_init=0.3).get_params())
    assert kfac["lr"] == 0.3 and kfac["damping"] == 0.1 and "momentum" not in kfac


def test_estimators_build_the_chosen_solver():
    X, y = make_regression(n_samples=40, n_features=3, random_state=0)
    reg = KFACRegressor(hidden_layer_sizes=(4,), solver="adam", beta_1=0.8, max_iter=1,
                        random_state=0)
    with pytest.warns(Warning):
        reg.fit(X, y / y.std())
    assert isinstance(reg.solver_, Adam)
    group = reg.solver_.optimizer.param_groups[0]
    assert group["lr"] == 0.001 and group["betas"] == (0.8, 0.999) and group["eps"] == 1e-8
    reg.set_params(solver="sgd", warm_start=True)
    with pytest.warns(Warning):
        reg.fit(X, y / y.std())
    assert reg.solver_.name == "sgd"
    assert reg.solver_.optimizer.param_groups[0]["lr"] == 0.01


def test_conflicting_declarations_are_refused():
    class A:
        hyperparameters = (Hyperparameter("lr", 1.0, [Interval(Real, 0, None,
                                                                closed="neither")], "a"),)

    class B:
        hyperparameters = (Hyperparameter("lr", 0.1, [Interval(Real, 0, 1, closed="left")],
                                          "b"),)

    with pytest.raises(ValueError, match="different constraints"):
        estimator_parameters({"a": A, "b": B})
    merged = estimator_parameters({"a": A, "c": A})["lr"]
    assert merged.default == 1.0 and not merged.per_solver_default


def test_adam_first_step_is_the_closed_form():
    """Adam's first step moves each weight by ``lr·ĝ/(|ĝ|+ε)`` with ĝ the L2-penalised mean."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2)).double()
    X, y = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64)
    W0, b0 = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    residual = X @ W0.T + b0 - y                 # squared_error: mean over outputs of r²/1
    per_example_scale = 2.0 / y.shape[1] / len(X)
    grad_W = per_example_scale * residual.T @ X + 0.1 * W0
    grad_b = per_example_scale * residual.sum(0)
    adam = Adam(model, "squared_error", lr=0.01, epsilon=1e-8, alpha=0.1)
    adam.accumulate(X[:4], y[:4])
    adam.accumulate(X[4:], y[4:])                # two micro-batches = one batch
    report = adam.step()
    assert report.accepted is True and report.step_size == 0.01 and report.momentum is None
    for new, old, grad in [(model[0].weight, W0, grad_W), (model[0].bias, b0, grad_b)]:
        expected = old - 0.01 * grad / (grad.abs() + 1e-8)
        torch.testing.assert_close(new.detach(), expected, rtol=1e-9, atol=1e-12)


def test_solver_checks_its_declared_constraints():
    model = nn.Sequential(nn.Linear(2, 1))
    with pytest.raises(ValueError, match="beta_1"):
        Adam(model, beta_1=1.0)
    with pytest.raises(RuntimeError, match="accumulate"):
        Adam(model).step()


def test_step_report_fetch_reads_extra_values_in_the_same_transfer():
    report = StepReport(accepted=torch.tensor(False), rho=torch.tensor(0.5), damping=0.25)
    values = report.fetch(torch.tensor(3.0))
    assert values["accepted"] is False and values["rho"] == 0.5 and values["damping"] == 0.25
    assert values["extra"] == (3.0,) and values["step_size"] is None


def test_search_spaces_cover_every_registered_solver():
    assert set(SEARCH_SPACES) == set(SOLVERS)
    for name, cls in SOLVERS.items():
        space = search_space(name, n_samples=500)
        own = {h.parameter for h in cls.hyperparameters} | {"batch_size"}
        assert set(space) <= own, name
        assert "learning_rate_init" in space
    with pytest.raises(ValueError, match="solver must be one of"):
        search_space("lbfgs")


@pytest.mark.parametrize("solver", sorted(SEARCH_SPACES))
def test_every_search_range_end_is_a_valid_estimator_parameter(solver):
    # The ranges are declared once, in skkfac.search; both ends must pass the estimators'
    # own parameter validation (e.g. momentum stays below 1 at 0.999).
    for name, dimension in search_space(solver).items():
        for end in dimension.bounds:
            KFACRegressor(solver=solver, **{name: end})._validate_params()


@pytest.mark.parametrize("solver, step_size, momentum", [
    ("sgd", 0.01, 0.9), ("adam", 0.001, math.nan)])
def test_history_records_the_step_reports(solver, step_size, momentum):
    X, y = make_regression(n_samples=60, n_features=3, random_state=0)
    reg = KFACRegressor(hidden_layer_sizes=(4,), solver=solver, max_iter=3, batch_size=20,
                        random_state=0)
    with pytest.warns(Warning):
        reg.fit(X, y / y.std())
    history = reg.history_
    for column in ("damping", "rho", "step_size", "momentum"):
        assert column in history.columns
    assert np.isnan(history["step_size"].iloc[0])     # the row before any update
    np.testing.assert_array_equal(history["step_size"].iloc[1:], step_size)
    np.testing.assert_array_equal(history["momentum"].iloc[1:], momentum)
    assert history["damping"].isna().all() and history["rho"].isna().all()


class _Judged(Solver):
    """Plain gradient descent whose updates are accepted per a given pattern."""

    def __init__(self, model, pattern):
        super().__init__(model, "squared_error")
        self.pattern = list(pattern)

    def step(self):
        self._mean_gradients()
        accepted = self.pattern.pop(0) if self.pattern else True
        if accepted:
            with torch.no_grad():
                for p in self.params:
                    p -= 0.01 * p.grad
        self._reset_accumulation()
        return StepReport(accepted=torch.tensor(accepted), damping=torch.tensor(2.0))


def _run_judged(pattern, n_updates):
    torch.manual_seed(0)
    X, y = torch.randn(10 * n_updates, 2), torch.randn(10 * n_updates, 1)
    solver = _Judged(nn.Sequential(nn.Linear(2, 1)), pattern)
    trainer = Trainer(TrainingConfig(batch_size=10, max_epochs=1, shuffle=False))
    return trainer.run(solver, X, y, TrainingProgress(), rng=np.random.RandomState(0))


def test_trainer_counts_rejections_from_step_reports():
    progress = _run_judged([True, False, False, True, False], n_updates=8)
    assert progress.n_updates == 8 and progress.n_rejected_updates == 3
    assert progress.history[-1]["damping"] == 2.0
    assert progress.stop_reason == "max_iter"


def test_trainer_stops_after_consecutive_rejections():
    with pytest.warns(RuntimeWarning, match="consecutive updates were rejected"):
        progress = _run_judged([False] * 20, n_updates=20)
    assert progress.stop_reason == "diverged"
    assert progress.n_rejected_updates == MAX_CONSECUTIVE_REJECTIONS


def test_trainer_reads_each_report_once_with_the_next_loss(monkeypatch):
    """One host read per update: a step's report comes back with the next batch's loss."""
    calls = []
    fetch = StepReport.fetch

    def counting_fetch(self, *extra):
        calls.append(len(extra))
        return fetch(self, *extra)

    monkeypatch.setattr(StepReport, "fetch", counting_fetch)
    progress = _run_judged([], n_updates=8)
    assert progress.n_updates == 8
    # Updates 2..8 read the previous report with their loss; the epoch's history row
    # reads the last one.
    assert calls == [1] * 7 + [0]


def test_a_solver_registered_later_is_accepted_by_the_estimators():
    from skkfac.solvers import TorchOptimizerSolver, register_solver

    @register_solver("plain_gd")
    class PlainGD(TorchOptimizerSolver):
        hyperparameters = (Hyperparameter("lr", 0.05, [Interval(Real, 0, None,
                                                                 closed="neither")],
                                          "the step size.", "learning_rate_init"),)

        def __init__(self, model, loss="squared_error", *, lr=0.05, alpha=0.0):
            super().__init__(model, loss, alpha=alpha)
            self.optimizer = torch.optim.SGD(self.params, lr=lr)

    try:
        X, y = make_regression(n_samples=40, n_features=3, random_state=0)
        reg = KFACRegressor(hidden_layer_sizes=(4,), solver="plain_gd", max_iter=2,
                            random_state=0)
        with pytest.warns(Warning):
            reg.fit(X, y / y.std())
        assert isinstance(reg.solver_, PlainGD)
        assert reg.solver_.optimizer.param_groups[0]["lr"] == 0.05
        with pytest.raises(ValueError, match="No search space"):
            search_space("plain_gd")
    finally:
        del SOLVERS["plain_gd"]


def test_collectives_do_not_depend_on_the_solvers():
    """skkfac.distributed (the reductions K-FAC uses) imports no solver or estimator, at
    module level or inside a function: no import cycle through solvers/kfac.py."""
    import ast
    from pathlib import Path

    import skkfac.distributed

    tree = ast.parse(Path(skkfac.distributed.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
    assert not {name for name in imported if name and name.startswith(
        ("skkfac.solvers", "skkfac.estimators", "skkfac.training"))}


def test_benchmark_modules_import_no_private_names_and_form_no_cycle():
    """The protocol's modules depend on each other in one direction only: tune, compare,
    plotting, report and dask_search share benchmarks.trials, a leaf."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    graph = {}
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmarks"):
                assert not any(alias.name.startswith("_") for alias in node.names), path.name
                imported.add(node.module.removeprefix("benchmarks").lstrip(".") or "__init__")
        graph[path.stem] = imported

    def reaches(start, goal, seen=()):
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, (*seen, nxt)))
                   for nxt in graph.get(start, ()))

    cyclic = sorted(name for name in graph if reaches(name, name))
    assert not cyclic


def test_benchmark_results_hold_data_only_and_every_script_runs_through_the_cli():
    """No scripts among the results; every benchmark module with a ``main`` is a
    sub-command of ``python -m benchmarks``."""
    import ast
    from pathlib import Path

    from benchmarks.cli import SCRIPTS, build_parser

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    assert not sorted(str(p.relative_to(root)) for p in (root / "results").rglob("*.py"))
    with_main = {path.stem for path in root.glob("*.py")
                 if any(isinstance(node, ast.FunctionDef) and node.name == "main"
                        for node in ast.parse(path.read_text()).body)}
    assert with_main - {"cli"} == set(SCRIPTS.values())
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(SCRIPTS) <= set(commands)


def test_benchmark_scripts_take_their_arguments_from_the_cli(capsys):
    import pytest

    from benchmarks.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["step-cost", "--help"])
    assert exit_info.value.code == 0
    assert "python -m benchmarks step-cost" in capsys.readouterr().out


def test_package_modules_form_no_import_cycle():
    """Among skkfac's modules, counting imports inside functions: each layer uses the
    ones below it only (a module importing its own package's ``__init__`` does not count
    as a cycle of the package with itself)."""
    import ast
    from pathlib import Path

    import skkfac

    root = Path(skkfac.__file__).resolve().parent
    modules = {".".join(("skkfac", *path.relative_to(root).with_suffix("").parts))
               .removesuffix(".__init__"): path for path in root.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                    + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else base)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}

    def nested(a, b):  # a package and its own submodule: not a cycle between layers
        return a.startswith(b + ".") or b.startswith(a + ".")

    def cycle_from(start):
        stack, seen = [(start, (start,))], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start and not start.startswith(nxt + "."):
                    return path
                if nxt not in seen and not nested(nxt, start):
                    seen.add(nxt)
                    stack.append((nxt, (*path, nxt)))
        return None

    cycles = {name: cycle_from(name) for name in graph}
    assert not {name: path for name, path in cycles.items() if path}
