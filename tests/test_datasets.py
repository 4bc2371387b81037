"""Tests of skkfac.datasets on tiny fixture files written into tmp_path.

Nothing here needs the network or the shared benchmark data, except the one optional
test at the end, which is skipped when no real data folder exists.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import pickle
import re
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skkfac import datasets
from skkfac.datasets import (
    ChecksumMismatchError,
    DatasetCorruptError,
    DatasetNotFoundError,
    DownloadError,
    _cifar10,
    _ct_slices,
    _download,
    _mnist,
    get_cache_home,
    get_data_home,
    load_cifar10,
    load_ct_slices,
    load_mnist,
    load_uci_regression,
)
from skkfac.datasets._base import (
    STALE_PART_SECONDS,
    atomic_output,
    remove_stale_parts,
    split_indices,
)

REAL_DATA = Path(os.environ.get("SKKFAC_DATA") or "/work/shared/data")
CLASSES = _cifar10.CIFAR10_CLASSES


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No test sees the caller's SKKFAC_DATA or writes caches outside tmp_path."""
    monkeypatch.delenv("SKKFAC_DATA", raising=False)
    monkeypatch.setenv("SKKFAC_CACHE", str(tmp_path / "fallback-cache"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_sums(folder: Path, entries: dict, name: str = "SHA256SUMS") -> Path:
    path = folder / name
    path.write_text("".join(f"{digest}  {fname}\n" for fname, digest in entries.items()))
    return path


def make_read_only(path: Path) -> None:
    path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP
               | stat.S_IROTH | stat.S_IXOTH)


def make_writable(path: Path) -> None:
    path.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


# ------------------------------------------------------------------------------ MNIST
def idx_bytes(arr: np.ndarray) -> bytes:
    header = b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def make_mnist(home: Path, *, gz=True, n_train=5, n_test=3, seed=0, sums=False):
    """Write the four IDX files; return the arrays and the raw IDX bytes by base name."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder = home / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    raw, written = {}, {}
    for base, arr in arrays.items():
        raw[base] = idx_bytes(arr)
        name = base + (".gz" if gz else "")
        written[name] = gzip.compress(raw[base], mtime=0) if gz else raw[base]
        (folder / name).write_bytes(written[name])
    if sums:
        write_sums(folder, {n: sha(b) for n, b in written.items()})
        write_sums(folder, {n: sha(b) for n, b in raw.items()}, "SHA256SUMS.uncompressed")
    return arrays, raw


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_shapes_dtypes_scaling(tmp_path, gz):
    arrays, _ = make_mnist(tmp_path, gz=gz)
    data = load_mnist(tmp_path, cache=False)
    assert data.X_train.shape == (5, 784) and data.X_test.shape == (3, 784)
    assert data.X_train.dtype == np.float32 and data.X_test.dtype == np.float32
    assert data.y_train.dtype == np.int64 and data.y_test.dtype == np.int64
    expected = arrays["train-images-idx3-ubyte"].reshape(5, 784).astype(np.float32) / 255
    np.testing.assert_array_equal(data.X_train, expected)
    assert data.X_train.min() >= 0.0 and data.X_train.max() <= 1.0
    np.testing.assert_array_equal(data.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(data.y_test, arrays["t10k-labels-idx1-ubyte"])
    # row-major flattening, stated by feature_names
    assert data.feature_names[28] == "pixel_1_0"
    assert data.target_names == [str(d) for d in range(10)]
    assert len(data.source) == 4 and all(Path(p).is_file() for p in data.source)
    assert "MNIST" in data.DESCR and "not verified" in data.DESCR
    assert data.cache_path is None and data.from_cache is False


def test_mnist_checksums_verified(tmp_path):
    make_mnist(tmp_path, sums=True)
    data = load_mnist(tmp_path, cache=False)
    assert "SHA256SUMS.uncompressed" in data.DESCR and "verified against" in data.DESCR


def test_mnist_compressed_checksum_mismatch(tmp_path):
    make_mnist(tmp_path, sums=True)
    folder = tmp_path / "mnist"
    bad = "0" * 64
    text = (folder / "SHA256SUMS").read_text().splitlines()
    good = text[0].split()[0]
    text[0] = f"{bad}  {text[0].split()[1]}"
    (folder / "SHA256SUMS").write_text("\n".join(text) + "\n")
    with pytest.raises(ChecksumMismatchError) as info:
        load_mnist(tmp_path, cache=False)
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz" in msg and bad in msg and good in msg


def test_mnist_uncompressed_checksum_checked_even_if_gz_matches(tmp_path):
    """Re-made .gz wrappers: the compressed list may match, the content must too."""
    _, raw = make_mnist(tmp_path, sums=True)
    folder = tmp_path / "mnist"
    wrong = sha(b"something else")
    write_sums(folder, {**{b: sha(r) for b, r in raw.items()}, "t10k-labels-idx1-ubyte": wrong},
               "SHA256SUMS.uncompressed")
    with pytest.raises(ChecksumMismatchError, match="decompressed content") as info:
        load_mnist(tmp_path, cache=False)
    assert wrong in str(info.value) and sha(raw["t10k-labels-idx1-ubyte"]) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_malformed_sums_file(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "mnist" / "SHA256SUMS").write_text("not a checksum line\n")
    with pytest.raises(DatasetCorruptError, match=r"SHA256SUMS, line 1"):
        load_mnist(tmp_path, cache=False)


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda b: b[:-7], "truncated IDX file"),
        (lambda b: b + b"\x00", "trailing bytes"),
        (lambda b: b"\x01\x02" + b[2:], "bad IDX magic"),
        (lambda b: b[:10], "truncated IDX header"),
    ],
)
def test_mnist_corrupt_raw_idx(tmp_path, mutate, pattern):
    _, raw = make_mnist(tmp_path, gz=False)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte"
    path.write_bytes(mutate(raw["train-images-idx3-ubyte"]))
    with pytest.raises(DatasetCorruptError, match=pattern) as info:
        load_mnist(tmp_path, cache=False)
    assert str(path) in str(info.value)


def test_mnist_truncated_gzip(tmp_path):
    make_mnist(tmp_path)
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DatasetCorruptError, match="gzip") as info:
        load_mnist(tmp_path, cache=False)
    assert str(path) in str(info.value)


def test_mnist_wrong_image_size_and_count_mismatch(tmp_path):
    make_mnist(tmp_path, gz=False)
    folder = tmp_path / "mnist"
    (folder / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((3, 27, 28), np.uint8)))
    with pytest.raises(DatasetCorruptError, match=r"\(n, 28, 28\)"):
        load_mnist(tmp_path, cache=False)
    (folder / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8)))
    with pytest.raises(DatasetCorruptError, match="4 images but"):
        load_mnist(tmp_path, cache=False)


def test_mnist_missing_file_message(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "mnist" / "train-labels-idx1-ubyte") in msg
    assert "download=True" in msg and "yann.lecun.com" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_parse_idx_other_dtypes():
    arr = np.arange(6, dtype=">i4").reshape(2, 3)
    data = b"\x00\x00\x0c\x02" + struct.pack(">2I", 2, 3) + arr.tobytes()
    out = _mnist.parse_idx(data)
    np.testing.assert_array_equal(out, arr)
    assert out.dtype == np.dtype("int32")


# -------------------------------------------------------------------------- caching
def test_mnist_cache_reused_and_rebuilt(tmp_path):
    arrays, _ = make_mnist(tmp_path)
    first = load_mnist(tmp_path)
    assert first.from_cache is False
    assert Path(first.cache_path).parent == tmp_path / "mnist"  # writable data home
    second = load_mnist(tmp_path)
    assert second.from_cache is True and second.cache_path == first.cache_path
    for key in ("X_train", "y_train", "X_test", "y_test"):
        np.testing.assert_array_equal(first[key], second[key])
        assert first[key].dtype == second[key].dtype
    assert second.DESCR == first.DESCR

    # A touch alone (same bytes) keeps the cache valid.
    src = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert load_mnist(tmp_path).from_cache is True

    # New content of the same size and a new mtime: detected by the SHA-256.
    labels = (arrays["train-labels-idx1-ubyte"] + 1) % 10
    raw = idx_bytes(labels)
    src.unlink()
    (tmp_path / "mnist" / "train-labels-idx1-ubyte").write_bytes(raw)  # raw now preferred
    third = load_mnist(tmp_path)
    assert third.from_cache is False
    np.testing.assert_array_equal(third.y_train, labels)
    (tmp_path / "mnist" / "train-labels-idx1-ubyte").write_bytes(idx_bytes((labels + 1) % 10))
    fourth = load_mnist(tmp_path)
    assert fourth.from_cache is False
    np.testing.assert_array_equal(fourth.y_train, (labels + 1) % 10)
    assert load_mnist(tmp_path).from_cache is True


def test_cache_invalidated_by_new_checksum_list(tmp_path):
    make_mnist(tmp_path)
    assert load_mnist(tmp_path).from_cache is False
    write_sums(tmp_path / "mnist", {"train-images-idx3-ubyte.gz": "f" * 64})
    with pytest.raises(ChecksumMismatchError):
        load_mnist(tmp_path)


def test_corrupt_cache_is_rebuilt(tmp_path):
    make_mnist(tmp_path)
    path = Path(load_mnist(tmp_path).cache_path)
    path.write_bytes(b"garbage")
    data = load_mnist(tmp_path)
    assert data.from_cache is False and data.X_train.shape == (5, 784)
    assert load_mnist(tmp_path).from_cache is True


def rewrite_npz(path: Path, change) -> None:
    """Rewrite a cache with ``change(arrays)`` applied, keeping its metadata as it was."""
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    change(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("change", [
    lambda a: a.pop("y_test"),                                    # was KeyError: 'y_test'
    lambda a: a.update(y_test=a["y_test"][:-1]),                  # shape differs
    lambda a: a.update(X_train=a["X_train"].astype(np.float64)),  # dtype differs
], ids=["missing", "shape", "dtype"])
def test_cache_with_valid_metadata_but_bad_arrays_is_rebuilt(tmp_path, change):
    arrays, _ = make_mnist(tmp_path)
    path = Path(load_mnist(tmp_path).cache_path)
    rewrite_npz(path, change)
    data = load_mnist(tmp_path)
    assert data.from_cache is False and data.cache_path == str(path)
    np.testing.assert_array_equal(data.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert data.X_train.shape == (5, 784) and data.X_train.dtype == np.float32
    assert load_mnist(tmp_path).from_cache is True  # the rewritten cache is whole again


def test_cache_with_corrupt_array_bytes_is_rebuilt(tmp_path):
    make_mnist(tmp_path)
    path = Path(load_mnist(tmp_path).cache_path)
    blob = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:  # np.savez stores members uncompressed
        info = zf.getinfo("X_train.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    blob[start + info.file_size - 5] ^= 0xFF  # one pixel byte: the member's CRC fails
    path.write_bytes(bytes(blob))
    data = load_mnist(tmp_path)
    assert data.from_cache is False
    assert load_mnist(tmp_path).from_cache is True


_KILLED_WRITER = """
import os, signal, sys
import numpy as np
from skkfac.datasets import load_mnist

def savez_then_die(file, **arrays):
    file.write(b"half a cache" * 1000)
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)

