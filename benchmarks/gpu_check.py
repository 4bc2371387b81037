"""``gpu``: the three problems at the study's own settings, one text file.

``python -m benchmarks gpu --data-home DIR --device cuda`` trains, on each of
``mnist_ae``, ``regression`` and ``cifar10``, for ``max_time`` = 10 s (the study's
budget; it used 5 s for the regression):

* K-FAC at the study's best hyperparameters (its Tables 1-3) with the study's update
  rule (:data:`skkfac.study.STUDY_KFAC`: fixed learning rate, divide-by-max
  normalisation without damping, factors from the whole batch inverted at every
  update, a running average of the normalised directions as momentum, no rejection
  test);
* K-FAC with the estimators' defaults at the study's batch size;
* SGD-Nesterov at the study's best hyperparameters;
* Adam with learning rate 1e-3 and batch 256 (scikit-learn's default rate), when the
  installed skkfac registers ``solver='adam'``.

Twelve runs of 10 s plus loading and evaluation: a few minutes on a GPU (the CIFAR-10
images are decoded once and cached). It writes ``<out>/gpu_check_<device>.txt``: the
device's name, the torch version, and per run the final test and training loss (and
accuracy), the number of updates and the seconds per update. Nothing here imports
scikit-optimize, which GPU machines may lack (``skkfac.datasets`` needs ``pooch``).

On a machine without the data: copy the raw files of ``mnist/`` (the four ``.gz`` and
the ``SHA256SUMS*``), ``uci/`` and ``cifar10/`` (``cifar10-jpeg-q75.tar.gz`` and
``SHA256SUMS``), about 35 MB without the ``.npz`` caches, into one folder and pass it as
``--data-home``; the CIFAR-10 images are decoded there once.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import time
import warnings
from dataclasses import replace
from pathlib import Path

from benchmarks.problems import get_problem
from benchmarks.records import code_version, log
from benchmarks.solvers import label, registered_solvers
from skkfac.study import STUDY_KFAC

#: The study's problems, in the order of its Tables 1-3.
PROBLEMS = ("mnist_ae", "regression", "cifar10")
#: Adam: scikit-learn's default learning rate, a common batch size.
ADAM = {"learning_rate_init": 1e-3, "batch_size": 256}


def planned_runs(problem) -> list[tuple[str, str, dict]]:
    """``(name, solver, parameters)`` of every run on ``problem``."""
    study = problem.study
    kfac = {k: v for k, v in study["kfac"].items() if k != "loss"}
    sgd = {k: v for k, v in study["sgd"].items() if k != "loss"}
    runs = [(f"K-FAC, study's {study['table']} (study's update rule)", "kfac",
             {**kfac, **STUDY_KFAC}),
            ("K-FAC, skkfac defaults at the study's batch size", "kfac",
             {"batch_size": kfac["batch_size"]}),
            (f"{label('sgd')}, study's {study['table']}", "sgd", sgd)]
    if "adam" in registered_solvers():
        runs.append((f"{label('adam')}, lr 1e-3, batch 256", "adam", dict(ADAM)))
    return runs


def device_description(device: str) -> str:
    """The device's name as torch reports it."""
    import torch

    resolved = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                            else "cpu" if device == "auto" else device)
    if resolved.type == "cuda":
        index = resolved.index if resolved.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return (f"{resolved} = {props.name}, {props.total_memory / 2**30:.0f} GiB, "
                f"CUDA {torch.version.cuda}")
    return f"{resolved} = {platform.processor() or platform.machine()}, " \
           f"{torch.get_num_threads()} torch thread(s), {os.cpu_count()} CPUs"


def _run(problem, data, solver: str, params: dict, *, max_time: float, device: str):
    estimator = problem.make_estimator(solver, max_time=max_time, device=device,
                                       random_state=0, **params)
    wall = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            problem.fit_all(estimator, data)
            test = problem.loss(estimator, data.X_test, data.y_test)
            train = problem.loss(estimator, data.X_full, data.y_full)
            accuracy = problem.accuracy(estimator, data.X_test, data.y_test)
            status = estimator.stop_reason_
        except (ValueError, RuntimeError) as error:  # e.g. NaN predictions
            test = train = accuracy = math.nan
            status = f"failed: {type(error).__name__}: {str(error)[:80]}"
    updates = getattr(estimator, "n_updates_", 0)
    seconds = getattr(estimator, "train_time_", math.nan)
    return {"test": test, "train": train, "accuracy": accuracy, "updates": updates,
            "seconds": seconds, "per_update": seconds / updates if updates else math.nan,
            "status": status, "wall": time.time() - wall}


def run_gpu_check(out_dir, *, data_home=None, device: str = "auto", max_time: float = 10.0,
                  problems=None, regression_data: str = "auto", layers: dict | None = None,
                  progress=log) -> Path:
    """Run the check and write ``<out_dir>/gpu_check_<device>.txt``; returns its path.

    ``layers`` replaces problems' networks (``{problem name: layer sizes}``), for tests
    on small fixture data.
    """
    import torch

    import skkfac

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    described = device_description(device)
    lines = [f"skkfac GPU check, {datetime.datetime.now():%Y-%m-%d %H:%M}",
             f"device: {described}",
             f"torch {torch.__version__}, skkfac {skkfac.__version__} "
             f"(git {code_version()}), python {platform.python_version()}",
             f"budget: max_time = {max_time:g} s per run (the study: 10 s; 5 s for the "
             "regression); float32; seed 0",
             f"command: python -m benchmarks gpu --device {device} --max-time {max_time:g}",
             ""]
    header = (f"{'run':<58}{'test loss':>11}{'train loss':>11}{'test acc.':>10}"
              f"{'updates':>9}{'s/update':>10}{'train s':>9}  stop")
    for name in problems or PROBLEMS:
        problem = get_problem(name)
        if layers and name in layers:
            problem = replace(problem, layers=tuple(layers[name]))
        data = problem.load(data_home, regression_data=regression_data)
        note = f" NOTE: {data.note}" if data.note else ""
        lines += [f"== {problem.title} ({name}): {data.dataset}, trained on all "
                  f"{len(data.X_full)} training rows, tested on {len(data.X_test)}, "
                  f"{data.X_full.shape[1]} features.{note}",
                  f"   network {problem.network(data)}", header]
        for run_name, solver, params in planned_runs(problem):
            result = _run(problem, data, solver, params, max_time=max_time, device=device)
            accuracy = ("" if math.isnan(result["accuracy"])
                        else f"{result['accuracy']:.4f}")
            lines.append(f"{run_name:<58}{result['test']:>11.5g}{result['train']:>11.5g}"
                         f"{accuracy:>10}{result['updates']:>9}"
                         f"{result['per_update']:>10.4f}{result['seconds']:>9.2f}  "
                         f"{result['status']}")
            progress(f"gpu check {name}: {run_name}: test loss {result['test']:.5g} after "
                     f"{result['updates']} updates ({result['wall']:.1f} s wall)")
        lines.append("")
    lines.append(f"total wall time {time.time() - start:.0f} s; 1-minute load average "
                 f"{os.getloadavg()[0]:.2f}")
    kind = described.split(" = ")[0].replace(":", "")
    path = out_dir / f"gpu_check_{kind}.txt"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return path
