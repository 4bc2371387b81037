"""Downloads through :mod:`pooch`: canonical SHA-256 hashes, mirrors, atomic writes.

Only used when a loader is called with ``download=True``. :data:`REGISTRY` holds the
canonical SHA-256 of every file a loader can fetch, keyed by its path below the data
home. For each mirror in turn, pooch streams the file into a temporary file next to the
destination, checks its hash and only then moves it onto the final name; a failed,
interrupted or mismatching transfer leaves no file behind. Existing files are never
overwritten (pooch's updates are disabled).

``http(s)://`` URLs use pooch's :class:`~pooch.HTTPDownloader`; ``file://`` URLs (a local
mirror, or the tests) are copied by :func:`copy_local_file`, a downloader with pooch's
calling convention. The loaders read ``.gz``, ``.tar.gz`` and ``.zip`` files in place,
so pooch's unpacking processors are not used: they would only duplicate the data on disk.
"""

from __future__ import annotations

import shutil
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import pooch

from skkfac.datasets._base import ensure_writable_dir

#: Canonical SHA-256 of each downloadable file, by path below the data home. ``None``
#: means no published digest is known; the loader then checks the file's format.
REGISTRY: dict[str, str | None] = {
    # The original yann.lecun.com archives (their MD5s are the published ones).
    "mnist/train-images-idx3-ubyte.gz":
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "mnist/train-labels-idx1-ubyte.gz":
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "mnist/t10k-images-idx3-ubyte.gz":
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "mnist/t10k-labels-idx1-ubyte.gz":
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    # cifar-10-python.tar.gz, 170,498,071 bytes, MD5 c58f30108f718f92721af3b95e74349a.
    "cifar10/cifar-10-python.tar.gz":
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    # UCI publishes no checksum for this archive; its CSV header is checked instead.
    "ct_slices/slice_localization_data.zip": None,
}

#: Seconds to wait for a server before giving up on a mirror.
TIMEOUT = 60.0
_CHUNK = 1 << 20


class DownloadError(OSError):
    """Every URL tried for a file failed; the message lists each URL and its error."""


def copy_local_file(url: str, output_file, pooch_instance=None) -> None:
    """Pooch downloader for ``file://`` URLs: copy the local file named by ``url``.

    ``output_file`` is a path or a binary file object, as pooch passes it.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise ValueError(f"not a local file URL: {url!r}")
    source = Path(urllib.request.url2pathname(parts.path))
    with open(source, "rb") as src:
        if hasattr(output_file, "write"):
            shutil.copyfileobj(src, output_file, _CHUNK)
        else:
            with open(output_file, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)


def _downloader(url: str, check: Callable[[Path], None] | None):
    """The pooch downloader for ``url``; ``check`` runs on the complete temporary file,
    so a file that fails it is deleted by pooch before it ever gets its final name."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme == "file":
        base = copy_local_file
    elif scheme in ("http", "https"):
        base = pooch.HTTPDownloader(timeout=TIMEOUT, chunk_size=_CHUNK)
    else:
        base = pooch.choose_downloader(url)
    if check is None:
        return base

    def download_and_check(url, output_file, pooch_instance):
        base(url, output_file, pooch_instance)
        check(Path(output_file))

    return download_and_check


def fetch(data_home: Path, key: str, urls: Sequence[str], *,
          check: Callable[[Path], None] | None = None) -> Path:
    """Download ``<data_home>/<key>`` from the first of ``urls`` that yields a good file.

    Parameters
    ----------
    data_home : pathlib.Path
        The data home; the file's folder is created if needed (it must be writable).
    key : str
        The file's path below the data home, e.g. ``"mnist/t10k-labels-idx1-ubyte.gz"``;
        its SHA-256 is looked up in :data:`REGISTRY`.
    urls : sequence of str
        Mirrors of that one file, tried in order (``http(s)://`` or ``file://``).
    check : callable, default=None
        ``check(path)`` inspects the complete download before it is moved into place and
        raises if the content is unusable (for files without a known digest).

    Returns
    -------
    pathlib.Path
        The downloaded file.

    Raises
    ------
    PermissionError
        If the destination folder is read-only (checked before any transfer).
    DownloadError
        If no URL yields a file with the registered digest (the message lists each URL
        with its error and says where to put the file by hand).
    """
    data_home = Path(data_home)
    dest = data_home / key
    ensure_writable_dir(dest.parent)
    known = REGISTRY[key]
    registry = {key: None if known is None else f"sha256:{known}"}
    errors = []
    for url in urls:
        fetcher = pooch.create(path=data_home, base_url="", registry=registry,
                               urls={key: url}, allow_updates=False)
        try:
            return Path(fetcher.fetch(key, downloader=_downloader(url, check)))
        except Exception as exc:  # any failure of one mirror: try the next
            errors.append(f"  {url}: {type(exc).__name__}: {exc}")
    raise DownloadError(
        f"could not download {dest.name} into {dest.parent}; tried:\n" + "\n".join(errors)
        + f"\nFetch the file by other means and place it at {dest}"
        + ("" if known is None else f" (SHA-256 {known})") + "."
    )