np.savez = savez_then_die
load_mnist(sys.argv[1])
"""


def test_partial_cache_of_a_killed_writer_is_removed(tmp_path):
    make_mnist(tmp_path)
    folder = tmp_path / "mnist"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], env=env,
                          capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    parts = list(folder.glob(".mnist_cache.npz.*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size > 0  # what the kill left behind
    assert not (folder / "mnist_cache.npz").exists()

    data = load_mnist(tmp_path)  # the next run
    assert data.from_cache is False and Path(data.cache_path) == folder / "mnist_cache.npz"
    assert not parts[0].exists()
    assert not list(folder.glob("*.part"))
    assert load_mnist(tmp_path).from_cache is True


def test_partial_cache_of_a_live_writer_is_kept_until_it_is_old(tmp_path):
    make_mnist(tmp_path)
    target = tmp_path / "mnist" / "mnist_cache.npz"
    writer = atomic_output(target)  # this process is alive: its file is in progress
    writer.__enter__().write(b"in progress")
    assert load_mnist(tmp_path).from_cache is False
    assert writer.tmp_path.exists()
    writer.__exit__(RuntimeError, RuntimeError("gave up"), None)  # a failing writer
    assert not writer.tmp_path.exists()  # cleans up after itself
    elsewhere = target.parent / f".{target.name}.0123abcd-1.xyz.part"  # another host
    elsewhere.write_bytes(b"x")
    assert remove_stale_parts(target) == []
    hour_ago = time.time() - STALE_PART_SECONDS - 60
    os.utime(elsewhere, (hour_ago, hour_ago))
    assert remove_stale_parts(target) == [elsewhere] and not elsewhere.exists()


def test_cache_disabled_writes_nothing(tmp_path):
    make_mnist(tmp_path)
    load_mnist(tmp_path, cache=False)
    assert not list(tmp_path.rglob("*.npz"))


def test_read_only_data_home_falls_back(tmp_path, monkeypatch):
    make_mnist(tmp_path / "data")
    folder = tmp_path / "data" / "mnist"
    before = sorted(p.name for p in folder.iterdir())
    monkeypatch.setenv("SKKFAC_CACHE", str(tmp_path / "my-cache"))
    make_read_only(folder)
    try:
        first = load_mnist(tmp_path / "data")
        second = load_mnist(tmp_path / "data")
    finally:
        make_writable(folder)
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written there
    assert Path(first.cache_path).is_relative_to(tmp_path / "my-cache")
    assert second.from_cache is True and second.cache_path == first.cache_path


def test_no_writable_cache_only_warns(tmp_path, monkeypatch):
    make_mnist(tmp_path / "data")
    folder = tmp_path / "data" / "mnist"
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("SKKFAC_CACHE", str(blocker / "cache"))
    make_read_only(folder)
    try:
        with pytest.warns(RuntimeWarning, match="could not write a dataset cache"):
            data = load_mnist(tmp_path / "data")
    finally:
        make_writable(folder)
    assert data.cache_path is None and data.X_test.shape == (3, 784)


# ------------------------------------------------------------------- homes and env var
def test_data_home_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert get_data_home() == tmp_path / "home" / "skkfac_data"
    monkeypatch.setenv("SKKFAC_DATA", str(tmp_path / "env"))
    assert get_data_home() == tmp_path / "env"
    assert get_data_home(tmp_path / "arg") == tmp_path / "arg"
    assert get_data_home(str(tmp_path / "arg")) == tmp_path / "arg"
    assert get_data_home("~/x") == tmp_path / "home" / "x"
    assert not (tmp_path / "env").exists()  # never created
    monkeypatch.setenv("SKKFAC_CACHE", str(tmp_path / "c"))
    assert get_cache_home() == tmp_path / "c"
    monkeypatch.delenv("SKKFAC_CACHE")
    assert get_cache_home() == tmp_path / "home" / ".cache" / "skkfac"


def test_loader_uses_env_var_and_argument_wins(tmp_path, monkeypatch):
    make_mnist(tmp_path / "env", n_train=4)
    make_mnist(tmp_path / "arg", n_train=6)
    monkeypatch.setenv("SKKFAC_DATA", str(tmp_path / "env"))
    assert load_mnist(cache=False).X_train.shape == (4, 784)
    assert load_mnist(tmp_path / "arg", cache=False).X_train.shape == (6, 784)


# ----------------------------------------------------------------------------- CIFAR
def batch_bytes(x: np.ndarray, y: np.ndarray, label: bytes) -> bytes:
    batch = {
        b"batch_label": label,
        b"labels": [int(v) for v in y],
        b"data": x,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(y))],
    }
    return pickle.dumps(batch, protocol=2)


def make_cifar_batches(folder: Path, seed=0):
    """Canonical pickled batches: 2 images per training batch, 3 test images."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys, blobs = [], [], {}
    for i in range(1, 6):
        x = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, 2)
        xs.append(x)
        ys.append(y)
        blobs[f"data_batch_{i}"] = batch_bytes(x, y, f"training batch {i} of 5".encode())
    x_te = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    y_te = rng.integers(0, 10, 3)
    blobs["test_batch"] = batch_bytes(x_te, y_te, b"testing batch 1 of 1")
    for name, blob in blobs.items():
        (folder / name).write_bytes(blob)
    return np.concatenate(xs), np.concatenate(ys), x_te, y_te, blobs


