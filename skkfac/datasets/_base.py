"""Shared plumbing of the dataset loaders: folders, errors, writability and splits."""

from __future__ import annotations

import glob
import hashlib
import math
import os
import socket
import stat
import tempfile
import time
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from sklearn.utils import check_random_state

__all__ = [
    "ChecksumMismatchError",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "get_cache_home",
    "get_data_home",
]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file the loader needs is not where it was looked for.

    The message names every path that was tried, says which file to put where and,
    for datasets with a public download, gives the URL and mentions ``download=True``.
    """


class DatasetCorruptError(ValueError):
    """A dataset file exists but is truncated, malformed or otherwise unusable.

    The message names the offending file.
    """


class ChecksumMismatchError(DatasetCorruptError):
    """A file's SHA-256 digest differs from the one recorded for it.

    The message names the file, the checksum list and both digests.
    """


def get_data_home(data_home: str | os.PathLike | None = None) -> Path:
    """Return the folder the dataset loaders read from.

    Precedence: the ``data_home`` argument, then the ``SKKFAC_DATA`` environment
    variable, then ``~/skkfac_data``. ``~`` is expanded. The folder is **not**
    created (the data home may be a read-only shared copy); loaders create
    sub-folders only when they have to write, e.g. with ``download=True``.

    Parameters
    ----------
    data_home : str or os.PathLike, default=None
        Explicit data folder. ``None`` (or an empty string) means "not given".

    Returns
    -------
    pathlib.Path
        The data folder, with ``~`` expanded (not resolved, not checked to exist).

    Examples
    --------
    >>> from skkfac.datasets import get_data_home
    >>> str(get_data_home("/srv/data"))
    '/srv/data'
    """
    if data_home is None or str(data_home) == "":
        data_home = os.environ.get("SKKFAC_DATA") or os.path.join("~", "skkfac_data")
    return Path(os.path.expanduser(os.fspath(data_home)))


def get_cache_home(cache_home: str | os.PathLike | None = None) -> Path:
    """Return the writable folder used for decoded-array caches when the data home is read-only.

    Precedence: the ``cache_home`` argument, then the ``SKKFAC_CACHE`` environment
    variable, then ``~/.cache/skkfac``. The folder is not created here.

    Parameters
    ----------
    cache_home : str or os.PathLike, default=None
        Explicit cache folder.

    Returns
    -------
    pathlib.Path
        The cache folder with ``~`` expanded.

    Examples
    --------
    >>> from skkfac.datasets import get_cache_home
    >>> str(get_cache_home("/tmp/skkfac-cache"))
    '/tmp/skkfac-cache'
    """
    if cache_home is None or str(cache_home) == "":
        cache_home = os.environ.get("SKKFAC_CACHE") or os.path.join("~", ".cache", "skkfac")
    return Path(os.path.expanduser(os.fspath(cache_home)))


def is_writable_dir(path: Path) -> bool:
    """Whether we may write into the existing folder ``path``.

    Besides ``os.access`` (which also sees read-only mounts), a folder whose mode has
    no write bit at all is treated as read-only even for root, who could write into
    it anyway: shared read-only data copies are marked that way.
    """
    try:
        st = path.stat()
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    if not st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        return False
    return os.access(path, os.W_OK | os.X_OK)


def ensure_writable_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed and check that it is writable.

    Raises
    ------
    PermissionError
        If the folder (or the first existing ancestor, when creating) is read-only.
    NotADirectoryError
        If that ancestor is a file.
    """
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise NotADirectoryError(f"cannot create {path}: {probe} is not a folder")
    if probe.exists() and not is_writable_dir(probe):
        raise PermissionError(
            f"cannot write into {probe}: the folder is read-only (mode "
            f"{stat.filemode(probe.stat().st_mode)}); choose a writable data_home"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def first_existing(candidates) -> Path | None:
    """Return the first path in ``candidates`` that is an existing file, else ``None``."""
    for cand in candidates:
        if cand.is_file():
            return cand
    return None


def split_indices(n_samples: int, test_size, random_state):
    """Seeded hold-out split of ``range(n_samples)``.

    A permutation of the rows is drawn with ``check_random_state(random_state)``; its
    first ``n_test`` entries are the test rows and the rest the training rows, both in
    permutation (shuffled) order. ``test_size`` is an int (number of rows, ``0`` allowed)
    or a float in ``(0, 1)`` (fraction, rounded up as in scikit-learn).
    """
    if isinstance(test_size, (bool, np.bool_)):
        raise TypeError(f"test_size must be an int or a float, got {test_size!r}")
    if isinstance(test_size, Integral):
        n_test = int(test_size)
        if not 0 <= n_test < n_samples:
            raise ValueError(
                f"test_size={n_test} must be >= 0 and smaller than the number of rows "
                f"({n_samples})"
            )
    elif isinstance(test_size, Real):
        if not 0.0 < float(test_size) < 1.0:
            raise ValueError(f"a float test_size must lie in (0, 1), got {test_size!r}")
        n_test = math.ceil(float(test_size) * n_samples)
        if n_test >= n_samples:
            raise ValueError(
                f"test_size={test_size!r} leaves no training rows out of {n_samples}"
            )
    else:
        raise TypeError(f"test_size must be an int or a float, got {test_size!r}")
    perm = check_random_state(random_state).permutation(n_samples)
    return perm[n_test:], perm[:n_test]


#: A partial file untouched for this long is abandoned whoever wrote it (seconds).
STALE_PART_SECONDS = 3600.0
_HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _part_prefix(target: Path) -> str:
    return f".{target.name}."


class atomic_output:
    """Context manager writing a file atomically.

    A hidden temporary file ``.<name>.<host>-<pid>.<random>.part`` in the target's folder
    is yielded (opened ``"wb"``), flushed, fsync-ed and ``os.replace``-d onto the target
    on success, and deleted on any exception, so no half-written target is ever visible
    under its final name. A process killed while writing cannot delete its partial file;
    the writer's host and process id in the name let :func:`remove_stale_parts` recognise
    it later.
    """

    def __init__(self, target: Path):
        self.target = Path(target)
        self._tmp: Path | None = None
        self._file = None

    def __enter__(self):
        fd, name = tempfile.mkstemp(
            prefix=f"{_part_prefix(self.target)}{_HOST_TAG}-{os.getpid()}.", suffix=".part",
            dir=self.target.parent,
        )
        self._tmp = Path(name)
        self.tmp_path = self._tmp
        self._file = os.fdopen(fd, "wb")
        return self._file

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()
            if exc_type is None:
                os.chmod(self._tmp, 0o644)
                os.replace(self._tmp, self.target)
                self._tmp = None
        finally:
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
        return False


def _writer_is_gone(part: Path, target: Path) -> bool:
    """Whether the process that wrote ``part`` (named by :class:`atomic_output`) has ended."""
    owner = part.name[len(_part_prefix(target)):-len(".part")].rsplit(".", 1)[0]
    host, _, pid = owner.rpartition("-")
    if host != _HOST_TAG or not pid.isdigit():
        return False  # another machine's (or an old-style) file: only its age tells
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. another user's live process
        return False
    return False


def remove_stale_parts(target: Path) -> list[Path]:
    """Delete partial files of ``target`` left by writers that died (see
    :class:`atomic_output`) and return them.

    A partial file is stale when its writer ran on this host and is no longer running,
    or when it has not been modified for :data:`STALE_PART_SECONDS` (a writer on another
    host, or a process id reused since). Files of live writers are left alone, and so is
    a folder we may not write into.
    """
    target = Path(target)
    folder = target.parent
    if not is_writable_dir(folder):
        return []
    removed = []
    now = time.time()
    for part in folder.glob(f"{glob.escape(_part_prefix(target))}*.part"):
        try:
            stale = (_writer_is_gone(part, target)
                     or now - part.stat().st_mtime > STALE_PART_SECONDS)
            if stale:
                part.unlink()
                removed.append(part)
        except OSError:  # vanished meanwhile (its writer finished) or not ours to delete
            continue
    return removed
