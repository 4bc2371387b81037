"""SHA-256 helpers and verification against ``SHA256SUMS`` files (sha256sum format)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pooch

from skkfac.datasets._base import ChecksumMismatchError, DatasetCorruptError

SUMS = "SHA256SUMS"
SUMS_UNCOMPRESSED = "SHA256SUMS.uncompressed"

_LINE = re.compile(r"^(?P<digest>[0-9a-fA-F]{64}) [ *]?(?P<name>\S.*)$")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 digest of a file (read in chunks by :func:`pooch.file_hash`)."""
    return pooch.file_hash(str(path), alg="sha256")


def sha256_bytes(data) -> str:
    """Hex SHA-256 digest of a bytes-like object."""
    return hashlib.sha256(data).hexdigest()


def read_sums(path: Path) -> dict[str, str]:
    """Parse a ``sha256sum``-style file into ``{file name: lower-case hex digest}``.

    Lines are ``<64 hex digits><space><space or '*'><file name>``; blank lines and lines
    starting with ``#`` are ignored. A leading ``./`` in a name is dropped.

    Raises
    ------
    DatasetCorruptError
        On a line that does not have that form (the message names file and line).
    """
    table: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetCorruptError(f"checksum file {path} is not UTF-8 text: {exc}") from exc
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise DatasetCorruptError(
                f"checksum file {path}, line {lineno}: expected '<sha256 hex>  <file name>', "
                f"got {raw!r}"
            )
        name = match.group("name").strip()
        name = name.removeprefix("./")
        table[name] = match.group("digest").lower()
    return table


class Verifier:
    """Checks digests against the checksum lists of a dataset folder.

    For a file ``<root>/a/b/f``, the lists ``<root>/a/b/<sums_name>`` (key ``f``),
    ``<root>/a/<sums_name>`` (key ``b/f``) and ``<root>/<sums_name>`` (key ``a/b/f``) are
    consulted, nearest first; the first list naming the file decides. Files no list names
    are not verified. Parsed lists are memoised; :attr:`used` collects the lists that
    vouched for something, :meth:`sums_files` the lists that exist.

    Parameters
    ----------
    root : pathlib.Path
        The dataset folder (files outside it only consult their own folder's list).
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.used: set[Path] = set()
        self._tables: dict[Path, dict | None] = {}

    def _table(self, sums: Path):
        if sums not in self._tables:
            self._tables[sums] = read_sums(sums) if sums.is_file() else None
        return self._tables[sums]

    def _folders(self, path: Path):
        """Yield ``(folder, key prefix parts)`` from the file's folder up to the root."""
        path = Path(path)
        folder, parts = path.parent, []
        inside = path.is_relative_to(self.root)
        while True:
            yield folder, parts
            if not inside or folder == self.root or folder.parent == folder:
                return
            parts = [folder.name, *parts]
            folder = folder.parent

    def sums_files(self, paths, sums_name: str = SUMS) -> list[Path]:
        """The existing lists named ``sums_name`` that :meth:`check` would consult."""
        found = []
        seen = set()
        for path in paths:
            for folder, _ in self._folders(path):
                sums = folder / sums_name
                if folder not in seen:
                    seen.add(folder)
                    if sums.is_file():
                        found.append(sums)
        return sorted(set(found))

    def lookup(self, path: Path, *, sums_name: str = SUMS, key: str | None = None):
        """Return ``(expected digest, list file)`` for ``path`` or ``None``."""
        base = key if key is not None else Path(path).name
        for folder, parts in self._folders(path):
            sums = folder / sums_name
            table = self._table(sums)
            if table is not None:
                rel = "/".join([*parts, base])
                if rel in table:
                    return table[rel], sums
        return None

    def check(self, path: Path, actual: str, *, sums_name: str = SUMS,
              key: str | None = None, what: str | None = None) -> bool:
        """Compare ``actual`` (hex digest of ``path``'s bytes, or of its decoded content
        with ``key``/``sums_name`` naming it) with the recorded digest.

        Returns ``True`` if a list vouched for it, ``False`` if no list names it.

        Raises
        ------
        ChecksumMismatchError
            If a list names it with a different digest (message: file, list, both digests).
        """
        found = self.lookup(path, sums_name=sums_name, key=key)
        if found is None:
            return False
        expected, sums = found
        if expected != actual.lower():
            label = what or f"file {path}"
            raise ChecksumMismatchError(
                f"SHA-256 mismatch for {label}: {sums} records {expected}, but the data "
                f"read hash to {actual.lower()}. The file is corrupt, truncated or a "
                f"different version; replace it (or fix {sums.name} if the file is right)."
            )
        self.used.add(sums)
        return True