def tar_gz(path: Path, members: dict) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return path


def check_pixels(X: np.ndarray, x_uint8: np.ndarray):
    np.testing.assert_array_equal(X, x_uint8.astype(np.float32) / 255)


def test_cifar_pickled_batches(tmp_path):
    x_tr, y_tr, x_te, y_te, _ = make_cifar_batches(tmp_path / "cifar10" / "cifar-10-batches-py")
    data = load_cifar10(tmp_path, cache=False)
    assert data.layout == "batches"
    assert data.X_train.shape == (10, 3072) and data.X_train.dtype == np.float32
    assert data.y_train.dtype == np.int64 and data.X_test.shape == (3, 3072)
    check_pixels(data.X_train, x_tr)  # canonical order kept, channel-major as stored
    check_pixels(data.X_test, x_te)
    np.testing.assert_array_equal(data.y_train, y_tr)
    np.testing.assert_array_equal(data.y_test, y_te)
    assert data.target_names == CLASSES
    assert data.feature_names[0] == "red_0_0" and data.feature_names[1024] == "green_0_0"
    assert len(data.source) == 6


def test_cifar_canonical_tar_gz_and_checksum(tmp_path):
    src = tmp_path / "src"
    x_tr, y_tr, x_te, y_te, blobs = make_cifar_batches(src)
    folder = tmp_path / "cifar10"
    folder.mkdir()
    archive = tar_gz(folder / "cifar-10-python.tar.gz",
                     {f"cifar-10-batches-py/{n}": b for n, b in blobs.items()})
    write_sums(folder, {archive.name: sha(archive.read_bytes())})
    data = load_cifar10(tmp_path, cache=False)
    assert data.layout == "batches-tar" and data.source == [str(archive)]
    check_pixels(data.X_train, x_tr)
    check_pixels(data.X_test, x_te)
    np.testing.assert_array_equal(data.y_train, y_tr)
    np.testing.assert_array_equal(data.y_test, y_te)
    assert "verified against" in data.DESCR
    write_sums(folder, {archive.name: "ab" * 32})
    with pytest.raises(ChecksumMismatchError) as info:
        load_cifar10(tmp_path, cache=False)
    assert "ab" * 32 in str(info.value) and sha(archive.read_bytes()) in str(info.value)


