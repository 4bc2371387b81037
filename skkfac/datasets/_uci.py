"""UCI-style regression tables: comma-separated numbers, no header, target last."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from skkfac.datasets._base import (
    DatasetCorruptError,
    DatasetNotFoundError,
    first_existing,
    get_data_home,
    split_indices,
)
from skkfac.datasets._checksums import Verifier, sha256_file
from skkfac.datasets._tabular import read_numeric_csv

UCI_DIR = "uci"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SUFFIXES = (".csv", ".csv.gz", ".gz", ".txt")

#: Notes on the sets known to ship with the benchmark data (treforevans/uci_datasets).
UCI_NOTES = {
    "keggundirected": (
        "KEGG Metabolic Reaction Network (Undirected), UCI ML Repository; 63,608 rows, "
        "27 features + target, as distributed by treforevans/uci_datasets (features and "
        "target already centred there)."
    ),
    "protein": (
        "Physicochemical Properties of Protein Tertiary Structure (CASP), UCI ML "
        "Repository; 45,730 rows, 9 features + target, as distributed by "
        "treforevans/uci_datasets (features and target already centred there)."
    ),
}


def _resolve(name, home: Path) -> tuple[Path, str]:
    """Return ``(path, short name)`` for a data-set name or a direct path."""
    text = os.fspath(name)
    is_path = (
        isinstance(name, os.PathLike)
        or os.sep in text
        or "/" in text
        or text.lower().endswith(_SUFFIXES)
    )
    if is_path:
        path = Path(os.path.expanduser(text))
        if not path.is_file():
            raise DatasetNotFoundError(f"UCI regression file not found: {path}")
        short = path.name
        for suffix in (".gz", ".csv", ".txt"):
            short = short.removesuffix(suffix)
        return path, short
    if not _NAME.match(text):
        raise ValueError(
            f"invalid data-set name {text!r}: use a bare name such as 'protein' (letters, "
            f"digits, '_', '-', '.') or a path to a CSV file"
        )
    folder = home / UCI_DIR
    candidates = [folder / f"{text}.csv", folder / f"{text}.csv.gz"]
    path = first_existing(candidates)
    if path is None:
        raise DatasetNotFoundError(
            f"UCI regression set {text!r} not found: put a comma-separated file without "
            f"header, target in the last column, at {candidates[1]} (gzipped) or "
            f"{candidates[0]}, or pass the file's path as `name`. Data home: {home} "
            f"(data_home argument > SKKFAC_DATA > ~/skkfac_data)."
        )
    return path, text


def load_uci_regression(name, data_home=None, *, test_size=0.1, random_state=0):
    """Load a UCI-style regression table and hold out a seeded test set.

    The file is comma-separated numbers without a header, one row per sample, the target
    in the last column; it may be gzip-compressed. ``name`` is either a bare data-set name
    (``"keggundirected"``, ``"protein"``, ...), read from ``<data_home>/uci/<name>.csv``
    or, failing that, ``<data_home>/uci/<name>.csv.gz``, or a path to such a file (any
    ``os.PathLike``, or a string containing a path separator or ending in ``.csv``,
    ``.csv.gz``, ``.gz`` or ``.txt``). A ``SHA256SUMS`` list in the file's folder naming
    it is checked. No scaling is applied.

    Split: the rows are shuffled with ``random_state``; the first ``test_size`` of the
    permutation form the test set and the rest the training set (both in that order).

    Parameters
    ----------
    name : str or os.PathLike
        Data-set name or file path.
    data_home : str or os.PathLike, default=None
        Data folder for bare names; see :func:`get_data_home`.
    test_size : int or float, default=0.1
        Held-out rows: a fraction in (0, 1) (rounded up) or a number of rows (0 allowed).
    random_state : int, RandomState instance or None, default=0
        Seed of the shuffle.

    Returns
    -------
    data : sklearn.utils.Bunch
        X_train : ndarray of shape (n_train, n_features), float32
            Every column but the last.
        y_train : ndarray of shape (n_train,), float32
            The last column.
        X_test : ndarray of shape (n_test, n_features), float32
            Held-out features.
        y_test : ndarray of shape (n_test,), float32
            Held-out targets.
        name : str
            The data-set name (file name without suffixes for a path).
        DESCR : str
            Provenance, split and caveats.
        source : list of str
            The file read.

    Raises
    ------
    DatasetNotFoundError
        If the file is missing (the message names where it was expected).
    DatasetCorruptError
        On non-numeric cells, ragged or incomplete rows, fewer than 2 columns, or a
        truncated file; :class:`ChecksumMismatchError` if a ``SHA256SUMS`` digest differs.

    Examples
    --------
    >>> from skkfac.datasets import load_uci_regression
    >>> protein = load_uci_regression("protein", "/work/shared/data")  # doctest: +SKIP
    >>> protein.X_train.shape, protein.X_test.shape, protein.y_train.dtype  # doctest: +SKIP
    ((41157, 9), (4573, 9), dtype('float32'))
    """
    home = get_data_home(data_home)
    path, short = _resolve(name, home)
    verifier = Verifier(path.parent)
    verifier.check(path, sha256_file(path))
    values = read_numeric_csv(path, header=False).to_numpy()
    if values.shape[1] < 2:
        raise DatasetCorruptError(
            f"{path}: found {values.shape[1]} column(s); need features plus a target column "
            f"(comma-separated)"
        )
    if values.shape[0] < 2:
        raise DatasetCorruptError(f"{path}: found {values.shape[0]} row(s); need at least 2")
    X = values[:, :-1].astype(np.float32)
    y = values[:, -1].astype(np.float32)
    train, test = split_indices(len(X), test_size, random_state)
    lines = [
        (
            f"UCI regression set {short!r}: {len(X)} rows, {X.shape[1]} features + target "
            "(last column); features and target as float32, not rescaled."
        ),
        (
            f"{len(test)} rows held out as test set by a shuffle with "
            f"random_state={random_state!r} (test_size={test_size!r})."
        ),
    ]
    if short in UCI_NOTES:
        lines.append(UCI_NOTES[short])
    lines.append(f"Read from: {path}")
    lines.append(
        "Checksums verified against: " + ", ".join(sorted(map(str, verifier.used)))
        if verifier.used else "Checksums: not verified (no SHA256SUMS names this file)."
    )
    if (path.parent / "PROVENANCE.txt").is_file():
        lines.append(f"Provenance notes: {path.parent / 'PROVENANCE.txt'}")
    return Bunch(
        X_train=X[train], y_train=y[train], X_test=X[test], y_test=y[test],
        name=short, DESCR="\n".join(lines), source=[str(path)],
    )
