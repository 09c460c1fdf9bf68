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

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["only_one", "serialize"]

_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
_TRY = text("SELECT pg_try_advisory_lock(hashtextextended(:key, 0))")
_UNLOCK = text("SELECT pg_advisory_unlock(hashtextextended(:key, 0))")


def serialize(session: Session, key: str) -> None:
    """Until this transaction ends, no other transaction serialising ``key`` runs past here."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_LOCK, {"key": key})


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
