"""``.npz`` caches of decoded arrays, keyed by a fingerprint of the source files.

A cache holds the *raw* decoded arrays (e.g. uint8 pixels) and a JSON record of the cache
format, the loader's settings (``key``), loader-specific notes (``extra``) and, for each
source, a fingerprint: for a file its resolved path, size, modification time and SHA-256;
for a folder of many files (image folders) a digest of the listing of every file below
it with sizes and modification times. Loaders include the ``SHA256SUMS`` files they
consult among the sources, so editing a checksum list also invalidates the cache.

A cache is reused only if it holds every array the loader needs, each readable (the
``.npz`` members' CRC-32 are checked on reading) and of the dtype and shape recorded in
the metadata, and if the sources are the same paths and each is unchanged: a file
must have the same size and either the same mtime or, failing that, the same SHA-256
(a mere ``touch`` does not force a rebuild); a folder must have the same listing. A file
modified less than :data:`RACY_NS` before the cache was written is always re-hashed, since
a same-size rewrite within the file system's timestamp granularity could keep its mtime.
Anything else, including an unreadable cache, makes the loader decode the sources again
and overwrite the cache.

Caches are written atomically next to the data (``<data_home>/<dataset>/<stem>_cache.npz``)
when that folder is writable, and otherwise under :func:`get_cache_home`
(``<cache_home>/<dataset>/<stem>_<hash of the data folder path>_cache.npz``). Partial
files left by a writer that was killed are deleted the next time the cache is looked up
(:func:`~skkfac.datasets._base.remove_stale_parts`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

from skkfac.datasets._base import (
    atomic_output,
    ensure_writable_dir,
    get_cache_home,
    is_writable_dir,
    remove_stale_parts,
)
from skkfac.datasets._checksums import sha256_file

CACHE_FORMAT = 1
_META_KEY = "meta_json"
#: The arrays every loader's cache holds.
SPLIT_ARRAYS = ("X_train", "y_train", "X_test", "y_test")
#: Sources modified this close (ns) before the cache was written are verified by content.
RACY_NS = 2_000_000_000


def _listing_digest(folder: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            rel = os.path.relpath(path, folder)
            h.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            n += 1
    return h.hexdigest(), n


def source_record(path: Path, sha256: str | None = None, **extra) -> dict:
    """Fingerprint of one source: a file (hashing it unless ``sha256`` is given) or a folder."""
    path = Path(path)
    if path.is_dir():
        listing, n_files = _listing_digest(path)
        record = {"path": str(path.resolve()), "kind": "tree", "listing": listing,
                  "n_files": n_files}
    else:
        st = path.stat()
        record = {
            "path": str(path.resolve()),
            "kind": "file",
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "sha256": sha256 if sha256 is not None else sha256_file(path),
        }
    record.update(extra)
    return record


def cache_paths(dataset_dir: Path, stem: str) -> list[Path]:
    """Candidate cache files: next to the data first, then the fallback cache folder."""
    dataset_dir = Path(dataset_dir)
    tag = hashlib.sha256(str(dataset_dir.resolve()).encode()).hexdigest()[:16]
    return [
        dataset_dir / f"{stem}_cache.npz",
        get_cache_home() / dataset_dir.name / f"{stem}_{tag}_cache.npz",
    ]


def _unchanged(record: dict, written_ns: int) -> bool:
    path = Path(record["path"])
    try:
        if record["kind"] == "tree":
            return path.is_dir() and _listing_digest(path)[0] == record["listing"]
        st = path.stat()
    except OSError:
        return False
    if st.st_size != record["size"]:
        return False
    if st.st_mtime_ns == record["mtime_ns"] and record["mtime_ns"] < written_ns - RACY_NS:
        return True
    return sha256_file(path) == record["sha256"]  # touched (or racy), maybe not changed


def load_cache(candidates: list[Path], key: dict, sources: list[Path],
               required=SPLIT_ARRAYS):
    """Return ``(arrays, meta, cache path)`` from the first valid cache, else ``None``.

    ``key`` must equal the stored one, the stored sources must be exactly ``sources``
    (resolved, same order), each unchanged, and the cache must hold every array named in
    ``required``. Stale partial files of the candidates are deleted first.
    """
    wanted = [str(Path(p).resolve()) for p in sources]
    for cand in candidates:
        remove_stale_parts(cand)
        found = _read_valid(cand, key, wanted, required) if cand.is_file() else None
        if found is not None:
            return (*found, cand)
    return None


def _array_record(arr: np.ndarray) -> list:
    return [arr.dtype.str, list(arr.shape)]


def _read_valid(cand: Path, key: dict, wanted: list[str], required):
    """``(arrays, meta)`` of a cache file matching ``key``/``wanted``; ``None`` otherwise,
    including for an unreadable, truncated, incomplete or foreign file (a miss, rebuilt
    later)."""
    try:
        with np.load(cand, allow_pickle=False) as npz:
            meta = json.loads(str(npz[_META_KEY]))
            valid = (
                meta.get("format") == CACHE_FORMAT
                and meta.get("key") == key
                and [r["path"] for r in meta["sources"]] == wanted
                and set(required) <= set(npz.files)
                and all(_unchanged(r, meta.get("written_ns", 0)) for r in meta["sources"])
            )
            if not valid:
                return None
            arrays = {name: npz[name] for name in npz.files if name != _META_KEY}
    except Exception:
        return None
    recorded = meta.get("arrays")  # absent in caches written before it was recorded
    if recorded is not None and any(
        name not in recorded or _array_record(arr) != recorded[name]
        for name, arr in arrays.items()
    ):
        return None
    return arrays, meta


def save_cache(candidates: list[Path], arrays: dict, key: dict, records: list[dict],
               extra: dict | None = None):
    """Write the cache atomically to the first writable candidate and return its path.

    The first candidate (next to the data) is used only if its folder is writable
    (:func:`is_writable_dir`: a folder without write bits counts as read-only even for
    root). Failing to write anywhere only warns and returns ``None``.
    """
    meta = {"format": CACHE_FORMAT, "key": key, "sources": records, "extra": extra or {},
            "arrays": {name: _array_record(arr) for name, arr in arrays.items()},
            "written_ns": time.time_ns()}
    payload = dict(arrays)
    payload[_META_KEY] = np.array(json.dumps(meta))
    errors = []
    for i, cand in enumerate(candidates):
        try:
            if i == 0 and not is_writable_dir(cand.parent):
                errors.append(f"{cand.parent} is read-only")
                continue
            ensure_writable_dir(cand.parent)
            with atomic_output(cand) as f:
                np.savez(f, **payload)
            return cand
        except OSError as exc:
            errors.append(f"{cand}: {exc}")
    warnings.warn(
        "could not write a dataset cache (" + "; ".join(errors) + "); set SKKFAC_CACHE "
        "to a writable folder to speed up later loads",
        RuntimeWarning,
        stacklevel=3,
    )
    return None
