"""Benchmark suite of skkfac: K-FAC against SGD with Nesterov momentum, after the study.

Run ``python -m benchmarks <sub-command> [--problem P] [--quick] [--data-home DIR]
[--out DIR]`` from the repository root (``--help`` on each sub-command lists its
options and default budgets):

===================  ===================================================================
``quick``            every experiment end to end on scikit-learn's digits with tiny
                     budgets (about 1-2 minutes on 2 CPU cores); ``make bench``
``tune``             Bayesian optimisation of each solver over
                     :mod:`skkfac.search`'s spaces, each trial trained for a fixed
                     ``max_time`` and scored on a fixed validation split; resumable
``compare``          retrain the best 4 configurations per solver with the full test
                     set as ``eval_set``: tables like the study's Tables 1-3, learning
                     curves like its Figures 6-9, and a verdict
``batch-size``       K-FAC's batch-size experiments (the study's Figures 2-4)
``time-budget``      check that ``max_time`` stops training on time
``report``           gather every result into ``REPORT.md`` with the exact commands
===================  ===================================================================

Problems (:mod:`benchmarks.problems`): ``mnist_ae``, ``regression`` (CT slices, else
UCI ``keggundirected``), ``cifar10`` and the small ``digits``. Budgets
(:mod:`benchmarks.budgets`) default to 20-second trainings sized for a 2-core CPU.

Every experiment goes through the public estimators (:mod:`skkfac`) and loaders
(:mod:`skkfac.datasets`). Results are written under ``--out`` (default
``benchmarks/results``), one folder per problem; each finished unit of work (trial, run,
point) is appended to a CSV at once, so an interrupted command resumes where it stopped
when run again.
"""
