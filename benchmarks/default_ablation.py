"""One K-FAC default changed at a time, on the defaults benchmark's tabular suite.

Fits ``KFACRegressor``/``KFACClassifier`` at their defaults except ``--parameter``, set to
each of ``--values`` in turn, on every tabular set of :mod:`benchmarks.tabular`, with the
same pipelines, splits and seeds as ``python -m benchmarks defaults``, and prints the
median test score (R² or accuracy) and fit seconds of each value per set. It is the
measurement behind the defaults ``early_stopping='auto'`` and ``alpha='auto'``
(``docs/user_guide/reliability.rst``, "Stopping" and "The default L2 penalty")::

    python -m benchmarks default-ablation --data-home /work/shared/data \\
        > benchmarks/results/defaults/early_stopping.txt
    python -m benchmarks default-ablation --parameter alpha --values 0 auto \\
        --data-home /work/shared/data > benchmarks/results/defaults/alpha.txt
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings

import numpy as np

from benchmarks.defaults_report import machine_header
from benchmarks.tabular import (
    BUNDLED_SETS,
    UCI_SETS,
    fit_tabular,
    load_tabular,
    make_model,
)


def parse_value(text: str):
    """A command-line value as the estimator takes it: ``True``/``False``, ``None``, an
    integer (for parameters such as ``n_iter_no_change``, which refuse ``10.0``), a
    float, or the string itself (``'auto'``).

    >>> [parse_value(t) for t in ("True", "None", "10", "0.5", "1e-3", "auto")]
    [True, None, 10, 0.5, 0.001, 'auto']
    """
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return text


def fit_with(X, y, kind: str, seed: int, threads: int, parameter: str, value) -> dict:
    """:func:`~benchmarks.tabular.fit_tabular` for K-FAC with ``parameter=value``."""
    def with_setting(method, kind_, seed_, threads_):
        model = make_model(method, kind_, seed_, threads_)
        pipeline = getattr(model, "regressor", model)
        pipeline[-1].set_params(**{parameter: value})
        return model

    return fit_tabular(X, y, kind, "kfac", seed, threads, model_factory=with_setting)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parameter", default="early_stopping",
                        help="estimator parameter to vary (default: early_stopping)")
    parser.add_argument("--values", nargs="+", type=parse_value,
                        default=[False, "auto", True],
                        help="its values (default: False auto True)")
    parser.add_argument("--data-home", default=os.environ.get("SKKFAC_DATA"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sets", nargs="+", default=[*BUNDLED_SETS, *UCI_SETS])
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    warnings.simplefilter("ignore", UserWarning)
    lines = []
    for name in args.sets:
        X, y, kind = load_tabular(name, args.data_home)
        cells = []
        for value in args.values:
            runs = [fit_with(X, y, kind, seed, args.threads, args.parameter, value)
                    for seed in range(args.seeds)]
            score = np.median([run["score"] for run in runs])
            seconds = np.median([run["fit_seconds"] for run in runs])
            cells.append(f"{score:8.4f} {seconds:6.2f}s")
        lines.append(f"{name:<14}" + "".join(f"{cell:>18}" for cell in cells))
        print(lines[-1], file=sys.stderr, flush=True)
    header = machine_header([], args.threads, load_start)
    header["command"] = shlex.join(["python", "-m", "benchmarks", "default-ablation",
                                    *(sys.argv[1:] if argv is None else argv)])
    for key, value in header.items():
        print(f"# {key}: {value}")
    print(f"# median over {args.seeds} splits of the test score (R² for regression, "
          "accuracy for classification) and of the fit seconds, K-FAC at its defaults "
          f"with {args.parameter} =")
    print(f"{'set':<14}" + "".join(f"{v!s:>18}" for v in args.values))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