def test_cifar_batch_checksum_in_parent_folder(tmp_path):
    folder = tmp_path / "cifar10"
    *_, blobs = make_cifar_batches(folder / "cifar-10-batches-py")
    sums = {f"cifar-10-batches-py/{n}": sha(b) for n, b in blobs.items()}
    sums["cifar-10-batches-py/test_batch"] = "1" * 64
    write_sums(folder, sums)
    with pytest.raises(ChecksumMismatchError, match="test_batch"):
        load_cifar10(tmp_path, cache=False)


def test_cifar_corrupt_batches(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    *_, blobs = make_cifar_batches(folder)
    (folder / "data_batch_3").write_bytes(blobs["data_batch_3"][:-50])
    with pytest.raises(DatasetCorruptError, match="data_batch_3"):
        load_cifar10(tmp_path, cache=False)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8),
                                                        b"labels": [0, 1]}, protocol=2))
    with pytest.raises(DatasetCorruptError, match=r"\(n, 3072\)"):
        load_cifar10(tmp_path, cache=False)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_3"):
        load_cifar10(tmp_path, cache=False)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_cifar_pickle_refuses_arbitrary_globals(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    make_cifar_batches(folder)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(DatasetCorruptError, match="refusing to load global"):
        load_cifar10(tmp_path, cache=False)


def test_cifar_truncated_tar(tmp_path):
    *_, blobs = make_cifar_batches(tmp_path / "src")
    folder = tmp_path / "cifar10"
    folder.mkdir()
    archive = tar_gz(folder / "cifar-10-python.tar.gz",
                     {f"cifar-10-batches-py/{n}": b for n, b in blobs.items()})
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DatasetCorruptError) as info:
        load_cifar10(tmp_path, cache=False)
    assert str(archive) in str(info.value)


def image_set(seed=0):
    """Images keyed by (split, class, file name), with distinct random pixels (HWC)."""
    rng = np.random.default_rng(seed)
    spec = {"train": {"cat": [0, 2, 10], "airplane": [1, 0], "truck": [5]},
            "test": {"truck": [1, 0], "bird": [3]}}
    return {(split, cls, i): rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            for split, classes in spec.items() for cls, idx in classes.items() for i in idx}


def expected_order(images, split):
    """Class by class in canonical label order, files in natural (numeric) order."""
    keys = sorted((k for k in images if k[0] == split),
                  key=lambda k: (CLASSES.index(k[1]), k[2]))
    x = np.stack([images[k].transpose(2, 0, 1).reshape(-1) for k in keys])
    y = np.array([CLASSES.index(k[1]) for k in keys])
    return x, y


