"""Durable instance files: temp name, fsync, rename into place, fsync the folder.

Layout below the data folder::

    instances/<study uid>/<series uid>/<sop instance uid>.dcm
    results/<study uid>/<sop instance uid>.dcm   result objects the node wrote
    tmp/       files being written; removed at start-up, never indexed

A file is visible under ``instances/`` only once its bytes are on disk, so a
crash at any moment leaves either the whole file or none of it.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path

__all__ = ["Spool", "is_safe_uid"]

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_counter = itertools.count()


def is_safe_uid(uid: str) -> bool:
    """A UID made of digits and dots, at most 64 characters (PS3.5 9.1)."""
    return 0 < len(uid) <= 64 and _UID_RE.match(uid) is not None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The instance files of one data folder."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.instances_dir = data_dir / "instances"
        self.tmp_dir = data_dir / "tmp"
        self._known_dirs: set[Path] = set()
        self._lock = threading.Lock()

    def prepare(self) -> int:
        """Create the folders and delete leftovers of interrupted writes.

        Returns the number of partial files removed. Call once at start-up,
        before any listener runs.
        """
        for path in (self.data_dir, self.instances_dir, self.tmp_dir):
            self._ensure_dir(path)
        removed = 0
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink()
            removed += 1
        if removed:
            _fsync_dir(self.tmp_dir)
        return removed

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        for uid in (study_uid, series_uid, sop_uid):
            if not is_safe_uid(uid):
                raise ValueError(f"not a valid UID for a file name: {uid!r}")
        return self.instances_dir / study_uid / series_uid / f"{sop_uid}.dcm"

    def result_path(self, study_uid: str, sop_uid: str) -> Path:
        for uid in (study_uid, sop_uid):
            if not is_safe_uid(uid):
                raise ValueError(f"not a valid UID for a file name: {uid!r}")
        return self.data_dir / "results" / study_uid / f"{sop_uid}.dcm"

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.data_dir).free

    def stage(self, chunks: Iterable[bytes], name: str) -> tuple[Path, int]:
        """Write ``chunks`` to a new file under ``tmp/`` and fsync it.

        Returns the staged path and its size. The file is invisible to
        readers of ``instances/`` until :meth:`publish` moves it there.
        """
        tmp = self.tmp_dir / f"{name}.{os.getpid()}.{next(_counter)}.part"
        size = 0
        try:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    size += len(chunk)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, size

    def publish(self, staged: Path, path: Path) -> None:
        """Atomically move a staged file to ``path`` and make the rename durable."""
        self._ensure_dir(path.parent)
        os.replace(staged, path)
        _fsync_dir(path.parent)

    def discard(self, staged: Path) -> None:
        staged.unlink(missing_ok=True)

    def write(self, path: Path, chunks: Iterable[bytes]) -> int:
        """Stage and publish in one step; return the size."""
        staged, size = self.stage(chunks, path.name)
        try:
            self.publish(staged, path)
        except BaseException:
            self.discard(staged)
            raise
        return size

    def remove(self, path: Path) -> None:
        """Delete an instance file that the index no longer points to."""
        path.unlink(missing_ok=True)

    def _ensure_dir(self, path: Path) -> None:
        """mkdir -p, fsyncing each parent whose entries changed."""
        if path in self._known_dirs:
            return
        missing = []
        probe = path
        while not probe.is_dir():
            missing.append(probe)
            probe = probe.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                pass
            _fsync_dir(folder.parent)
        with self._lock:
            self._known_dirs.add(path)
