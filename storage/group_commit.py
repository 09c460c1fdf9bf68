"""Group commit: concurrent index transactions share one database transaction.

Each C-STORE writes its file, fsyncs it, links it into its series folder and
fsyncs that folder on its own thread, then hands its index work to
:func:`run`. Whoever finds no batch running leads: it takes every piece of
work waiting (its own included), runs them in one transaction and commits
once (one WAL fsync on SQLite); the others wait for that commit. So N
instances arriving together cost one commit instead of N, while each keeps its own
outcome: if a piece of work raises, the whole transaction rolls back and each
piece runs again in a transaction of its own — the one that raised gets its
exception back, the others commit; a commit that fails gives every piece not
committed yet the commit's exception. A store is answered only after the
commit that holds its row.

One instance per process and sessionmaker (:func:`group_of`). On SQLite batches
run one at a time, so they share one connection, kept open between them: a
session per batch on a pooled connection cost a checkout, a check-in and their
events every time, about a sixth of a small instance's Python (the node's
processes are spawned, never forked, so no connection crosses a fork).

On SQLite every write transaction already takes the database's one write lock
(BEGIN IMMEDIATE), so a batch adds no lock a single store would not hold: one
queue for all stores. On PostgreSQL stores of different studies run side by
side, and a batch of several studies would hold their rows at once — a deadlock
risk with other transactions that touch several studies — so there each study
has a queue of its own (``key``, the Study Instance UID): stores of one study
take that study's lock one after the other anyway (``storage.index.locate``),
and now share a transaction and its commit while stores of other studies run
beside them, each batch on a pooled connection of its own.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from sqlalchemy import Connection
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["GroupCommit", "Work", "group_of"]

T = TypeVar("T")

#: A piece of index work: runs in the batch's transaction. It may run twice:
#: again, alone, after a batch it was in rolled back.
Work = Callable[[Session], T]

_MAX_BATCH = 64


class _Item(Generic[T]):
    __slots__ = ("committed", "error", "finished", "key", "result", "work")

    def __init__(self, work: Work[T], key: str) -> None:
        self.work, self.key = work, key
        self.result: T | None = None
        self.error: BaseException | None = None
        self.committed = False  # its transaction committed (result set)
        self.finished = False


class _PieceFailed(Exception):
    """A piece of work raised ``error``: its transaction was rolled back."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _Lane:
    """The stores waiting to share a transaction, and whether a batch of them runs."""

    __slots__ = ("busy", "queue")

    def __init__(self) -> None:
        self.queue: list[_Item[object]] = []
        self.busy = False


class GroupCommit:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        # SQLite: one lane for every key (one writer at a time, on one kept connection);
        # PostgreSQL: a lane per key.
        self.one_lane = sessions.kw["bind"].dialect.name == "sqlite"
        self._cond = threading.Condition(threading.Lock())
        self._lanes: dict[str, _Lane] = {}
        self._connection: Connection | None = None  # SQLite's batches' (one at a time)

    def run(self, work: Work[T], *, key: str) -> T:
        """Run ``work`` in a committed transaction (shared with concurrent callers).

        ``key`` (the study UID) orders the pieces of a batch and, on PostgreSQL, says
        which stores may share one. Raises what ``work`` raised, or what the commit
        raised.
        """
        item: _Item[T] = _Item(work, key)
        self._wait_for_batch(item, "" if self.one_lane else key)  # type: ignore[arg-type]
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[return-value]

    def waiting(self) -> int:
        """Stores queued for a batch (not yet in one)."""
        with self._cond:
            return sum(len(lane.queue) for lane in self._lanes.values())

    def _wait_for_batch(self, item: _Item[object], lane_key: str) -> None:
        """Queue ``item`` in its lane; lead a batch of that lane whenever none runs,
        until ``item``'s has run."""
        with self._cond:
            lane = self._lanes.get(lane_key)
            if lane is None:
                lane = self._lanes[lane_key] = _Lane()
            lane.queue.append(item)
            try:
                while not item.finished:
                    if lane.busy:
                        self._cond.wait()
                        continue
                    lane.busy = True
                    batch, lane.queue = lane.queue[:_MAX_BATCH], lane.queue[_MAX_BATCH:]
                    self._cond.release()
                    try:
                        self._run_batch(batch)
                    finally:
                        self._cond.acquire()
                        lane.busy = False
                        self._cond.notify_all()
            finally:
                # The last one out forgets the lane (a lane per study on PostgreSQL).
                if not lane.busy and not lane.queue and self._lanes.get(lane_key) is lane:
                    del self._lanes[lane_key]

    def _run_batch(self, batch: list[_Item[object]]) -> None:
        """Commit ``batch`` in one transaction. If a piece raises, the transaction
        rolls back and each piece runs again in a transaction of its own, so each
        keeps its own outcome (failures are rare; a savepoint around every piece
        cost the leader ~0.1 ms each, every time)."""
        try:
            if len(batch) > 1:
                try:
                    self._commit(batch)
                except _PieceFailed:
                    pass  # nothing of the batch was committed: one by one
            for item in batch:
                if not item.committed:
                    try:
                        self._commit([item])
                    except _PieceFailed as failed:  # this store's own failure, its status
                        item.error = failed.error
        except Exception as exc:  # BEGIN or the commit: the ones not committed get it
            for item in batch:
                if not item.committed and item.error is None:
                    item.error = exc
        finally:
            for item in batch:
                if not item.committed and item.error is None:  # interrupted (not an Exception)
                    item.error = RuntimeError("the index transaction was interrupted")
                item.finished = True

    def _commit(self, items: list[_Item[object]]) -> None:
        """Run ``items`` in one transaction and commit it; then each has its result.

        Raises _PieceFailed (all rolled back) when a piece raises, or what BEGIN
        or the commit raised.
        """
        results: list[object] = []
        ordered = sorted(items, key=lambda i: i.key)
        with self._transaction() as session:
            for item in ordered:
                try:
                    results.append(item.work(session))
                except Exception as exc:
                    raise _PieceFailed(exc) from exc
        for item, result in zip(ordered, results, strict=True):
            item.result, item.committed = result, True

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        """A session in a transaction that commits when the block ends without an error.

        On SQLite it runs on the batches' own connection (opened again if it was
        invalidated); on PostgreSQL each batch gets a pooled one, as sessions do.
        """
        if not self.one_lane:
            with self.sessions.begin() as session:
                yield session
            return
        conn = self._connection
        if conn is None or conn.invalidated or conn.closed:
            conn = self._connection = self.sessions.kw["bind"].connect()
        try:
            with conn.begin():
                # Joins the connection's transaction: commit and rollback stay with it.
                session = Session(bind=conn, expire_on_commit=False)
                try:
                    yield session
                    session.flush()
                finally:
                    session.close()
        except BaseException:
            # A COMMIT that fails (a deferred constraint, a full disk) leaves SQLite's
            # transaction open while SQLAlchemy's has ended: the connection goes back to
            # the pool, which rolls it back, and the next batch takes a fresh one.
            self._connection = None
            conn.close()
            raise


_groups: weakref.WeakKeyDictionary[sessionmaker[Session], GroupCommit] = weakref.WeakKeyDictionary()
_groups_lock = threading.Lock()


def group_of(sessions: sessionmaker[Session]) -> GroupCommit:
    """The process's group committer for ``sessions``."""
    with _groups_lock:
        group = _groups.get(sessions)
        if group is None:
            group = _groups[sessions] = GroupCommit(sessions)
        return group