def encode(img: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def test_cifar_png_folder_label_and_channel_order(tmp_path):
    images = image_set()
    folder = tmp_path / "cifar10"
    for (split, cls, i), img in images.items():
        (folder / split / cls).mkdir(parents=True, exist_ok=True)
        (folder / split / cls / f"{i}.png").write_bytes(encode(img, "PNG"))
    (folder / "train" / "cat" / "notes.txt").write_text("ignored")
    data = load_cifar10(tmp_path, cache=False)
    assert data.layout == "image-folder"
    x_tr, y_tr = expected_order(images, "train")
    x_te, y_te = expected_order(images, "test")
    check_pixels(data.X_train, x_tr)
    check_pixels(data.X_test, x_te)
    np.testing.assert_array_equal(data.y_train, y_tr)
    np.testing.assert_array_equal(data.y_train, [0, 0, 3, 3, 3, 9])  # canonical indices
    np.testing.assert_array_equal(data.y_test, y_te)
    # channel by channel: columns 0-1023 are the red plane, row by row
    first = images[("train", "airplane", 0)]
    np.testing.assert_array_equal(data.X_train[0, :1024].reshape(32, 32) * 255, first[..., 0])
    np.testing.assert_array_equal(data.X_train[0, 1024:2048].reshape(32, 32) * 255, first[..., 1])
    np.testing.assert_array_equal(
        data.X_train.reshape(-1, 3, 32, 32)[0].transpose(1, 2, 0) * 255, first)
    assert "class by class" in data.DESCR and "lossy" not in data.DESCR


def solid_jpegs():
    """Constant-colour images survive JPEG almost exactly; one per (split, class, i)."""
    colours = {("train", "dog", 0): (200, 30, 90), ("train", "airplane", 7): (10, 240, 120),
               ("train", "airplane", 3): (128, 128, 0), ("test", "ship", 0): (60, 70, 250)}
    return {k: np.full((32, 32, 3), c, np.uint8) for k, c in colours.items()}


def test_cifar_jpeg_folder(tmp_path):
    images = solid_jpegs()
    folder = tmp_path / "cifar10"
    for (split, cls, i), img in images.items():
        (folder / split / cls).mkdir(parents=True, exist_ok=True)
        (folder / split / cls / f"{i:04d}.jpg").write_bytes(encode(img, "JPEG"))
    data = load_cifar10(tmp_path, cache=False)
    x_tr, _ = expected_order(images, "train")
    np.testing.assert_allclose(data.X_train, x_tr / 255, atol=4 / 255)
    np.testing.assert_array_equal(data.y_train, [0, 0, 5])
    assert "lossy" in data.DESCR


def test_cifar_image_tar_png_and_jpeg(tmp_path):
    images = image_set(seed=1)
    solid = solid_jpegs()
    members = {f"cifar10-mixed/{s}/{c}/{i}.png": encode(img, "PNG")
               for (s, c, i), img in images.items()}
    members.update({f"cifar10-mixed/{s}/{c}/{i + 100}.jpg": encode(img, "JPEG")
                    for (s, c, i), img in solid.items()})
    members["cifar10-mixed/README.txt"] = b"not an image"
    folder = tmp_path / "cifar10"
    folder.mkdir()
    archive = tar_gz(folder / "cifar10-jpeg-q75.tar.gz", members)
    write_sums(folder, {archive.name: sha(archive.read_bytes())})
    data = load_cifar10(tmp_path, cache=False)
    assert data.layout == "image-tar" and data.source == [str(archive)]
    assert data.X_train.shape == (len([k for k in {**images, **solid} if k[0] == "train"]), 3072)
    merged = {**images, **{(s, c, i + 100): img for (s, c, i), img in solid.items()}}
    x_tr, y_tr = expected_order(merged, "train")
    np.testing.assert_array_equal(data.y_train, y_tr)
    keys = sorted((k for k in merged if k[0] == "train"),
                  key=lambda k: (CLASSES.index(k[1]), k[2]))
    png = np.array([k[2] < 100 for k in keys])
    check_pixels(data.X_train[png], x_tr[png])  # lossless
    np.testing.assert_allclose(data.X_train[~png], x_tr[~png] / 255, atol=4 / 255)  # JPEG
    assert "verified against" in data.DESCR and "lossy .jpg" in data.DESCR


def test_cifar_image_errors(tmp_path):
    folder = tmp_path / "cifar10"
    (folder / "train" / "cat").mkdir(parents=True)
    (folder / "test" / "cat").mkdir(parents=True)
    img = np.zeros((32, 32, 3), np.uint8)
    (folder / "train" / "cat" / "0.png").write_bytes(encode(img, "PNG"))
    (folder / "test" / "cat" / "0.png").write_bytes(encode(img, "PNG"))
    assert load_cifar10(tmp_path, cache=False).X_train.shape == (1, 3072)

    bad = folder / "train" / "cat" / "1.jpg"
    bad.write_bytes(encode(img, "JPEG")[:40])
    with pytest.raises(DatasetCorruptError, match="cannot decode image") as info:
        load_cifar10(tmp_path, cache=False)
    assert str(bad) in str(info.value)
    bad.write_bytes(encode(np.zeros((28, 28, 3), np.uint8), "PNG"))
    with pytest.raises(DatasetCorruptError, match="not 32x32"):
        load_cifar10(tmp_path, cache=False)
    bad.unlink()
    (folder / "train" / "kitten").mkdir()
    (folder / "train" / "kitten" / "0.png").write_bytes(encode(img, "PNG"))
    with pytest.raises(DatasetCorruptError, match="unknown class folder 'kitten'"):
        load_cifar10(tmp_path, cache=False)


def test_cifar_image_folder_checksums_and_cache(tmp_path):
    images = image_set(seed=2)
    folder = tmp_path / "cifar10"
    sums = {}
    for (split, cls, i), img in images.items():
        (folder / split / cls).mkdir(parents=True, exist_ok=True)
        blob = encode(img, "PNG")
        (folder / split / cls / f"{i}.png").write_bytes(blob)
        sums[f"{split}/{cls}/{i}.png"] = sha(blob)
    write_sums(folder, sums)
    first = load_cifar10(tmp_path)
    assert first.from_cache is False and "verified against" in first.DESCR
    assert load_cifar10(tmp_path).from_cache is True
    # a new image invalidates the cache
    extra = np.full((32, 32, 3), 7, np.uint8)
    (folder / "train" / "cat" / "99.png").write_bytes(encode(extra, "PNG"))
    third = load_cifar10(tmp_path)
    assert third.from_cache is False and len(third.y_train) == len(first.y_train) + 1
    # a listed image whose bytes change is caught
    victim = folder / "test" / "truck" / "0.png"
    victim.write_bytes(encode(extra, "PNG"))
    with pytest.raises(ChecksumMismatchError, match=re.escape("truck/0.png")):
        load_cifar10(tmp_path)


def test_cifar_tar_cache_rebuilt_when_archive_changes(tmp_path):
    folder = tmp_path / "cifar10"
    folder.mkdir()
    images = solid_jpegs()
    archive = folder / "images.tar.gz"
    tar_gz(archive, {f"{s}/{c}/{i}.png": encode(img, "PNG") for (s, c, i), img in images.items()})
    first = load_cifar10(tmp_path)
    assert first.from_cache is False and Path(first.cache_path).parent == folder
    assert load_cifar10(tmp_path).from_cache is True
    images[("test", "frog", 5)] = np.zeros((32, 32, 3), np.uint8)
    tar_gz(archive, {f"{s}/{c}/{i}.png": encode(img, "PNG") for (s, c, i), img in images.items()})
    again = load_cifar10(tmp_path)
    assert again.from_cache is False and list(again.y_test) == [6, 8]


def test_cifar_missing_and_ambiguous(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "cifar10") in msg and "cifar-10-python.tar.gz" in msg
    assert "download=True" in msg and "https://www.cs.toronto.edu/~kriz/" in msg
    folder = tmp_path / "cifar10"
    folder.mkdir()
    (folder / "a.tar.gz").write_bytes(b"")
    (folder / "b.tar.gz").write_bytes(b"")
    with pytest.raises(DatasetCorruptError, match="several image archives"):
        load_cifar10(tmp_path)


# ------------------------------------------------------------------------ CT slices
def ct_table(n=40, seed=0):
    rng = np.random.default_rng(seed)
    patient = rng.integers(0, 7, n)
    values = rng.uniform(-0.25, 1.0, (n, 384)).round(6)
    reference = rng.uniform(0, 180, n).round(6)
    return patient, values, reference


def ct_csv(patient, values, reference) -> bytes:
    header = ",".join(["patientId", *[f"value{i}" for i in range(384)], "reference"])
    rows = [",".join([str(p), *map(repr, v), repr(r)])
            for p, v, r in zip(patient, values.tolist(), reference.tolist())]
    return ("\n".join([header, *rows]) + "\n").encode()


@pytest.mark.parametrize("fmt", ["csv", "zip"])
def test_ct_slices(tmp_path, fmt):
    patient, values, reference = ct_table()
    folder = tmp_path / "ct_slices"
    folder.mkdir()
    blob = ct_csv(patient, values, reference)
    if fmt == "csv":
        (folder / "slice_localization_data.csv").write_bytes(blob)
    else:
        with zipfile.ZipFile(folder / "slice_localization_data.zip", "w") as zf:
            zf.writestr("slice_localization_data.csv", blob)
    data = load_ct_slices(tmp_path, test_size=10, random_state=3)
    assert data.X_train.shape == (30, 384) and data.X_test.shape == (10, 384)
    assert data.X_train.dtype == np.float32 and data.y_train.dtype == np.float32
    assert data.feature_names == [f"value{i}" for i in range(384)]
    assert data.target_names == ["reference"]
    train, test = split_indices(40, 10, 3)
    np.testing.assert_array_equal(data.X_test, values[test].astype(np.float32))
    np.testing.assert_array_equal(data.X_train, values[train].astype(np.float32))
    np.testing.assert_allclose(data.y_test, reference[test] / 180, rtol=1e-6)
    assert data.y_train.min() >= 0 and data.y_train.max() <= 1
    np.testing.assert_array_equal(data.patient_id_test, patient[test])
    assert data.patient_id_train.dtype == np.int64
    assert "patientId" not in data.feature_names
    again = load_ct_slices(tmp_path, test_size=10, random_state=3)
    np.testing.assert_array_equal(again.X_train, data.X_train)
    other = load_ct_slices(tmp_path, test_size=10, random_state=4)
    assert not np.array_equal(other.y_test, data.y_test)


def test_ct_slices_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_ct_slices(tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "ct_slices" / "slice_localization_data.csv") in msg
    assert "00206/slice_localization_data.zip" in msg and "download=True" in msg
    folder = tmp_path / "ct_slices"
    folder.mkdir()
    path = folder / "slice_localization_data.csv"
    patient, values, reference = ct_table(12)
    blob = ct_csv(patient, values, reference)
    path.write_bytes(blob.replace(b"value7,", b"valueX,", 1))
    with pytest.raises(DatasetCorruptError, match="unexpected header"):
        load_ct_slices(tmp_path, test_size=2)
    path.write_bytes(blob[: len(blob) - 500])  # last row cut short
    with pytest.raises(DatasetCorruptError, match="missing or non-finite") as info:
        load_ct_slices(tmp_path, test_size=2)
    assert str(path) in str(info.value)
    path.write_bytes(ct_csv(patient, values, reference * 2))
    with pytest.raises(DatasetCorruptError, match=r"outside \[0, 180\]"):
        load_ct_slices(tmp_path, test_size=2)
    path.write_bytes(blob)
    write_sums(folder, {path.name: "2" * 64})
    with pytest.raises(ChecksumMismatchError, match=re.escape("slice_localization_data.csv")):
        load_ct_slices(tmp_path, test_size=2)
    with pytest.raises(ValueError, match="test_size"):
        split_indices(12, 12, 0)


# ------------------------------------------------------------------------------ UCI
def uci_table(n=50, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d + 1)).round(5)


