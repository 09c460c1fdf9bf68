"""Durable instance files: written unnamed, fsynced, linked into place, folder fsynced.

Layout below the data folder::

    instances/<study uid>/<series uid>/<sop instance uid>.dcm
    results/<study uid>/<sop instance uid>.dcm   result objects the node wrote
    tmp/       files being written; removed at start-up, never indexed
    orphans/   files found without an index row at start-up (storage.reconcile)

A file is visible under ``instances/`` only once its bytes are on disk, so a
crash at any moment leaves either the whole file or none of it. Files are
staged with ``O_TMPFILE`` (an inode without a name, which a crash frees by
itself) and given their name with one ``linkat``; where the filesystem cannot
do that, under a temporary name in ``tmp/`` that is renamed into place.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import shutil
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Spool", "Staged", "fsync_dir", "is_safe_uid"]

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_counter = itertools.count()
# How far a free-space figure is trusted without asking the filesystem again: this old
# at most, less what this spool wrote since, and only when it clears the line by the
# slack (for what other processes wrote meanwhile). Near the line, always asked afresh.
_FREE_FRESH_S = 0.5
_FREE_SLACK = 256 << 20
# A gathered write takes at most this many pieces (IOV_MAX is 1024) or bytes.
_GATHER_MAX = 256
_GATHER_BYTES = 8 << 20


def is_safe_uid(uid: str) -> bool:
    """A UID made of digits and dots, at most 64 characters (PS3.5 9.1)."""
    return 0 < len(uid) <= 64 and _UID_RE.match(uid) is not None


def fsync_dir(path: Path, fd: int | None = None) -> None:
    """Make the entries of folder ``path`` durable (``fd``: that folder, open already)."""
    if fd is not None:
        os.fsync(fd)
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, chunks: Iterable[bytes | memoryview]) -> int:
    """Write ``chunks`` to ``fd`` in order with as few system calls as they allow
    (gathered writes; each system call lets other threads run, and under
    concurrent stores each costs a turn at the interpreter); return the size."""
    size = 0
    pending: list[memoryview] = []
    pending_bytes = 0
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        if not view.nbytes:
            continue
        pending.append(view)
        pending_bytes += view.nbytes
        size += view.nbytes
        if len(pending) >= _GATHER_MAX or pending_bytes >= _GATHER_BYTES:
            _writev_all(fd, pending)
            pending, pending_bytes = [], 0
    _writev_all(fd, pending)
    return size


def _writev_all(fd: int, views: list[memoryview]) -> None:
    """writev until every byte of ``views`` is written (a write may stop short)."""
    while views:
        written = os.writev(fd, views)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        while views and written >= views[0].nbytes:
            written -= views[0].nbytes
            views.pop(0)
        if written:
            views[0] = views[0][written:]


# Filesystems without hard links (FAT, some network mounts) answer link() so.
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK}


@dataclass(slots=True)
class Staged:
    """A written and fsynced file not under its final name yet: an open ``O_TMPFILE``
    descriptor (``fd``), or a file under ``tmp/`` (``path``)."""

    fd: int | None = None
    path: Path | None = None

    def exists(self) -> bool:
        """Whether it is still waiting to be published or discarded."""
        return self.fd is not None or (self.path is not None and self.path.exists())


def _link_no_replace(fd: int, folder: int, name: str) -> bool:
    """Give the unnamed file open as ``fd`` the name ``name`` in the folder open as
    ``folder``; False if that exists.

    linkat(2) with AT_SYMLINK_FOLLOW on /proc/self/fd/N, as open(2) describes for
    O_TMPFILE. (Python calls linkat only when a dir_fd is given; plain link() would
    try to link the /proc entry itself.)
    """
    try:
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=folder, follow_symlinks=True)
    except FileExistsError:
        return False
    return True


def _move_no_replace(source: Path, target: Path) -> bool:
    """Rename ``source`` to ``target`` unless ``target`` exists; False if it does.

    link + unlink is a rename that cannot overwrite; where hard links are not
    supported, an existence check before the rename serves (callers publishing
    instances hold the index's write lock).
    """
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if target.exists():
            return False
        os.replace(source, target)
        return True
    os.unlink(source)
    return True


class Spool:
    """The instance files of one data folder."""

    def __init__(self, data_dir: Path, *, unnamed: bool | None = None) -> None:
        """``unnamed``: stage files with O_TMPFILE (True), under ``tmp/`` (False), or
        whichever works here (None: probed on first use)."""
        self.data_dir = data_dir
        self.instances_dir = data_dir / "instances"
        self.tmp_dir = data_dir / "tmp"
        self.results_dir = data_dir / "results"
        self.orphans_dir = data_dir / "orphans"
        self._results_tmp = self.tmp_dir / "results"
        self._known_dirs: set[Path] = set()
        self._lock = threading.Lock()
        self._unnamed = unnamed  # O_TMPFILE + linkat work here (None: not probed yet)
        self._written = 0  # bytes staged so far (free_bytes' estimate)
        self._free_seen = (0, -_FREE_FRESH_S, 0)  # (free, when, _written then)

    def prepare(self, *, grace_s: float = 0.0) -> int:
        """Create the folders and delete leftovers of interrupted writes.

        Returns the number of partial files removed. Call at start-up with the
        data folder's lock held, before any listener runs. Result files staged
        by workers (``tmp/results/``) are removed only once older than
        ``grace_s``: a worker running beside the node may be writing one.
        """
        for path in (self.data_dir, self.instances_dir, self.tmp_dir, self._results_tmp):
            self._ensure_dir(path)
        removed = 0
        for folder, cutoff in ((self.tmp_dir, None), (self._results_tmp, time.time() - grace_s)):
            for leftover in folder.iterdir():
                if leftover.is_dir() or (cutoff is not None and leftover.stat().st_mtime > cutoff):
                    continue
                leftover.unlink()
                removed += 1
            if removed:
                fsync_dir(folder)
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
        return self.results_dir / study_uid / f"{sop_uid}.dcm"

    def free_bytes(self, *, above: int | None = None) -> int:
        """Free bytes of the data folder's filesystem.

        With ``above``, a figure measured less than half a second ago, less what this
        spool wrote since, may answer instead (one system call fewer per store, and
        under concurrent stores each costs a turn at the interpreter) — but only when
        it exceeds ``above`` by 256 MiB; otherwise the filesystem is asked.
        """
        if above is not None:
            measured, at, written = self._free_seen
            estimate = measured - (self._written - written)
            if time.monotonic() - at < _FREE_FRESH_S and estimate - _FREE_SLACK >= above:
                return estimate
        free = shutil.disk_usage(self.data_dir).free
        self._free_seen = (free, time.monotonic(), self._written)
        return free

    def stage(
        self, chunks: Iterable[bytes | memoryview], name: str, *, folder: Path | None = None
    ) -> tuple[Staged, int]:
        """Write ``chunks`` to a new file without a name (or under ``tmp/``, or ``folder``,
        where the filesystem cannot) and fsync it.

        Returns the staged file and its size. The file is invisible to readers of
        ``instances/`` until :meth:`publish` gives it its name there.
        """
        where = folder or self.tmp_dir
        if self._can_stage_unnamed(where):
            fd = os.open(where, os.O_TMPFILE | os.O_WRONLY, 0o644)
            staged = Staged(fd=fd)
        else:
            tmp = where / f"{name}.{os.getpid()}.{next(_counter)}.part"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            staged = Staged(path=tmp)
        try:
            size = _write_all(fd, chunks)
            self._written += size  # unlocked: a lost update is inside free_bytes' slack
            os.fsync(fd)
        except BaseException:
            if staged.path is not None:
                os.close(fd)
            self.discard(staged)
            raise
        # A named file's descriptor is closed here; an unnamed one's stays open until
        # publish or discard (it is the file).
        if staged.path is not None:
            os.close(fd)
        return staged, size

    def _can_stage_unnamed(self, folder: Path) -> bool:
        """Whether O_TMPFILE and linkat through /proc work here: tried once, with a probe."""
        if self._unnamed is None:
            try:
                fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o644)
            except (OSError, AttributeError):  # no O_TMPFILE in the OS or the filesystem
                self._unnamed = False
            else:
                probe = folder / f".probe.{os.getpid()}.{next(_counter)}"
                folder_fd = os.open(folder, os.O_PATH | os.O_DIRECTORY)
                try:
                    self._unnamed = _link_no_replace(fd, folder_fd, probe.name)
                except OSError:  # no /proc, or no hard links on this filesystem
                    self._unnamed = False
                finally:
                    os.close(folder_fd)
                    os.close(fd)
                probe.unlink(missing_ok=True)
        return self._unnamed

    def publish(self, staged: Staged, path: Path) -> Path:
        """Give a staged file its name ``path`` and make that durable (its folder
        fsynced); return where it went.

        Never overwrites: if ``path`` exists (an instance replaced with the
        same UIDs), the file goes to a new name beside it, so the bytes that a
        committed index row points to stay untouched until that row moves. If
        it fails, nothing is left: the staged file is discarded, or the name it
        got is removed again when its folder cannot be fsynced.
        """
        fd, source = staged.fd, staged.path
        assert fd is not None or source is not None, "published or discarded already"
        folder = -1

        def place(target: Path) -> bool:
            if fd is not None:
                return _link_no_replace(fd, folder, target.name)
            assert source is not None
            return _move_no_replace(source, target)

        try:
            self._ensure_dir(path.parent)
            # One descriptor of the folder for the link and the fsync.
            folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            target = path
            while not place(target):
                target = path.with_name(f"{path.stem}.{os.getpid()}-{next(_counter)}{path.suffix}")
        except BaseException:
            if folder >= 0:
                os.close(folder)
            self.discard(staged)
            raise
        if fd is not None:
            os.close(fd)
        staged.fd = staged.path = None
        try:
            fsync_dir(path.parent, folder)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        finally:
            os.close(folder)
        return target

    def discard(self, staged: Staged) -> None:
        """Drop a staged file that will not be published (nothing if it was)."""
        if staged.fd is not None:
            os.close(staged.fd)
            staged.fd = None
        if staged.path is not None:
            staged.path.unlink(missing_ok=True)
            staged.path = None

    def write(self, path: Path, chunks: Iterable[bytes | memoryview]) -> int:
        """Stage and publish a file at a path that does not exist yet; return the size.

        Used for result objects (staged in ``tmp/results/``).
        """
        self._ensure_dir(self._results_tmp)
        staged, size = self.stage(chunks, path.name, folder=self._results_tmp)
        published = self.publish(staged, path)
        if published != path:
            self.remove(published)
            raise FileExistsError(errno.EEXIST, "already exists", str(path))
        return size

    def quarantine(self, path: Path) -> Path:
        """Move a file of the data folder to ``orphans/`` under the same relative path."""
        target = self.orphans_dir / path.relative_to(self.data_dir)
        self._ensure_dir(target.parent)
        while not _move_no_replace(path, target):
            target = target.with_name(f"{target.name}.{next(_counter)}")
        fsync_dir(target.parent)
        fsync_dir(path.parent)
        return target

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
            fsync_dir(folder.parent)
        with self._lock:
            self._known_dirs.add(path)
