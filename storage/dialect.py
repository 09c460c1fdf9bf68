"""What differs between SQLite and PostgreSQL, in one place.

SQLite runs one writer at a time (every transaction is ``BEGIN IMMEDIATE``,
:mod:`storage.db`), so a read-then-write — look the study up, insert it if it
is new — can never interleave with another. PostgreSQL runs writers
concurrently under READ COMMITTED; :func:`serialize` gives such a sequence the
same guarantee for one key (a study, a job's queueing lock) with a
transaction-scoped advisory lock, while different keys go on in parallel.

Completion, which several nodes run on their schedules, serialises on a key of
its own; lease expiry takes only rows no other node has locked; a delivery run to one destination is
:func:`only_one` across all nodes, so a result is never sent twice at once.

The queue's claim is one statement on both: the candidate row is selected
``FOR UPDATE SKIP LOCKED`` (rendered on PostgreSQL, nothing on SQLite), so
concurrent workers on several hosts never wait on, or take, the same job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.base import Executable

__all__ = ["JobWaiter", "notify_job", "only_one", "serialize", "serialize_steps"]

logger = logging.getLogger(__name__)
_CHANNEL = "ainode_jobs"

_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
_TRY = text("SELECT pg_try_advisory_lock(hashtextextended(:key, 0))")
_UNLOCK = text("SELECT pg_advisory_unlock(hashtextextended(:key, 0))")


def serialize(session: Session, key: str) -> None:
    """Until this transaction ends, no other transaction serialising ``key`` runs past here."""
    for stmt, params in serialize_steps(session.get_bind().dialect.name, key):
        session.execute(stmt, params)


def serialize_steps(dialect_name: str, key: str) -> list[tuple[Executable, dict[str, str]]]:
    """:func:`serialize` as statements to run first (``storage.fastsql.execute_all``).

    For a caller that sends the lock and its first reads in one round trip: the
    server still runs each statement with a snapshot taken when it starts, so
    the reads after the lock see what the lock's previous holder committed.
    """
    return [(_LOCK, {"key": key})] if dialect_name == "postgresql" else []


@contextmanager
def only_one(sessions: sessionmaker[Session], key: str) -> Iterator[bool]:
    """Whether this process may run the singleton ``key`` now (a delivery run to one PACS).

    PostgreSQL: a session advisory lock, tried, held on its own connection until
    the block ends, so that of several nodes only one sends a destination's
    results at a time (the others skip this round). SQLite: always True — one
    node, whose scheduler runs in its main process only.
    """
    session = sessions()
    try:
        if session.get_bind().dialect.name != "postgresql":
            yield True
            return
        got = bool(session.execute(_TRY, {"key": key}).scalar())
        session.commit()  # the lock is the connection's, not the transaction's
        try:
            yield got
        finally:
            if got:
                session.execute(_UNLOCK, {"key": key})
                session.commit()
    finally:
        session.close()


def notify_job(session: Session, pipeline: str) -> None:
    """Wake idle workers when this transaction commits (PostgreSQL NOTIFY; SQLite: polling)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, :pipeline)"),
                        {"channel": _CHANNEL, "pipeline": pipeline})  # fmt: skip


class JobWaiter:
    """An idle worker's wait: woken by a queued job's NOTIFY, or at the latest after ``timeout``.

    On PostgreSQL it LISTENs on its own connection; if that connection fails the
    worker falls back to plain polling (said once in the log). On SQLite it
    sleeps: polling is the mechanism there.
    """

    def __init__(self, engine: Engine) -> None:
        self._conn: Any = None
        if engine.dialect.name != "postgresql":
            return
        import psycopg

        url = engine.url.set(drivername="postgresql")
        try:
            self._conn = psycopg.connect(
                url.render_as_string(hide_password=False), autocommit=True, connect_timeout=10
            )
            self._conn.execute(f"LISTEN {_CHANNEL}")
        except psycopg.Error as exc:
            logger.warning("no LISTEN connection (%s): workers poll instead", exc)
            self._conn = None

    def wait(self, timeout: float, stop: threading.Event) -> None:
        if self._conn is None:
            stop.wait(timeout)
            return
        import psycopg

        try:
            for _note in self._conn.notifies(timeout=timeout, stop_after=1):
                break
        except psycopg.Error as exc:
            logger.warning("LISTEN connection lost (%s): polling from now on", exc)
            self.close()
            stop.wait(timeout)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
