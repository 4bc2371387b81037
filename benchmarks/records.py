"""Crash-safe result files: append-only CSV logs, run settings and the command log.

Every finished unit of work (a search trial, a retrained run, a batch-size point) is
appended to its CSV as one line and flushed to disk at once, so an interrupted
experiment loses at most the unit that was running. Re-running the same command reads
the CSV back and skips (or, for the search, replays) what is there.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import shlex
import time
from pathlib import Path

import pandas as pd


def log(message: str) -> None:
    """A progress line with the wall-clock time, flushed at once."""
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", flush=True)


def _format(value) -> str:
    if value is None:
        return ""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar
        value = value.item()
    if isinstance(value, float):
        # repr round-trips exactly: a replayed search sees the very values it was told
        return "" if math.isnan(value) else repr(value)
    return str(value)


class CsvLog:
    """An append-only CSV file with fixed columns.

    Parameters
    ----------
    path : path-like
    columns : sequence of str
        The header. Rows may omit columns (written empty) but not add new ones.
    """

    def __init__(self, path, columns):
        self.path = Path(path)
        self.columns = list(columns)

    def exists(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0

    def read(self) -> pd.DataFrame:
        """All complete rows (a torn last line from a crash is dropped)."""
        if not self.exists():
            return pd.DataFrame(columns=self.columns)
        self._drop_torn_line()
        frame = pd.read_csv(self.path, on_bad_lines="skip")
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{self.path} lacks the columns {missing}: it was written by "
                             "another version of the benchmark; use --fresh or another "
                             "--out.")
        return frame

    def _drop_torn_line(self) -> None:
        """Cut an incomplete last line (a crash in the middle of a write)."""
        with open(self.path, "rb+") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            if size == 0:
                return
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            handle.seek(0)
            content = handle.read()
            handle.seek(content.rfind(b"\n") + 1)
            handle.truncate()

    def append(self, row: dict) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"unknown columns for {self.path.name}: {sorted(unknown)}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.exists()
        if not new:
            self._drop_torn_line()
        with open(self.path, "a", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")  # one line ending in every file
            if new:
                writer.writerow(self.columns)
            writer.writerow([_format(row.get(c)) for c in self.columns])
            handle.flush()
            os.fsync(handle.fileno())

    def remove(self) -> None:
        if self.path.exists():
            log(f"removing {self.path}")
            self.path.unlink()


def check_settings(path, settings: dict, *, fresh: bool) -> None:
    """Record an experiment's settings next to its results; refuse to mix settings.

    When ``path`` exists with different settings the results beside it were made
    differently and resuming would mix them: raise unless ``fresh`` (then the caller
    has removed the old results and the new settings are written).
    """
    path = Path(path)
    settings = json.loads(json.dumps(settings, default=str))
    if path.is_file() and not fresh:
        old = json.loads(path.read_text())
        changed = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if changed:
            details = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise SystemExit(
                f"{path.parent} holds results made with other settings ({details}). "
                "Re-run with --fresh to discard them, or choose another --out.")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def read_settings(path) -> dict:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


def command_line(argv) -> str:
    return shlex.join(["python", "-m", "benchmarks", *argv])


def code_version() -> str:
    """``git`` revision of the checkout, ``+dirty`` when ``skkfac/`` has local changes."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "skkfac"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev or "unknown") + ("+dirty" if dirty else "")


class CommandLog:
    """Appends ``<start>  <duration>  <status>  <command>  <code version>`` to
    ``commands.txt`` when the command ends (also when it is interrupted or fails)."""

    def __init__(self, out_dir, argv):
        self.path = Path(out_dir) / "commands.txt"
        self.command = command_line(argv)
        self.version = code_version()

    def __enter__(self):
        self.start = time.time()
        self.started = datetime.datetime.now()
        return self

    def __exit__(self, exc_type, exc, tb):
        status = ("finished" if exc_type is None
                  else "interrupted" if issubclass(exc_type, KeyboardInterrupt)
                  else f"failed ({exc_type.__name__})")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(f"{self.started:%Y-%m-%d %H:%M:%S}\t{time.time() - self.start:7.1f}s"
                         f"\t{status}\t{self.command}\tskkfac@{self.version}\n")
        return False


def read_commands(out_dir) -> list[dict]:
    path = Path(out_dir) / "commands.txt"
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 4:
            entries.append({"started": parts[0], "duration": parts[1].strip(),
                            "status": parts[2], "command": parts[3],
                            "version": parts[4] if len(parts) > 4 else ""})
    return entries
