"""Benchmark suite of skkfac: K-FAC against SGD-Nesterov and Adam, after the study.

Run ``python -m benchmarks <sub-command> [--problem P] [--quick] [--data-home DIR]
[--out DIR]`` from the repository root (``--help`` on each sub-command lists its
options and default budgets):

===================  ===================================================================
``quick``            every experiment end to end on scikit-learn's digits with tiny
                     budgets (``make bench``); ends by listing the report and figures
``tune``             Bayesian optimisation of each solver over :mod:`skkfac.search`'s
                     spaces, each trial trained for a fixed ``max_time`` and scored on
                     a fixed validation split; resumable
``compare``          retrain each solver's best configurations with several seeds:
                     held-out and training loss (median and spread), time to target,
                     floor and budget rules, a verdict that says "no winner" when the
                     spreads overlap; learning curves like the study's Figures 6-9
``batch-size``       K-FAC's batch-size experiments (the study's Figures 2-4)
``time-budget``      check that ``max_time`` stops training on time
``gpu``              the three problems at the study's own settings (10 s runs), one
                     text file; ``--device cuda`` on a GPU machine
``defaults``         every solver at its defaults, as a new user would try them: the
                     study's problems at fixed budgets and a tabular suite against
                     scikit-learn's MLP and gradient boosting (``benchmarks/defaults.py``)
``report``           gather every result into ``REPORT.md`` with the exact commands
===================  ===================================================================

The solvers are every solver registered in :data:`skkfac.solvers.SOLVERS`. Problems
(:mod:`benchmarks.problems`): ``mnist_ae``, ``regression`` (CT slices, else UCI
``keggundirected``), ``protein`` (UCI, a second regression stand-in), ``cifar10`` and
the small ``digits``. Budgets (:mod:`benchmarks.budgets`) are set per problem for a
2-core CPU. ``benchmarks/run_full.sh`` runs the whole protocol, resumably.

Every experiment goes through the public estimators (:mod:`skkfac`) and loaders
(:mod:`skkfac.datasets`). Results are written under ``--out`` (default
``benchmarks/results``), one folder per problem; each finished unit of work (trial, run,
point) is appended to a CSV at once, so an interrupted command resumes where it stopped
when run again.
"""