def write_uci(path: Path, table: np.ndarray, gz: bool) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(",".join(repr(v) for v in row) for row in table.tolist()) + "\n"
    blob = gzip.compress(text.encode(), mtime=0) if gz else text.encode()
    path.write_bytes(blob)
    return blob


@pytest.mark.parametrize("gz", [True, False])
def test_uci_regression(tmp_path, gz):
    table = uci_table()
    write_uci(tmp_path / "uci" / ("toy.csv.gz" if gz else "toy.csv"), table, gz)
    data = load_uci_regression("toy", tmp_path)
    assert data.X_train.shape == (45, 4) and data.X_test.shape == (5, 4)  # 10 % rounded up
    assert data.X_train.dtype == np.float32 and data.y_test.dtype == np.float32
    train, test = split_indices(50, 0.1, 0)
    np.testing.assert_array_equal(data.X_test, table[test, :-1].astype(np.float32))
    np.testing.assert_array_equal(data.y_train, table[train, -1].astype(np.float32))
    assert data.name == "toy" and data.source[0].endswith(".gz" if gz else ".csv")
    # all rows used exactly once
    rows = np.vstack([np.c_[data.X_train, data.y_train], np.c_[data.X_test, data.y_test]])
    np.testing.assert_array_equal(np.sort(rows, axis=0), np.sort(table.astype(np.float32), axis=0))


