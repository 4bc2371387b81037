"""CIFAR-10 from the canonical pickled batches (folder or ``.tar.gz``) or image folders."""

from __future__ import annotations

import io
import pickle
import re
import tarfile
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np
from sklearn.utils import Bunch

from skkfac.datasets import _download
from skkfac.datasets._base import DatasetCorruptError, DatasetNotFoundError, get_data_home
from skkfac.datasets._cache import cache_paths, load_cache, save_cache, source_record
from skkfac.datasets._checksums import SUMS, Verifier, sha256_bytes, sha256_file

CIFAR10_DIR = "cifar10"
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_HOMEPAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")
LOSSY_SUFFIXES = (".jpg", ".jpeg")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
_CACHE_VERSION = 1


# --------------------------------------------------------------------- pickled batches
class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds plain containers and numpy arrays.

    The canonical batches hold a dict of bytes, lists and one uint8 ndarray; refusing
    every other global means a tampered batch cannot run code when loaded.
    """

    _ALLOWED: ClassVar[frozenset] = frozenset({
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
        ("copyreg", "_reconstructor"),
    })

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} from a CIFAR-10 batch"
            )
        if module.startswith("numpy.core."):  # pickles made with numpy < 2
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def _parse_batch(data: bytes, name: str):
    """Decode one pickled batch into ``(uint8 (n, 3072), uint8 (n,))``."""
    try:
        batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # any unpickling failure means a bad file
        raise DatasetCorruptError(
            f"{name}: not a readable CIFAR-10 pickled batch ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(batch, dict):
        raise DatasetCorruptError(f"{name}: expected a pickled dict, got {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DatasetCorruptError(
            f"{name}: missing key(s) {sorted({'data', 'labels'} - set(batch))} "
            f"(found {sorted(map(str, batch))})"
        )
    x = np.asarray(batch["data"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise DatasetCorruptError(
            f"{name}: b'data' must be uint8 of shape (n, 3072), got {x.dtype} {x.shape}"
        )
    y = np.asarray(batch["labels"])
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise DatasetCorruptError(
            f"{name}: b'labels' must hold {len(x)} integers, got {y.dtype} {y.shape}"
        )
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DatasetCorruptError(f"{name}: labels outside 0-9")
    return x, y.astype(np.uint8)


def _stack(parts):
    xs, ys = zip(*parts)
    return np.concatenate(xs), np.concatenate(ys)


def _read_batches_dir(folder: Path, verifier: Verifier):
    """Decode the six batch files; also return their SHA-256 digests (in file order)."""
    parts, digests = {}, []
    for name in [*TRAIN_BATCHES, TEST_BATCH]:
        path = folder / name
        data = path.read_bytes()
        digests.append(sha256_bytes(data))
        verifier.check(path, digests[-1])
        parts[name] = _parse_batch(data, str(path))
    x_tr, y_tr = _stack([parts[n] for n in TRAIN_BATCHES])
    x_te, y_te = parts[TEST_BATCH]
    return (x_tr, y_tr, x_te, y_te), digests


_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def _read_batches_tar(archive: Path):
    wanted = {*TRAIN_BATCHES, TEST_BATCH}
    parts = {}
    try:
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted and base not in parts:
                    data = tf.extractfile(member).read()
                    parts[base] = _parse_batch(data, f"{archive}!{member.name}")
    except DatasetCorruptError:
        raise
    except _TAR_ERRORS as exc:
        raise DatasetCorruptError(
            f"{archive}: corrupt or truncated archive ({type(exc).__name__}: {exc})"
        ) from exc
    missing = sorted(wanted - set(parts))
    if missing:
        raise DatasetCorruptError(
            f"{archive}: archive lacks the batch(es) {missing} "
            f"(expected {BATCHES_DIR}/data_batch_1..5 and {BATCHES_DIR}/test_batch)"
        )
    x_tr, y_tr = _stack([parts[n] for n in TRAIN_BATCHES])
    x_te, y_te = parts[TEST_BATCH]
    return x_tr, y_tr, x_te, y_te


# ----------------------------------------------------------------------- image folders
def _natural_key(name: str):
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


def _classify(parts: list[str], where: str):
    """Return ``(split, label)`` for a path ``.../<split>/<class>/<file>`` or ``None``."""
    if len(parts) < 3 or parts[-3] not in ("train", "test"):
        return None
    name = parts[-1]
    if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
        return None
    if parts[-2] not in CIFAR10_CLASSES:
        raise DatasetCorruptError(
            f"{where}: unknown class folder {parts[-2]!r} under {parts[-3]}/; expected the "
            f"CIFAR-10 classes {' '.join(CIFAR10_CLASSES)}"
        )
    return parts[-3], CIFAR10_CLASSES.index(parts[-2])


def _decode_image(data: bytes, where: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.size != (32, 32):
                raise DatasetCorruptError(f"{where}: image is {im.size[0]}x{im.size[1]}, not 32x32")
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            pixels = np.asarray(rgb, dtype=np.uint8)
    except DatasetCorruptError:
        raise
    except Exception as exc:  # PIL raises many types for bad images
        raise DatasetCorruptError(
            f"{where}: cannot decode image ({type(exc).__name__}: {exc})"
        ) from exc
    # (32, 32, 3) HWC -> (3, 32, 32) CHW -> 3072, i.e. channel by channel.
    return pixels.transpose(2, 0, 1).reshape(-1)


def _assemble(entries, where: str):
    """``entries``: list of (split, label, file name, bytes getter, label for errors)."""
    seen = set()
    for split, label, name, _, loc in entries:
        if (split, label, name) in seen:
            raise DatasetCorruptError(
                f"{where}: duplicate image {split}/{CIFAR10_CLASSES[label]}/{name} ({loc})"
            )
        seen.add((split, label, name))
    out = {}
    lossy = set()
    for split in ("train", "test"):
        chosen = sorted((e for e in entries if e[0] == split),
                        key=lambda e: (e[1], _natural_key(e[2])))
        if not chosen:
            raise DatasetNotFoundError(
                f"no images found under {where} for the {split!r} split; expected "
                f"{split}/<class>/*.png|jpg with classes {' '.join(CIFAR10_CLASSES)}"
            )
        x = np.empty((len(chosen), 3072), dtype=np.uint8)
        y = np.empty(len(chosen), dtype=np.uint8)
        for i, (_, label, name, get, loc) in enumerate(chosen):
            x[i] = _decode_image(get(), loc)
            y[i] = label
            if name.lower().endswith(LOSSY_SUFFIXES):
                lossy.add(Path(name).suffix.lower())
        out[split] = (x, y)
    return out["train"][0], out["train"][1], out["test"][0], out["test"][1], sorted(lossy)


def _image_folder_entries(folder: Path):
    """Images at exactly ``<folder>/<split>/<class>/<file>``."""
    entries = []
    for split in ("train", "test"):
        base = folder / split
        if not base.is_dir():
            continue
        for class_dir in sorted(base.iterdir()):
            if not class_dir.is_dir() or class_dir.name.startswith("."):
                continue
            for path in class_dir.iterdir():
                if path.is_file():
                    hit = _classify([split, class_dir.name, path.name], str(path))
                    if hit is not None:
                        entries.append((*hit, path.name, path.read_bytes, str(path)))
    return entries


def _read_image_folder(folder: Path, verifier: Verifier):
    def checked(get, path):
        def read():
            data = get()
            verifier.check(Path(path), sha256_bytes(data))
            return data
        return read

    entries = [(s, lab, n, checked(g, loc), loc)
               for s, lab, n, g, loc in _image_folder_entries(folder)]
    return _assemble(entries, str(folder))


def _read_image_tar(archive: Path):
    entries = []
    try:
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                loc = f"{archive}!{member.name}"
                hit = _classify(member.name.strip("/").split("/"), loc)
                if hit is None:
                    continue
                data = tf.extractfile(member).read()
                name = member.name.rsplit("/", 1)[-1]
                entries.append((*hit, name, (lambda d=data: d), loc))
    except DatasetCorruptError:
        raise
    except _TAR_ERRORS as exc:
        raise DatasetCorruptError(
            f"{archive}: corrupt or truncated archive ({type(exc).__name__}: {exc})"
        ) from exc
    return _assemble(entries, str(archive))


# ---------------------------------------------------------------------- layout choice
def _find_layout(folder: Path):
    """Return ``(layout, source path)`` or ``None``; see :func:`load_cifar10`."""
    batches = folder / BATCHES_DIR
    if batches.is_dir():
        missing = [n for n in [*TRAIN_BATCHES, TEST_BATCH] if not (batches / n).is_file()]
        if missing:
            raise DatasetNotFoundError(
                f"{batches} is incomplete: missing {', '.join(str(batches / n) for n in missing)}"
                f". Put all of data_batch_1..5 and test_batch there (from {CIFAR10_URL})."
            )
        return "batches", batches
    if (folder / CIFAR10_ARCHIVE).is_file():
        return "batches-tar", folder / CIFAR10_ARCHIVE
    if (folder / "train").is_dir() or (folder / "test").is_dir():
        return "image-folder", folder
    archives = sorted(
        p for p in folder.glob("*")
        if p.is_file() and p.name.lower().endswith(_ARCHIVE_SUFFIXES) and p.name[0] != "."
    ) if folder.is_dir() else []
    if len(archives) > 1:
        raise DatasetCorruptError(
            f"{folder} holds several image archives ({', '.join(p.name for p in archives)}); "
            f"keep exactly one (or an unpacked train/ + test/ tree)"
        )
    if archives:
        return "image-tar", archives[0]
    return None


def load_cifar10(data_home=None, *, cache=True, download=False):
    """Load CIFAR-10 (50,000/10,000 split) as flattened float32 pixels in [0, 1].

    Looks in ``<data_home>/cifar10/`` for, in this order of preference:

    1. ``cifar-10-batches-py/`` holding the canonical pickled batches ``data_batch_1`` ...
       ``data_batch_5`` and ``test_batch`` (a pickled dict with ``b'data'``, uint8
       ``(n, 3072)``, and ``b'labels'``);
    2. ``cifar-10-python.tar.gz``, the canonical archive of those batches (read in place);
    3. an image-folder layout ``train/<class>/*`` and ``test/<class>/*`` (PNG, JPEG, ...),
       class folders named ``airplane automobile bird cat deer dog frog horse ship truck``
       (label 0-9 in that canonical order; not every class needs to be present);
    4. a single ``.tar.gz``/``.tgz``/``.tar`` archive of that layout (e.g.
       ``cifar10-jpeg-q75.tar.gz``; members are decoded straight from the archive, an
       optional leading folder inside it is allowed).

    Unpickling is restricted to numpy arrays and plain containers. Files (archives,
    batches, or single images) named in a ``SHA256SUMS`` list in the folder are verified.

    **Pixel order.** Each image is flattened *channel by channel*: the array of shape
    ``(n, 3, 32, 32)`` (channel, row, column) is reshaped to ``(n, 3072)``, so columns
    0-1023 are the red plane row by row, 1024-2047 green, 2048-3071 blue. This is the
    order of the canonical batches. The reference study stacked the image columns
    instead; a fully connected network is indifferent to any fixed permutation of its
    inputs, so results do not depend on the choice (convert with
    ``X.reshape(-1, 3, 32, 32)`` if you need images).

    **Sample order.** Batches keep the canonical order. Image folders are read class by
    class (label 0 first), files in natural name order, so labels come in sorted blocks:
    shuffle before any order-sensitive use (mini-batching without shuffling, taking the
    first rows as a validation set).

    Parameters
    ----------
    data_home : str or os.PathLike, default=None
        Data folder; see :func:`get_data_home`.
    cache : bool, default=True
        Reuse / write an ``.npz`` cache of the decoded uint8 arrays (decoding 60,000 JPEGs
        takes several seconds), next to the data if that folder is writable, else under
        :func:`get_cache_home`; rebuilt when a source (or a checksum list) changes.
    download : bool, default=False
        If no layout is present, fetch the canonical ``cifar-10-python.tar.gz`` (163 MiB)
        from ``CIFAR10_URL`` into ``<data_home>/cifar10/`` with :mod:`pooch` (verified
        against its canonical SHA-256, written atomically) and read it.

    Returns
    -------
    data : sklearn.utils.Bunch
        X_train : ndarray of shape (50000, 3072), float32
            Pixels / 255 in [0, 1], channel by channel (see above).
        y_train : ndarray of shape (50000,), int64
            Class labels 0-9.
        X_test : ndarray of shape (10000, 3072), float32
            Test pixels, laid out like ``X_train``.
        y_test : ndarray of shape (10000,), int64
            Test labels 0-9.
        feature_names : list of str
            ``"<red|green|blue>_<row>_<col>"`` in column order.
        target_names : list of str
            The ten class names in label order.
        DESCR : str
            Description with provenance, layout read, checksum status and caveats (e.g.
            lossy JPEG re-encoding).
        source : list of str
            The files or folders read.
        layout : str
            ``"batches"``, ``"batches-tar"``, ``"image-folder"`` or ``"image-tar"``.
        cache_path : str or None
            The cache file used or written, if any.
        from_cache : bool
            Whether the arrays came from the cache.

    Raises
    ------
    DatasetNotFoundError
        If no layout is found (the message lists what to put where).
    DatasetCorruptError
        If a file is truncated/malformed, an image is not 32x32, or a class folder is
        unknown; :class:`ChecksumMismatchError` (a subclass) if a digest differs.

    Examples
    --------
    >>> from skkfac.datasets import load_cifar10
    >>> cifar = load_cifar10("/work/shared/data")  # doctest: +SKIP
    >>> cifar.X_train.shape, cifar.X_train.dtype, cifar.target_names[cifar.y_test[0]]
    ... # doctest: +SKIP
    ((50000, 3072), dtype('float32'), 'airplane')
    >>> images = cifar.X_train.reshape(-1, 3, 32, 32)  # doctest: +SKIP
    """
    home = get_data_home(data_home)
    folder = home / CIFAR10_DIR
    found = _find_layout(folder)
    if found is None and download:
        _download.fetch(home, f"{CIFAR10_DIR}/{CIFAR10_ARCHIVE}", [CIFAR10_URL])
        found = _find_layout(folder)
    if found is None:
        raise DatasetNotFoundError(
            f"CIFAR-10 not found in {folder}/. Put one of: the canonical pickled batches "
            f"{folder / BATCHES_DIR}/data_batch_1..5 + test_batch; the archive "
            f"{folder / CIFAR10_ARCHIVE} (download {CIFAR10_URL}, see {CIFAR10_HOMEPAGE}); "
            f"image folders {folder}/train/<class>/*.png|jpg and {folder}/test/<class>/...; "
            f"or one .tar.gz of those image folders (e.g. {folder}/cifar10-jpeg-q75.tar.gz). "
            f"Or call load_cifar10(..., download=True) to fetch the canonical archive. Data "
            f"home: {home} (data_home argument > SKKFAC_DATA > ~/skkfac_data)."
        )
    layout, src = found
    verifier = Verifier(folder)
    if layout == "batches":
        files = [src / n for n in [*TRAIN_BATCHES, TEST_BATCH]]
    elif layout == "image-folder":
        files = [p for p in (folder / "train", folder / "test") if p.is_dir()]
    else:
        files = [src]
    if layout == "image-folder":
        # Lists inside train/ and test/ are part of those folders' fingerprints already.
        sums = [folder / SUMS] if (folder / SUMS).is_file() else []
    else:
        sums = verifier.sums_files(files, SUMS)
    key = {"loader": "cifar10", "version": _CACHE_VERSION, "layout": layout}
    candidates = cache_paths(folder, f"cifar10_{layout.replace('-', '_')}")
    hit = load_cache(candidates, key, files + sums) if cache else None
    if hit is not None:
        arrays, meta, cache_path = hit
        vouched, lossy = meta["extra"]["verified_with"], meta["extra"]["lossy"]
    else:
        lossy, digests = [], [None] * len(files)
        if layout == "batches":
            (x_tr, y_tr, x_te, y_te), digests = _read_batches_dir(src, verifier)
        elif layout in ("batches-tar", "image-tar"):
            digests = [sha256_file(src)]
            verifier.check(src, digests[0])
            if layout == "batches-tar":
                x_tr, y_tr, x_te, y_te = _read_batches_tar(src)
            else:
                x_tr, y_tr, x_te, y_te, lossy = _read_image_tar(src)
        else:
            x_tr, y_tr, x_te, y_te, lossy = _read_image_folder(folder, verifier)
        arrays = {"X_train": x_tr, "y_train": y_tr, "X_test": x_te, "y_test": y_te}
        vouched = sorted(str(p) for p in verifier.used)
        cache_path = None
        if cache:
            records = [source_record(p, d) for p, d in zip(files, digests)]
            records += [source_record(p) for p in sums]
            cache_path = save_cache(candidates, arrays, key, records,
                                    {"verified_with": vouched, "lossy": lossy})
    data = Bunch(
        X_train=_scale(arrays["X_train"]),
        y_train=arrays["y_train"].astype(np.int64),
        X_test=_scale(arrays["X_test"]),
        y_test=arrays["y_test"].astype(np.int64),
        feature_names=[f"{c}_{r}_{k}" for c in ("red", "green", "blue")
                       for r in range(32) for k in range(32)],
        target_names=list(CIFAR10_CLASSES),
        source=[str(p) for p in files],
        layout=layout,
        cache_path=None if cache_path is None else str(cache_path),
        from_cache=hit is not None,
    )
    data.DESCR = _describe(data, folder, vouched, lossy)
    return data


def _scale(pixels: np.ndarray) -> np.ndarray:
    out = pixels.astype(np.float32)
    out /= np.float32(255.0)
    return out


def _describe(data, folder: Path, vouched: list, lossy: list) -> str:
    n_train, n_test = len(data.y_train), len(data.y_test)
    lines = [
        (
            "CIFAR-10 (Krizhevsky, 2009): 32x32 RGB images in 10 classes "
            f"({', '.join(CIFAR10_CLASSES)})."
        ),
        f"train: {n_train} images, test: {n_test} images (canonical: 50000 / 10000).",
        (
            "X_*: float32 pixel/255 in [0, 1], shape (n, 3072), flattened channel by "
            "channel (reshape to (n, 3, 32, 32) = channel, row, column); y_*: int64 labels 0-9."
        ),
        f"Layout read: {data.layout}; from: " + ", ".join(data.source),
        f"Canonical source: {CIFAR10_URL} ({CIFAR10_HOMEPAGE})",
    ]
    if data.layout.startswith("image"):
        lines.append("Sample order: class by class (labels in sorted blocks); shuffle before "
                     "order-sensitive use.")
    if lossy:
        lines.append(
            f"CAVEAT: images were stored as lossy {'/'.join(lossy)} files, not the canonical "
            "pixels; report results as e.g. 'CIFAR-10 (JPEG)', not directly comparable to "
            "published CIFAR-10 numbers."
        )
    if (n_train, n_test) != (50000, 10000):
        lines.append("CAVEAT: the sizes differ from the canonical CIFAR-10 release.")
    lines.append(
        "Checksums verified against: " + ", ".join(vouched)
        if vouched else "Checksums: not verified (no SHA256SUMS file names these files)."
    )
    if (folder / "PROVENANCE.txt").is_file():
        lines.append(f"Provenance notes: {folder / 'PROVENANCE.txt'}")
    return "\n".join(lines)
