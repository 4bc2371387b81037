"""Command line of the benchmark suite: ``python -m benchmarks <sub-command> [options]``.

Examples (from the repository root)::

    python -m benchmarks quick                                   # ~1-2 min, digits
    python -m benchmarks tune --problem mnist_ae --data-home /work/shared/data
    python -m benchmarks compare --problem mnist_ae --data-home /work/shared/data
    python -m benchmarks batch-size --problem mnist_ae --data-home /work/shared/data
    python -m benchmarks time-budget --data-home /work/shared/data
    python -m benchmarks gpu --data-home /work/shared/data --device cuda
    python -m benchmarks defaults --data-home /work/shared/data     # ~80 min, 2 cores
    python -m benchmarks study --data-home /work/shared/data        # ~12 min, 2 cores
    python -m benchmarks report

The single-question scripts run the same way, each with its own options (``--help``):
``python -m benchmarks step-cost``, ``damping``, ``ekfac``, ``head-to-head``,
``default-ablation`` (one K-FAC default varied on the tabular suite), ``tiny-batches``,
``small-batch``, ``scaling``, ``bf16-precondition``, ``protocol-summary`` and
``precision`` (float32 against bf16-mixed at equal time).

Default budgets depend on the problem (``benchmarks/budgets.py``); every solver
registered in ``skkfac.solvers.SOLVERS`` is searched and compared unless ``--solver``
names some.

Long runs print a progress line per finished unit and can be stopped (Ctrl-C) and
resumed by running the same command again; ``--fresh`` discards earlier results of the
sub-command instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from benchmarks.budgets import QUICK, problem_budget
from benchmarks.problems import PROBLEMS
from benchmarks.records import CommandLog, log
from benchmarks.solvers import registered_solvers

DEFAULT_OUT = Path("benchmarks") / "results"
QUICK_OUT = DEFAULT_OUT / "_scratch" / "quick"
DEFAULTS_OUT = DEFAULT_OUT / "defaults"
DEFAULTS_QUICK_OUT = DEFAULT_OUT / "_scratch" / "defaults"


def _common(parser, *, problem: bool = True, default_problem=None):
    if problem:
        parser.add_argument("--problem", choices=sorted(PROBLEMS), default=default_problem,
                            help="benchmark problem (default: digits with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny budgets (those of the quick sub-command)")
    parser.add_argument("--data-home", default=None,
                        help="data folder (default: $SKKFAC_DATA, else ~/skkfac_data)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results root, one folder per problem (default: {DEFAULT_OUT}; "
                             f"{QUICK_OUT} with --quick)")
    parser.add_argument("--device", default="auto", help="torch device (default: auto)")
    parser.add_argument("--seed", type=int, default=0, help="base random seed (default: 0)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 for quick)")
    parser.add_argument("--regression-data", default="auto",
                        help="regression problem's data: auto (CT slices if present, else "
                             "keggundirected), ct, or a UCI name such as keggundirected")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUB-COMMAND")
    for name, module in SCRIPTS.items():
        # Listed in --help; main() hands their arguments to the script itself.
        sub.add_parser(name, help=f"benchmarks/{module}.py (its own --help)", add_help=False)
    d = problem_budget("mnist_ae")
    solvers = list(registered_solvers())
    per_problem = " (per-problem default; mnist_ae: {})"

    quick = sub.add_parser("quick", help="every experiment on digits, tiny budgets (<3 min)")
    _common(quick, problem=False)
    quick.add_argument("--resume", action="store_true",
                       help="keep a previous quick run's results instead of replacing them")
    quick.add_argument("--no-time-budget", action="store_true",
                       help="skip the max_time check")

    tune = sub.add_parser("tune", help="Bayesian optimisation per solver (resumable)")
    _common(tune)
    tune.add_argument("--solver", nargs="+", choices=solvers, default=None,
                      help=f"solvers to search (default: all registered: {' '.join(solvers)})")
    tune.add_argument("--max-time", type=float, default=None,
                      help="training seconds per trial" + per_problem.format(
                          f"{d.tune_max_time:g}"))
    tune.add_argument("--n-trials", type=int, default=None,
                      help="trials per solver, finished ones included"
                           + per_problem.format(d.n_trials))
    tune.add_argument("--n-initial-points", type=int, default=None,
                      help="random trials first" + per_problem.format(d.n_initial_points))
    tune.add_argument("--repeats", type=int, default=None,
                      help=f"trainings per trial, averaged (default {d.repeats})")
    tune.add_argument("--fresh", action="store_true", help="discard earlier trials")
    tune.add_argument("--scheduler", default=None, metavar="ADDRESS|local",
                      help="run trials in parallel on this Dask scheduler, or on a new "
                           "local cluster ('local'); see benchmarks/dask_search.py")
    tune.add_argument("--n-workers", type=int, default=None,
                      help="worker processes of --scheduler local (default: one per core)")

    compare = sub.add_parser("compare", help="retrain the best configurations, verdict")
    _common(compare)
    compare.add_argument("--solver", nargs="+", choices=solvers, default=None,
                         help="solvers to compare (default: all with search results)")
    compare.add_argument("--max-time", type=float, default=None,
                         help="training seconds per run"
                              + per_problem.format(f"{d.compare_time:g}"))
    compare.add_argument("--top-k", type=int, default=None,
                         help="configurations per solver" + per_problem.format(d.top_k))
    compare.add_argument("--seeds", type=int, default=None,
                         help="seeds per configuration" + per_problem.format(d.seeds))
    compare.add_argument("--train-eval-rows", type=int, default=None,
                         help="training rows evaluated for the training-loss curves "
                              "(default: all; cifar10: 5000)")
    compare.add_argument("--eval-points", type=int, default=None,
                         help=f"test evaluations per run (default {d.eval_points})")
    compare.add_argument("--fresh", action="store_true", help="discard earlier runs")

    bs = sub.add_parser("batch-size", help="K-FAC batch-size experiments (Figures 2-4)")
    _common(bs)
    bs.add_argument("--max-time", type=float, default=None,
                    help=f"time budget per point (default {d.bs_max_time:g})")
    bs.add_argument("--updates", type=int, default=None,
                    help=f"update budget per point (default {d.bs_updates})")
    bs.add_argument("--artificial-updates", type=int, default=None,
                    help=f"update budget of Figure 4 (default {d.bs_artificial_updates})")
    bs.add_argument("--configs", type=int, default=None,
                    help=f"best K-FAC configurations used (default {d.bs_configs})")
    bs.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                    help=f"Figure 2 batch sizes (default {' '.join(map(str, d.bs_batch_sizes))})")
    bs.add_argument("--lr-factors", type=float, nargs="+", default=None,
                    help="Figure 3: multiples of the best learning rate (default "
                         f"{' '.join(map(str, d.bs_lr_factors))})")
    bs.add_argument("--lr-batch-sizes", type=int, nargs="+", default=None,
                    help="Figure 3 batch sizes (default "
                         f"{' '.join(map(str, d.bs_lr_batch_sizes))})")
    bs.add_argument("--real-batch", type=int, default=None,
                    help=f"Figure 4 real batch size (default {d.bs_real_batch})")
    bs.add_argument("--artificial-sizes", type=int, nargs="+", default=None,
                    help="Figure 4 artificial batch sizes (default "
                         f"{' '.join(map(str, d.bs_artificial_sizes))})")
    bs.add_argument("--fresh", action="store_true", help="discard earlier points")

    tb = sub.add_parser("time-budget", help="check that max_time stops training on time")
    _common(tb, default_problem="regression")
    tb.add_argument("--max-time", type=float, default=None,
                    help=f"the budget checked (default {d.time_budget_max_time:g})")
    tb.add_argument("--runs", type=int, default=None,
                    help=f"number of fits (default {d.time_budget_runs})")

    gpu = sub.add_parser("gpu", help="the three problems at the study's settings, 10 s "
                                     "each (< 8 min): one text file")
    _common(gpu, problem=False)
    gpu.add_argument("--max-time", type=float, default=10.0,
                     help="training seconds per run (default 10, the study's)")
    gpu.add_argument("--problems", nargs="+", default=None,
                     choices=sorted(p for p in PROBLEMS if PROBLEMS[p].study),
                     help="problems to run (default: mnist_ae regression cifar10)")

    _defaults_parser(sub)

    study = sub.add_parser("study", help="the study's K-FAC: which of its choices matter "
                                         "(MNIST autoencoder, 8 updates) and what 10 s buys")
    _common(study, problem=False)
    study.add_argument("--part", nargs="+", choices=("ablation", "budget"),
                       default=["ablation", "budget"],
                       help="ablation: count-based, may share the machine; budget: timed")
    study.add_argument("--seeds", type=int, default=2, help="seeds per row (default 2)")

    report = sub.add_parser("report", help="gather the results into REPORT.md")
    report.add_argument("--out", type=Path, default=None,
                        help=f"results root (default {DEFAULT_OUT})")
    return parser


def _defaults_parser(sub) -> None:
    from benchmarks.defaults import CELLS, GROUPS, all_methods

    defaults = sub.add_parser(
        "defaults", help="every solver at its defaults on the study's problems and a "
                         "tabular suite, against scikit-learn (~80 min; resumable)")
    defaults.add_argument("--data-home", default=None,
                          help="data folder (default: $SKKFAC_DATA, else ~/skkfac_data)")
    defaults.add_argument("--out", type=Path, default=None,
                          help=f"results folder (default: {DEFAULTS_OUT}; "
                               f"{DEFAULTS_QUICK_OUT} with --quick)")
    defaults.add_argument("--threads", type=int, default=2,
                          help="torch (and scikit-learn) threads per fit (default 2)")
    defaults.add_argument("--seeds", type=int, default=None,
                          help="seeds per method on the big cells (default 3; 1 with "
                               "--quick)")
    defaults.add_argument("--splits", type=int, default=None,
                          help="train/test splits (one seed each) per method on the "
                               "tabular cells (default 9; 1 with --quick)")
    defaults.add_argument("--cells", nargs="+", choices=[*GROUPS, *CELLS], default=None,
                          metavar="CELL", help="cells or groups to run (default: big "
                          f"tabular); cells: {' '.join(CELLS)}")
    defaults.add_argument("--methods", nargs="+", choices=all_methods(), default=None,
                          help="methods to run (default: all)")
    defaults.add_argument("--quick", action="store_true",
                          help="2 s budgets for the big problems, only the bundled tabular "
                               "sets, 1 seed (smoke runs)")
    defaults.add_argument("--fresh", action="store_true", help="discard earlier runs")


def _budget(args):
    quick = args.command == "quick" or getattr(args, "quick", False)
    base = QUICK if quick else problem_budget(getattr(args, "problem", None))
    command = args.command
    if command == "tune":
        return base.override(tune_max_time=args.max_time, n_trials=args.n_trials,
                             n_initial_points=args.n_initial_points, repeats=args.repeats)
    if command == "compare":
        return base.override(compare_max_time=args.max_time, top_k=args.top_k,
                             seeds=args.seeds, eval_points=args.eval_points,
                             train_eval_rows=args.train_eval_rows)
    if command == "batch-size":
        return base.override(
            bs_max_time=args.max_time, bs_updates=args.updates,
            bs_artificial_updates=args.artificial_updates, bs_configs=args.configs,
            bs_batch_sizes=tuple(args.batch_sizes) if args.batch_sizes else None,
            bs_lr_factors=tuple(args.lr_factors) if args.lr_factors else None,
            bs_lr_batch_sizes=tuple(args.lr_batch_sizes) if args.lr_batch_sizes else None,
            bs_real_batch=args.real_batch,
            bs_artificial_sizes=tuple(args.artificial_sizes) if args.artificial_sizes
            else None)
    if command == "time-budget":
        return base.override(time_budget_max_time=args.max_time,
                             time_budget_runs=args.runs)
    return base


#: Sub-commands that are scripts of their own: name -> module of ``benchmarks`` whose
#: ``main(argv)`` parses the remaining arguments.
SCRIPTS = {"step-cost": "step_cost", "damping": "damping", "ekfac": "ekfac",
           "head-to-head": "head_to_head", "default-ablation": "default_ablation",
           "tiny-batches": "tiny_batches", "small-batch": "small_batch",
           "scaling": "scaling", "bf16-precondition": "bf16_precondition",
           "protocol-summary": "protocol_summary", "precision": "precision"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SCRIPTS:
        module = importlib.import_module(f"benchmarks.{SCRIPTS[argv[0]]}")
        sys.argv[0] = f"python -m benchmarks {argv[0]}"  # the scripts' usage lines
        return module.main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    threads = getattr(args, "threads", None)
    if threads is None and args.command == "quick":
        # The digits networks are tiny: one thread is faster, and on a shared CPU
        # several threads per process make small operations orders of magnitude slower.
        threads = 1
    if threads:
        import torch

        torch.set_num_threads(threads)
    quick = args.command == "quick" or getattr(args, "quick", False)
    out = args.out or (QUICK_OUT if quick else DEFAULT_OUT)
    if args.command == "defaults":
        out = args.out or (DEFAULTS_QUICK_OUT if quick else DEFAULTS_OUT)
        with CommandLog(out, argv):
            from benchmarks.defaults import TABULAR_SPLITS, run_defaults

            run_defaults(out, cells=args.cells, methods=args.methods, threads=args.threads,
                         seeds=args.seeds or (1 if quick else 3),
                         splits=args.splits or (1 if quick else TABULAR_SPLITS),
                         data_home=args.data_home,
                         quick=quick, fresh=args.fresh, argv=argv)
        return 0
    if args.command == "study":
        from benchmarks.study import run_study

        for path in run_study(out / "study", parts=args.part, data_home=args.data_home,
                              seeds=args.seeds, threads=threads or 2, argv=argv, progress=log):
            log(f"wrote {path}")
        return 0
    if args.command == "report":
        from benchmarks.report import write_report

        path = write_report(out)
        log(f"wrote {path}")
        return 0
    with CommandLog(out, argv):
        return _run(args, out)


def _run(args, out: Path) -> int:
    budget = _budget(args)
    if args.command == "quick":
        from benchmarks.quick import run_quick

        run_quick(out, budget, data_home=args.data_home, seed=args.seed, device=args.device,
                  fresh=not args.resume, time_budget=not args.no_time_budget)
        return 0
    if args.command == "time-budget":
        from benchmarks.time_budget import run_time_budget

        summary = run_time_budget(out / "time_budget", budget, problem_name=args.problem,
                                  data_home=args.data_home,
                                  regression_data=args.regression_data, seed=args.seed,
                                  device=args.device)
        return 0 if summary["criterion_holds"] else 1
    if args.command == "gpu":
        from benchmarks.gpu_check import run_gpu_check

        path = run_gpu_check(out / "gpu", data_home=args.data_home, device=args.device,
                             max_time=args.max_time, problems=args.problems,
                             regression_data=args.regression_data)
        log(f"wrote {path}")
        return 0
    problem_name = args.problem or ("digits" if args.quick else None)
    if problem_name is None:
        raise SystemExit(f"{args.command}: --problem is required (one of "
                         f"{', '.join(sorted(PROBLEMS))}; or --quick for digits)")
    from benchmarks.problems import get_problem

    problem = get_problem(problem_name)
    folder = out / problem.name
    log(f"{args.command} {problem.name}: loading data")
    data = problem.load(args.data_home, regression_data=args.regression_data)
    log(f"{args.command} {problem.name}: {data.summary()}")
    if args.command == "tune":
        from benchmarks.tune import run_tune

        run_tune(problem, data, folder, budget, solvers=args.solver, seed=args.seed,
                 device=args.device, fresh=args.fresh, scheduler=args.scheduler,
                 n_workers=args.n_workers)
    elif args.command == "compare":
        from benchmarks.compare import run_compare

        result = run_compare(problem, data, folder, budget, solvers=args.solver,
                             seed=args.seed, device=args.device, fresh=args.fresh)
        log("figures: " + ", ".join(str(p) for p in result["figures"]))
    elif args.command == "batch-size":
        from benchmarks.batch_size import run_batch_size

        run_batch_size(problem, data, folder, budget, seed=args.seed, device=args.device,
                       fresh=args.fresh)
    return 0