def test_uci_test_size_seed_and_direct_path(tmp_path):
    table = uci_table(n=30)
    path = tmp_path / "elsewhere" / "mine.csv.gz"
    write_uci(path, table, gz=True)
    a = load_uci_regression(path, test_size=7, random_state=1)
    b = load_uci_regression(str(path), test_size=7, random_state=1)
    c = load_uci_regression(path, test_size=7, random_state=2)
    assert a.X_test.shape == (7, 4) and a.name == "mine"
    np.testing.assert_array_equal(a.X_test, b.X_test)
    assert not np.array_equal(a.X_test, c.X_test)
    assert load_uci_regression(path, test_size=0).X_test.shape == (0, 4)
    with pytest.raises(ValueError, match="test_size"):
        load_uci_regression(path, test_size=1.5)


def test_uci_checksums_and_errors(tmp_path):
    blob = write_uci(tmp_path / "uci" / "toy.csv.gz", uci_table(), gz=True)
    write_sums(tmp_path / "uci", {"toy.csv.gz": sha(blob)})
    assert "verified against" in load_uci_regression("toy", tmp_path).DESCR
    write_sums(tmp_path / "uci", {"toy.csv.gz": "3" * 64})
    with pytest.raises(ChecksumMismatchError) as info:
        load_uci_regression("toy", tmp_path)
    assert "toy.csv.gz" in str(info.value) and sha(blob) in str(info.value)

    with pytest.raises(DatasetNotFoundError) as info:
        load_uci_regression("protein", tmp_path)
    assert str(tmp_path / "uci" / "protein.csv.gz") in str(info.value)
    with pytest.raises(ValueError, match="invalid data-set name"):
        load_uci_regression("..", tmp_path)

    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n4,x,6\n")
    with pytest.raises(DatasetCorruptError, match=re.escape("bad.csv")):
        load_uci_regression(bad)
    bad.write_text("1,2,3\n4,5,6,7\n")
    with pytest.raises(DatasetCorruptError, match=re.escape("bad.csv")):
        load_uci_regression(bad)
    bad.write_text("1,2,3\n4,5\n")
    with pytest.raises(DatasetCorruptError, match="line 2"):
        load_uci_regression(bad)
    truncated = tmp_path / "cut.csv.gz"
    truncated.write_bytes(gzip.compress(b"1,2\n" * 10000)[:60])
    with pytest.raises(DatasetCorruptError, match=re.escape("cut.csv.gz")):
        load_uci_regression(truncated)


# ------------------------------------------------------------------------- downloads
def register(monkeypatch, folder: str, blobs: dict) -> None:
    """Make the download registry expect these fixture files (by name below ``folder``)."""
    for name, blob in blobs.items():
        monkeypatch.setitem(_download.REGISTRY, f"{folder}/{name}", sha(blob))


def mnist_mirror(root: Path):
    """A local MNIST mirror of gzipped fixture files; return its URL and the ``.gz`` bytes."""
    make_mnist(root)
    folder = root / "mnist"
    return folder.as_uri() + "/", {p.name: p.read_bytes() for p in folder.iterdir()}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_registry_holds_the_canonical_digests():
    downloadable = [f"mnist/{b}.gz" for b in _mnist.MNIST_FILES.values()]
    downloadable += ["cifar10/cifar-10-python.tar.gz", "ct_slices/slice_localization_data.zip"]
    assert sorted(_download.REGISTRY) == sorted(downloadable)
    for key, digest in _download.REGISTRY.items():
        if key.startswith("ct_slices/"):
            assert digest is None  # UCI publishes none; the header is checked instead
        else:
            assert re.fullmatch(r"[0-9a-f]{64}", digest), key


def test_mnist_download_from_file_url(tmp_path, monkeypatch):
    mirror, blobs = mnist_mirror(tmp_path / "mirror")
    register(monkeypatch, "mnist", blobs)
    monkeypatch.setattr(_mnist, "MNIST_URLS", ["file:///nonexistent/dir/", mirror])
    data = load_mnist(tmp_path / "home", download=True, cache=False)
    assert data.X_train.shape == (5, 784)
    folder = tmp_path / "home" / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(blobs)  # no temporary files
    assert all((folder / name).read_bytes() == blob for name, blob in blobs.items())


def test_download_hash_mismatch_leaves_nothing(tmp_path, monkeypatch):
    mirror, blobs = mnist_mirror(tmp_path / "mirror")
    register(monkeypatch, "mnist", blobs)
    victim = "t10k-labels-idx1-ubyte.gz"
    monkeypatch.setitem(_download.REGISTRY, f"mnist/{victim}", "0" * 64)
    monkeypatch.setattr(_mnist, "MNIST_URLS", [mirror])
    with pytest.raises(DownloadError) as info:
        load_mnist(tmp_path / "home", download=True)
    msg = str(info.value)
    assert "does not match the known hash" in msg and "0" * 64 in msg
    assert sha(blobs[victim]) in msg
    dest = tmp_path / "home" / "mnist" / victim
    assert f"place it at {dest} (SHA-256 {'0' * 64})" in msg
    # the files before it in the download order arrived; the bad one left no trace
    assert sorted(p.name for p in dest.parent.iterdir()) == sorted(set(blobs) - {victim})


def test_download_unreachable_says_where_to_put_the_file(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}/mnist/"
    monkeypatch.setattr(_mnist, "MNIST_URLS", ["file:///nonexistent/dir/", url])
    with pytest.raises(DownloadError) as info:
        load_mnist(tmp_path / "home", download=True)
    msg = str(info.value)
    name = "train-images-idx3-ubyte.gz"
    assert f"file:///nonexistent/dir/{name}: FileNotFoundError" in msg
    assert f"{url}{name}: ConnectionError" in msg
    assert f"place it at {tmp_path / 'home' / 'mnist' / name}" in msg
    assert _download.REGISTRY[f"mnist/{name}"] in msg  # the digest the file must have
    assert list((tmp_path / "home" / "mnist").iterdir()) == []


