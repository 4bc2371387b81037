"""MNIST from the four canonical IDX files (gzipped or not)."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from skkfac.datasets import _download
from skkfac.datasets._base import (
    DatasetCorruptError,
    DatasetNotFoundError,
    first_existing,
    get_data_home,
)
from skkfac.datasets._cache import cache_paths, load_cache, save_cache, source_record
from skkfac.datasets._checksums import SUMS, SUMS_UNCOMPRESSED, Verifier, sha256_bytes

MNIST_DIR = "mnist"
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
#: Mirrors of the ``.gz`` files, tried in order (yann.lecun.com often refuses robots).
MNIST_URLS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]
MNIST_HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"
_CACHE_KEY = {"loader": "mnist", "version": 1}


def parse_idx(data: bytes, *, name: str = "<bytes>") -> np.ndarray:
    """Decode an IDX buffer (LeCun's format) into a native-endian array.

    The header is two zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C
    int, 0x0D float, 0x0E double), the number of dimensions and one big-endian uint32 per
    dimension; the body must hold exactly the announced number of items.

    Raises
    ------
    DatasetCorruptError
        On a bad magic number, a truncated header or body, or trailing bytes.
    """
    if len(data) < 4:
        raise DatasetCorruptError(f"{name}: only {len(data)} bytes, too short for an IDX file")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetCorruptError(
            f"{name}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000TTDD with type "
            f"TT in {sorted(hex(k) for k in _IDX_DTYPES)}); not an IDX file"
        )
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetCorruptError(f"{name}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header
    if found < expected:
        raise DatasetCorruptError(
            f"{name}: truncated IDX file: header announces shape {dims} ({expected} data "
            f"bytes) but only {found} bytes follow"
        )
    if found > expected:
        raise DatasetCorruptError(
            f"{name}: {found - expected} unexpected trailing bytes after the {expected} data "
            f"bytes of shape {dims}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _decompress(raw: bytes, path: Path) -> bytes:
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetCorruptError(
            f"{path}: corrupt or truncated gzip data ({type(exc).__name__}: {exc})"
        ) from exc


def _read_idx(path: Path, base: str, verifier: Verifier):
    """Read, checksum-verify and decode one IDX file; return ``(array, source record)``."""
    raw = path.read_bytes()
    file_digest = sha256_bytes(raw)
    verifier.check(path, file_digest, sums_name=SUMS)
    content = _decompress(raw, path)
    content_digest = file_digest if content is raw else sha256_bytes(content)
    del raw
    verifier.check(path, content_digest, sums_name=SUMS_UNCOMPRESSED, key=base,
                   what=f"the decompressed content of {path}")
    arr = parse_idx(content, name=str(path))
    return arr, source_record(path, file_digest, content_sha256=content_digest)


def _check_pair(images: np.ndarray, labels: np.ndarray, img_path: Path, lbl_path: Path):
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DatasetCorruptError(
            f"{img_path}: expected uint8 images of shape (n, 28, 28), got {images.dtype} "
            f"{images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DatasetCorruptError(
            f"{lbl_path}: expected a 1-d uint8 label vector, got {labels.dtype} {labels.shape}"
        )
    if len(images) != len(labels):
        raise DatasetCorruptError(
            f"{img_path} holds {len(images)} images but {lbl_path} holds {len(labels)} labels"
        )
    if labels.size and labels.max() > 9:
        raise DatasetCorruptError(f"{lbl_path}: label {int(labels.max())} outside 0-9")


def _locate(folder: Path) -> tuple[dict, list]:
    found, missing = {}, []
    for key, base in MNIST_FILES.items():
        path = first_existing([folder / base, folder / f"{base}.gz"])
        if path is None:
            missing.append(base)
        else:
            found[key] = path
    return found, missing


def _download_missing(home: Path, missing: list) -> None:
    for base in missing:
        name = f"{base}.gz"
        _download.fetch(home, f"{MNIST_DIR}/{name}", [url + name for url in MNIST_URLS])


def load_mnist(data_home=None, *, cache=True, download=False):
    """Load MNIST (canonical 60,000/10,000 split) as flattened float32 pixels in [0, 1].

    The four IDX files are read from ``<data_home>/mnist/``: ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``,
    each either raw or gzip-compressed with a ``.gz`` suffix (a raw file is preferred
    when both exist). Magic numbers, dimensions (28x28 uint8) and sizes are validated.
    If the folder has a ``SHA256SUMS`` file naming a file, the file's bytes are checked
    against it; if it has ``SHA256SUMS.uncompressed``, the decompressed IDX bytes are
    checked against it (keyed by the name without ``.gz``).

    Parameters
    ----------
    data_home : str or os.PathLike, default=None
        Data folder; see :func:`get_data_home` (argument > ``SKKFAC_DATA`` >
        ``~/skkfac_data``).
    cache : bool, default=True
        Reuse / write an ``.npz`` cache of the decoded uint8 arrays, next to the data if
        that folder is writable, else under :func:`get_cache_home`. The cache is rebuilt
        when a source file changes (size, then SHA-256 if the mtime moved).
    download : bool, default=False
        Fetch missing files from the mirrors in ``MNIST_URLS`` into
        ``<data_home>/mnist/`` with :mod:`pooch` (verified against the canonical
        SHA-256 of the original ``.gz`` archives, written atomically).

    Returns
    -------
    data : sklearn.utils.Bunch
        X_train : ndarray of shape (60000, 784), float32
            Pixels / 255 in [0, 1], each 28x28 image flattened row by row.
        y_train : ndarray of shape (60000,), int64
            Digit labels 0-9.
        X_test : ndarray of shape (10000, 784), float32
            Test pixels, scaled like ``X_train``.
        y_test : ndarray of shape (10000,), int64
            Test labels 0-9.
        feature_names : list of str
            ``"pixel_<row>_<col>"`` in column order.
        target_names : list of str
            ``"0"`` ... ``"9"``.
        DESCR : str
            Description with provenance, preprocessing and checksum status.
        source : list of str
            The four files read (also when the arrays came from the cache).
        cache_path : str or None
            The cache file used or written, if any.
        from_cache : bool
            Whether the arrays came from the cache.

    Raises
    ------
    DatasetNotFoundError
        If a file is missing (the message names it and where to put it).
    DatasetCorruptError
        If a file is truncated/malformed; :class:`ChecksumMismatchError` (a subclass) if a
        digest differs from ``SHA256SUMS``/``SHA256SUMS.uncompressed``.

    Examples
    --------
    >>> from skkfac.datasets import load_mnist
    >>> mnist = load_mnist("/work/shared/data")  # doctest: +SKIP
    >>> mnist.X_train.shape, mnist.X_train.dtype, mnist.y_test[:5]  # doctest: +SKIP
    ((60000, 784), dtype('float32'), array([7, 2, 1, 0, 4]))
    """
    home = get_data_home(data_home)
    folder = home / MNIST_DIR
    paths, missing = _locate(folder)
    if missing and download:
        _download_missing(home, missing)
        paths, missing = _locate(folder)
    if missing:
        raise DatasetNotFoundError(
            "MNIST file(s) not found: "
            + ", ".join(f"{folder / base}[.gz]" for base in missing)
            + f". Put the four IDX files ({', '.join(f'{b}.gz' for b in MNIST_FILES.values())};"
            f" gzipped or not) into {folder}/. Canonical source: {MNIST_HOMEPAGE} (mirror: "
            f"{MNIST_URLS[0]}), or call load_mnist(..., download=True) to fetch them. Data "
            f"home: {home} (data_home argument > SKKFAC_DATA > ~/skkfac_data)."
        )
    order = ["train_images", "train_labels", "test_images", "test_labels"]
    files = [paths[k] for k in order]
    verifier = Verifier(folder)
    sums = verifier.sums_files(files, SUMS) + verifier.sums_files(files, SUMS_UNCOMPRESSED)
    candidates = cache_paths(folder, "mnist")
    hit = load_cache(candidates, _CACHE_KEY, files + sums) if cache else None
    if hit is not None:
        arrays, meta, cache_path = hit
        vouched = meta["extra"].get("verified_with", [])
    else:
        decoded, records = {}, []
        for key in order:
            arr, rec = _read_idx(paths[key], MNIST_FILES[key], verifier)
            decoded[key] = arr
            records.append(rec)
        _check_pair(decoded["train_images"], decoded["train_labels"],
                    paths["train_images"], paths["train_labels"])
        _check_pair(decoded["test_images"], decoded["test_labels"],
                    paths["test_images"], paths["test_labels"])
        arrays = {
            "X_train": decoded["train_images"].reshape(len(decoded["train_images"]), -1),
            "y_train": decoded["train_labels"],
            "X_test": decoded["test_images"].reshape(len(decoded["test_images"]), -1),
            "y_test": decoded["test_labels"],
        }
        vouched = sorted(str(p) for p in verifier.used)
        cache_path = None
        if cache:
            records += [source_record(p) for p in sums]
            cache_path = save_cache(candidates, arrays, _CACHE_KEY, records,
                                    {"verified_with": vouched})
    data = Bunch(
        X_train=_scale(arrays["X_train"]),
        y_train=arrays["y_train"].astype(np.int64),
        X_test=_scale(arrays["X_test"]),
        y_test=arrays["y_test"].astype(np.int64),
        feature_names=[f"pixel_{r}_{c}" for r in range(28) for c in range(28)],
        target_names=[str(d) for d in range(10)],
        source=[str(p) for p in files],
        cache_path=None if cache_path is None else str(cache_path),
        from_cache=hit is not None,
    )
    data.DESCR = _describe(data, folder, vouched)
    return data


def _scale(pixels: np.ndarray) -> np.ndarray:
    out = pixels.astype(np.float32)
    out /= np.float32(255.0)
    return out


def _describe(data, folder: Path, vouched: list) -> str:
    n_train, n_test = len(data.y_train), len(data.y_test)
    lines = [
        "MNIST handwritten digits (LeCun, Bottou, Bengio & Haffner, 1998), canonical split.",
        f"train: {n_train} images, test: {n_test} images (canonical: 60000 / 10000).",
        (
            "X_*: float32 pixel/255 in [0, 1], shape (n, 784) = 28x28 flattened row by row; "
            "y_*: int64 digits 0-9."
        ),
        f"Canonical source: {MNIST_HOMEPAGE}",
        "Read from: " + ", ".join(data.source),
    ]
    if (n_train, n_test) != (60000, 10000):
        lines.append("CAVEAT: the sizes differ from the canonical MNIST release.")
    lines.append(
        "Checksums verified against: " + ", ".join(vouched)
        if vouched else "Checksums: not verified (no SHA256SUMS file names these files)."
    )
    if (folder / "PROVENANCE.txt").is_file():
        lines.append(f"Provenance notes: {folder / 'PROVENANCE.txt'}")
    return "\n".join(lines)
