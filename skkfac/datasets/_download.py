"""Fetching a file from a list of mirror URLs, verified, written atomically.

Only used when a loader is called with ``download=True``. Each URL is streamed into a
hidden temporary file next to the destination; the bytes are checked (length announced
by the server, SHA-256 if known, then a format check supplied by the loader) and only
then ``os.replace``-d onto the final name. Whatever goes wrong, the temporary file is
removed, so no partial download is ever left under the final name (or at all).
"""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

from skkfac.datasets._base import atomic_output, ensure_writable_dir

#: Opener used for every request; tests replace it (no network in the test-suite).
urlopen = urllib.request.urlopen

_USER_AGENT = "skkfac-datasets (+https://pypi.org/project/skkfac/)"


class DownloadError(OSError):
    """Every URL tried for a file failed; the message lists each URL and its error."""


def download_file(urls, dest: Path, *, sha256: str | None = None, validate=None,
                  timeout: float = 60.0, chunk_size: int = 1 << 20) -> Path:
    """Download the first URL of ``urls`` that works into ``dest`` and return ``dest``.

    Parameters
    ----------
    urls : sequence of str
        Mirrors, tried in order (``http(s)://`` or ``file://``).
    dest : pathlib.Path
        Final file name; its folder is created if needed (it must be writable).
    sha256 : str, default=None
        Expected hex digest of the downloaded bytes, when known for sure.
    validate : callable, default=None
        ``validate(tmp_path)`` inspects the complete temporary file and raises if its
        content is unusable (wrong format, bad decompressed checksum, ...).
    timeout : float, default=60
        Socket timeout in seconds for each request.
    chunk_size : int, default=1 MiB
        Streaming block size.

    Raises
    ------
    DownloadError
        If no URL yields a verified file.
    """
    dest = Path(dest)
    ensure_writable_dir(dest.parent)
    errors = []
    for url in urls:
        try:
            _fetch_one(url, dest, sha256=sha256, validate=validate, timeout=timeout,
                       chunk_size=chunk_size)
            return dest
        except Exception as exc:
            errors.append(f"  {url}: {type(exc).__name__}: {exc}")
    raise DownloadError(
        f"could not download {dest.name} into {dest.parent}; tried:\n" + "\n".join(errors)
        + f"\nFetch the file by other means and place it at {dest}."
    )


def _fetch_one(url, dest, *, sha256, validate, timeout, chunk_size):
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    digest = hashlib.sha256()
    n_bytes = 0
    output = atomic_output(dest)
    with output as f:
        with urlopen(request, timeout=timeout) as response:
            announced = response.headers.get("Content-Length") if response.headers else None
            while True:
                block = response.read(chunk_size)
                if not block:
                    break
                f.write(block)
                digest.update(block)
                n_bytes += len(block)
        if announced is not None and int(announced) != n_bytes:
            raise DownloadError(
                f"incomplete transfer: server announced {announced} bytes, got {n_bytes}"
            )
        if n_bytes == 0:
            raise DownloadError("empty response")
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise DownloadError(
                f"SHA-256 mismatch: expected {sha256.lower()}, downloaded bytes hash to "
                f"{digest.hexdigest()}"
            )
        if validate is not None:
            f.flush()
            validate(output.tmp_path)
