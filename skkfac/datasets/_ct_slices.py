"""UCI "Relative location of CT slices on axial axis" (slice localization) data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from skkfac.datasets import _download
from skkfac.datasets._base import (
    DatasetCorruptError,
    DatasetNotFoundError,
    first_existing,
    get_data_home,
    split_indices,
)
from skkfac.datasets._checksums import Verifier, sha256_file
from skkfac.datasets._tabular import peek_header, read_numeric_csv

CT_DIR = "ct_slices"
CT_CSV = "slice_localization_data.csv"
CT_ZIP = "slice_localization_data.zip"
CT_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/00206/slice_localization_data.zip"
CT_HOMEPAGE = "https://archive.ics.uci.edu/dataset/206/relative+location+of+ct+slices+on+axial+axis"
CT_N_FEATURES = 384
CT_COLUMNS = ["patientId", *[f"value{i}" for i in range(CT_N_FEATURES)], "reference"]


def _check_columns(columns, where: str) -> None:
    columns = [str(c).strip() for c in columns]
    if columns != CT_COLUMNS:
        missing = [c for c in CT_COLUMNS if c not in columns]
        extra = [c for c in columns if c not in CT_COLUMNS]
        raise DatasetCorruptError(
            f"{where}: unexpected header ({len(columns)} columns; expected {len(CT_COLUMNS)}: "
            f"patientId, value0..value{CT_N_FEATURES - 1}, reference in that order; missing "
            f"{missing[:5]}, unexpected {extra[:5]})"
        )


def _validate_download(path) -> None:
    _check_columns(peek_header(Path(path), CT_CSV), f"downloaded {CT_ZIP}")


def load_ct_slices(data_home=None, *, test_size=5000, random_state=0, download=False):
    """Load the UCI CT-slice localisation data: 384 features, target scaled into [0, 1].

    Reads ``<data_home>/ct_slices/slice_localization_data.csv`` or, failing that,
    ``slice_localization_data.zip`` (read in place). The CSV has a header row with the
    columns ``patientId, value0, ..., value383, reference`` (53,500 rows in the UCI
    release). ``patientId`` identifies one of 97 patients and is **not** a feature; it is
    returned separately. The target ``reference`` (relative axial position, 0-180) is
    divided by 180. A ``SHA256SUMS`` list in the folder naming the file is checked.

    Held-out split (reference study §6.2): the rows are shuffled with ``random_state``
    and the first ``test_size`` of the permutation form the test set, the rest the
    training set (both in that shuffled order). The split is by row, not by patient, so
    slices of the same patient occur in both sets; use ``patient_id_*`` with a grouped
    splitter for patient-level generalisation.

    Parameters
    ----------
    data_home : str or os.PathLike, default=None
        Data folder; see :func:`get_data_home`.
    test_size : int or float, default=5000
        Number of held-out rows (int, 0 allowed) or their fraction (float in (0, 1)).
    random_state : int, RandomState instance or None, default=0
        Seed of the shuffle (``None``: not reproducible).
    download : bool, default=False
        If the data are missing, fetch ``CT_URL`` (the UCI zip) into
        ``<data_home>/ct_slices/`` with :mod:`pooch` (header-checked before it is
        written, atomically; no published checksum is known).

    Returns
    -------
    data : sklearn.utils.Bunch
        X_train : ndarray of shape (53500 - test_size, 384), float32
            ``value0`` ... ``value383`` (histogram features; -0.25 marks "no data").
        y_train : ndarray of shape (53500 - test_size,), float32
            ``reference / 180`` in [0, 1].
        X_test : ndarray of shape (test_size, 384), float32
            Held-out features, as ``X_train``.
        y_test : ndarray of shape (test_size,), float32
            Held-out targets, as ``y_train``.
        patient_id_train, patient_id_test : ndarray of shape (n,), int64
            ``patientId`` of each row (not part of ``X``).
        feature_names : list of str
            ``"value0"`` ... ``"value383"``.
        target_names : list of str
            ``["reference"]``.
        DESCR : str
            Description with provenance, preprocessing and caveats.
        source : list of str
            The file read.

    Raises
    ------
    DatasetNotFoundError
        If neither the CSV nor the zip is present (the message names both paths).
    DatasetCorruptError
        On a wrong header, non-numeric or missing values, a target outside [0, 180] or a
        truncated file; :class:`ChecksumMismatchError` if a ``SHA256SUMS`` digest differs.

    Examples
    --------
    >>> from skkfac.datasets import load_ct_slices
    >>> ct = load_ct_slices()  # doctest: +SKIP
    >>> ct.X_train.shape, ct.X_test.shape, float(ct.y_train.max()) <= 1.0  # doctest: +SKIP
    ((48500, 384), (5000, 384), True)
    """
    home = get_data_home(data_home)
    folder = home / CT_DIR
    candidates = [folder / CT_CSV, folder / CT_ZIP]
    path = first_existing(candidates)
    if path is None and download:
        _download.fetch(home, f"{CT_DIR}/{CT_ZIP}", [CT_URL], check=_validate_download)
        path = first_existing(candidates)
    if path is None:
        raise DatasetNotFoundError(
            f"CT-slice data not found: put {CT_CSV} (header row; columns patientId, "
            f"value0..value383, reference) at {candidates[0]} or the UCI archive at "
            f"{candidates[1]}. Download: {CT_URL} (dataset page {CT_HOMEPAGE}), or call "
            f"load_ct_slices(..., download=True). Data home: {home} (data_home argument > "
            f"SKKFAC_DATA > ~/skkfac_data)."
        )
    verifier = Verifier(folder)
    verifier.check(path, sha256_file(path))
    where = f"{path}!{CT_CSV}" if path.suffix == ".zip" else str(path)
    frame = read_numeric_csv(path, header=True, member=CT_CSV)
    _check_columns(frame.columns, where)
    values = frame.to_numpy()
    patient = values[:, 0]
    reference = values[:, -1]
    if (patient != np.round(patient)).any():
        raise DatasetCorruptError(f"{where}: patientId holds non-integer values")
    if reference.min() < 0 or reference.max() > 180:
        raise DatasetCorruptError(
            f"{where}: reference outside [0, 180] (found {reference.min()}..{reference.max()})"
        )
    X = values[:, 1:-1].astype(np.float32)
    y = (reference / 180.0).astype(np.float32)
    train, test = split_indices(len(X), test_size, random_state)
    data = Bunch(
        X_train=X[train], y_train=y[train], X_test=X[test], y_test=y[test],
        patient_id_train=patient[train].astype(np.int64),
        patient_id_test=patient[test].astype(np.int64),
        feature_names=CT_COLUMNS[1:-1],
        target_names=["reference"],
        source=[str(path)],
    )
    n = len(X)
    lines = [
        "Relative location of CT slices on axial axis (UCI ML Repository, Graf et al. 2011).",
        (
            f"{n} rows (UCI release: 53500) from {len(np.unique(patient))} patients; "
            f"{len(test)} held out as test set by a shuffle with random_state={random_state!r}."
        ),
        (
            "X_*: float32 value0..value383 (patientId excluded, see patient_id_*); "
            "y_*: float32 reference / 180 in [0, 1]."
        ),
        "CAVEAT: rows of one patient appear in both sets (row-wise split as in the study).",
        f"Source: {CT_URL}; read from {where}.",
        "Checksums verified against: " + ", ".join(sorted(map(str, verifier.used)))
        if verifier.used else "Checksums: not verified (no SHA256SUMS names this file).",
    ]
    if n != 53500:
        lines.append("CAVEAT: the row count differs from the UCI release.")
    data.DESCR = "\n".join(lines)
    return data