class _FixtureServer(http.server.ThreadingHTTPServer):
    """Serves ``files`` (path -> bytes) on 127.0.0.1; paths under ``/cut/`` announce the
    full length but send only half of the bytes, then close the connection."""

    def __init__(self, files: dict):
        self.files = files
        super().__init__(("127.0.0.1", 0), _FixtureHandler)


class _FixtureHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # the name http.server calls
        cut = self.path.startswith("/cut/")
        blob = self.server.files.get(self.path.removeprefix("/cut"))
        if blob is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(blob)))
        self.end_headers()
        self.wfile.write(blob[: len(blob) // 2] if cut else blob)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_mirror(monkeypatch):
    """A local HTTP server (no proxy) and the base URL of what it serves."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    server = _FixtureServer({})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_download_interrupted_then_next_mirror(tmp_path, monkeypatch, http_mirror):
    server, base = http_mirror
    _, blobs = mnist_mirror(tmp_path / "mirror")
    register(monkeypatch, "mnist", blobs)
    server.files.update({f"/mnist/{name}": blob for name, blob in blobs.items()})
    monkeypatch.setattr(_mnist, "MNIST_URLS", [f"{base}/cut/mnist/"])
    with pytest.raises(DownloadError, match=re.escape("/cut/mnist/train-images-idx3-ubyte.gz")):
        load_mnist(tmp_path / "home", download=True)
    assert list((tmp_path / "home" / "mnist").iterdir()) == []  # no partial file

    monkeypatch.setattr(_mnist, "MNIST_URLS", [f"{base}/cut/mnist/", f"{base}/missing/",
                                               f"{base}/mnist/"])
    data = load_mnist(tmp_path / "home", download=True, cache=False)
    assert data.y_test.shape == (3,)
    assert sorted(p.name for p in (tmp_path / "home" / "mnist").iterdir()) == sorted(blobs)


def test_download_refuses_read_only_home(tmp_path):
    home = tmp_path / "ro"
    home.mkdir()
    make_read_only(home)
    try:
        with pytest.raises(PermissionError, match="read-only"):
            load_mnist(home, download=True)
    finally:
        make_writable(home)
    assert list(home.iterdir()) == []


def test_cifar_and_ct_download_from_file_url(tmp_path, monkeypatch):
    *_, blobs = make_cifar_batches(tmp_path / "src")
    archive = tar_gz(tmp_path / "src" / "cifar.tar.gz",
                     {f"cifar-10-batches-py/{n}": b for n, b in blobs.items()})
    monkeypatch.setattr(_cifar10, "CIFAR10_URL", archive.as_uri())
    with pytest.raises(DownloadError, match="does not match the known hash"):
        load_cifar10(tmp_path / "home", download=True)  # the canonical digest, not ours
    assert list((tmp_path / "home" / "cifar10").iterdir()) == []
    register(monkeypatch, "cifar10", {"cifar-10-python.tar.gz": archive.read_bytes()})
    data = load_cifar10(tmp_path / "home", download=True, cache=False)
    assert data.layout == "batches-tar" and data.X_train.shape == (10, 3072)

    bad = tmp_path / "src" / "bad.zip"  # no digest is known: the header is checked
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("slice_localization_data.csv", b"a,b,c\n1,2,3\n")
    monkeypatch.setattr(_ct_slices, "CT_URL", bad.as_uri())
    with pytest.raises(DownloadError, match="unexpected header"):
        load_ct_slices(tmp_path / "home", download=True)
    assert list((tmp_path / "home" / "ct_slices").iterdir()) == []
    zpath = tmp_path / "src" / "ct.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("slice_localization_data.csv", ct_csv(*ct_table(20)))
    monkeypatch.setattr(_ct_slices, "CT_URL", zpath.as_uri())
    ct = load_ct_slices(tmp_path / "home", test_size=5, download=True)
    assert ct.X_train.shape == (15, 384)
    assert (tmp_path / "home" / "ct_slices" / "slice_localization_data.zip").is_file()


def test_public_names():
    for name in ("load_mnist", "load_cifar10", "load_ct_slices", "load_uci_regression",
                 "get_data_home", "get_cache_home", "DatasetNotFoundError"):
        assert name in datasets.__all__ and hasattr(datasets, name)
        if name[0].islower():
            assert "Examples" in getattr(datasets, name).__doc__
    assert issubclass(DatasetNotFoundError, FileNotFoundError)
    assert issubclass(ChecksumMismatchError, ValueError)


# ----------------------------------------------------------------- optional real data
@pytest.mark.skipif(not (REAL_DATA / "mnist").is_dir(),
                    reason="no real data folder (SKKFAC_DATA or /work/shared/data)")
def test_real_data(tmp_path, monkeypatch):
    """Loads the shared benchmark copies of MNIST and the UCI sets (CIFAR-10's 60,000 JPEGs
    take ~10 s to decode, too slow for the unit tests; see the benchmark notes)."""
    monkeypatch.setenv("SKKFAC_CACHE", str(tmp_path / "cache"))
    mnist = load_mnist(REAL_DATA)
    assert mnist.X_train.shape == (60000, 784) and mnist.X_test.shape == (10000, 784)
    assert mnist.X_train.dtype == np.float32 and mnist.y_train.dtype == np.int64
    assert mnist.y_test[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(mnist.y_train).tolist()[:2] == [5923, 6742]
    if (REAL_DATA / "mnist" / "SHA256SUMS.uncompressed").is_file():
        assert "SHA256SUMS.uncompressed" in mnist.DESCR
    for name, shape in (("protein", (45730, 9)), ("keggundirected", (63608, 27))):
        if (REAL_DATA / "uci" / f"{name}.csv.gz").is_file():
            data = load_uci_regression(name, REAL_DATA)
            assert len(data.X_train) + len(data.X_test) == shape[0]
            assert data.X_train.shape[1] == shape[1] and data.y_train.dtype == np.float32
