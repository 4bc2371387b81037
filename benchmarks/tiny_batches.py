"""K-FAC with mini-batches of 1-16 samples: one update per mini-batch, or the default.

The small-batch case of issue 21: ``KFACClassifier(hidden_layer_sizes=(8,),
batch_size=b, max_iter=40)`` on a 200-sample, 3-class ``make_classification``
(n_features=5, n_informative=3, n_redundant=0, random_state=0), split 150/50. For each
batch size it fits K-FAC with one update per mini-batch (``artificial_batch_size=b``,
what K-FAC did before it accumulated small batches), K-FAC at its defaults (updates of
at least 128 samples) and SGD at the same batch size, and prints the test accuracy, the
accuracy on all 200 samples, the stop reason and the number of updates::

    python -m benchmarks tiny-batches > benchmarks/results/kfac/tiny_batches.txt
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings

from sklearn.datasets import make_classification
from sklearn.model_selection import train_test_split

from benchmarks.defaults_report import machine_header
from skkfac import KFACClassifier

BATCH_SIZES = (1, 4, 16)


def main(argv=None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    load_start = os.getloadavg()
    warnings.simplefilter("ignore")
    X, y = make_classification(200, n_features=5, n_informative=3, n_redundant=0,
                               n_classes=3, random_state=0)
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)
    variants = {"K-FAC, update = mini-batch": lambda b: dict(artificial_batch_size=b),
                "K-FAC, defaults": lambda b: {},
                "SGD-Nesterov": lambda b: dict(solver="sgd")}
    lines = []
    for batch_size in BATCH_SIZES:
        for label, params in variants.items():
            clf = KFACClassifier(hidden_layer_sizes=(8,), batch_size=batch_size,
                                 max_iter=40, random_state=0, **params(batch_size))
            clf.fit(X_train, y_train)
            lines.append(f"batch {batch_size:>2}  {label:<27} test {clf.score(X_test, y_test):.2f}"
                         f"  all {clf.score(X, y):.2f}  {clf.stop_reason_:<9} "
                         f"{clf.n_updates_:>5} updates")
            print(lines[-1], file=sys.stderr, flush=True)
    header = machine_header([], 1, load_start)
    header["command"] = shlex.join(["python", "-m", "benchmarks", "tiny-batches",
                                    *(sys.argv[1:] if argv is None else argv)])
    for key, value in header.items():
        print(f"# {key}: {value}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
