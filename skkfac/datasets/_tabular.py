"""Shared reading of numeric CSV tables (CT slices, UCI regression sets)."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from skkfac.datasets._base import DatasetCorruptError

_READ_ERRORS = (
    ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, EOFError, OSError,
    zlib.error, zipfile.BadZipFile, UnicodeDecodeError,
)


@contextlib.contextmanager
def open_csv(path: Path, member: str | None = None):
    """Open ``path`` as a binary stream: plain, gzip or a zip member (told by magic bytes).

    ``member`` is the base name of the CSV inside a zip archive, which must hold it.
    """
    path = Path(path)
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(open(path, "rb"))
        head = raw.read(4)
        raw.seek(0)
        if head == b"PK\x03\x04":
            try:
                archive = stack.enter_context(zipfile.ZipFile(raw))
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise DatasetCorruptError(f"{path}: not a readable zip archive ({exc})") from exc
            names = [n for n in archive.namelist()
                     if n.rsplit("/", 1)[-1] == member and not n.startswith("__MACOSX")]
            if not names:
                raise DatasetCorruptError(
                    f"{path}: the zip archive holds no {member} "
                    f"(members: {archive.namelist()[:5]})"
                )
            yield stack.enter_context(archive.open(names[0]))
        elif head[:2] == b"\x1f\x8b":
            yield stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
        else:
            yield raw


def read_numeric_csv(path: Path, *, header: bool, member: str | None = None) -> pd.DataFrame:
    """Read a comma-separated table of numbers as float64, failing clearly on bad content.

    Raises
    ------
    DatasetCorruptError
        On unreadable/truncated compression, ragged rows, non-numeric cells or missing
        values; the message names the file (and the row where known).
    """
    where = f"{path}!{member}" if Path(path).suffix.lower() == ".zip" else str(path)
    try:
        with open_csv(path, member) as stream:
            frame = pd.read_csv(
                stream, header=0 if header else None, dtype=np.float64, engine="c",
                quoting=csv.QUOTE_NONE, skip_blank_lines=True,
            )
    except DatasetCorruptError:
        raise
    except _READ_ERRORS as exc:
        hint = "" if header else " (the file must be comma-separated numbers without a header)"
        raise DatasetCorruptError(
            f"{where}: cannot parse as a numeric CSV{hint}: {type(exc).__name__}: {exc}"
        ) from exc
    if frame.shape[0] == 0:
        raise DatasetCorruptError(f"{where}: the table has no data rows")
    values = frame.to_numpy()
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if bad.size:
        line = int(bad[0]) + 1 + int(header)
        raise DatasetCorruptError(
            f"{where}: {bad.size} row(s) with missing or non-finite values, first at line "
            f"{line} (truncated or malformed file?)"
        )
    return frame


def peek_header(path: Path, member: str | None = None) -> list[str]:
    """The first line of a (possibly compressed or zipped) CSV, split on commas."""
    with open_csv(path, member) as stream:
        line = io.TextIOWrapper(stream, encoding="utf-8", newline="").readline()
    return [c.strip() for c in line.strip().split(",")]
