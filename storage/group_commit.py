"""Group commit: concurrent index transactions share one database transaction.

Each C-STORE writes and fsyncs its file on its own thread, then hands its
index work to :func:`run`. Whoever finds no batch running leads: it takes
every piece of work waiting (its own included), runs each in a SAVEPOINT of
one transaction, fsyncs each folder that got a new entry once, and commits
once (one WAL fsync on SQLite); the others wait for that commit. So N
instances arriving together cost one commit and one fsync per folder instead
of N of each, while each keeps its own outcome: a piece of work that raises
is rolled back to its savepoint and gets its exception back; a commit that
fails gives every piece the commit's exception (nothing of the batch is
indexed). A store is answered only after the commit that holds its row.

One instance per process and sessionmaker (:func:`group_of`). A lone store
runs as a batch of one, without a savepoint.

SQLite only: there every write transaction already takes the database's one
write lock (BEGIN IMMEDIATE), so a batch adds no lock a single store would not
hold. On PostgreSQL stores of different studies run side by side, and a batch
would hold several studies' rows at once — a deadlock risk with other
transactions that touch several studies — so each store commits on its own
there, on its own thread, as before.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from storage.spool import fsync_dir

__all__ = ["GroupCommit", "Work", "group_of"]

T = TypeVar("T")

#: A piece of index work: runs in the batch's transaction; adds to ``folders``
#: each folder whose entries it changed (fsynced once before the commit).
Work = Callable[[Session, set[Path]], T]

_MAX_BATCH = 64


class _Item(Generic[T]):
    __slots__ = ("error", "finished", "key", "result", "work")

    def __init__(self, work: Work[T], key: str) -> None:
        self.work, self.key = work, key
        self.result: T | None = None
        self.error: BaseException | None = None
        self.finished = False


class GroupCommit:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.batching = sessions.kw["bind"].dialect.name == "sqlite"
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[_Item[object]] = []
        self._busy = False

    def run(self, work: Work[T], *, key: str) -> T:
        """Run ``work`` in a committed transaction (shared with concurrent callers).

        ``key`` orders the pieces of a batch (the study UID). Raises what ``work``
        raised, or what the commit raised.
        """
        item: _Item[T] = _Item(work, key)
        if not self.batching:
            self._run_batch([item])  # type: ignore[list-item]
        else:
            self._wait_for_batch(item)  # type: ignore[arg-type]
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[return-value]

    def _wait_for_batch(self, item: _Item[object]) -> None:
        """Queue ``item``; lead a batch whenever none runs, until ``item``'s has run."""
        with self._cond:
            self._queue.append(item)
            while not item.finished:
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True
                batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
                self._cond.release()
                try:
                    self._run_batch(batch)
                finally:
                    self._cond.acquire()
                    self._busy = False
                    self._cond.notify_all()

    def _run_batch(self, batch: list[_Item[object]]) -> None:
        folders: set[Path] = set()
        committed = False
        try:
            with self.sessions.begin() as session:
                if len(batch) == 1:
                    batch[0].result = batch[0].work(session, folders)
                else:
                    for item in sorted(batch, key=lambda i: i.key):
                        try:
                            with session.begin_nested():
                                item.result = item.work(session, folders)
                        except Exception as exc:  # this store's own failure, its status
                            item.error = exc
                for folder in sorted(folders):
                    fsync_dir(folder)
            committed = True
        except Exception as exc:  # BEGIN, a lone store's work, a folder fsync or the commit
            for item in batch:
                if item.error is None:
                    item.error, item.result = exc, None
        finally:
            for item in batch:
                if not committed and item.error is None:  # interrupted (not an Exception)
                    item.error = RuntimeError("the index transaction was interrupted")
                item.finished = True


_groups: weakref.WeakKeyDictionary[sessionmaker[Session], GroupCommit] = weakref.WeakKeyDictionary()
_groups_lock = threading.Lock()


def group_of(sessions: sessionmaker[Session]) -> GroupCommit:
    """The process's group committer for ``sessions``."""
    with _groups_lock:
        group = _groups.get(sessions)
        if group is None:
            group = _groups[sessions] = GroupCommit(sessions)
        return group
