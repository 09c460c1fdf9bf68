"""Group commit: stores that arrive together share a transaction, each keeps its own outcome."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from storage.group_commit import GroupCommit


@pytest.fixture
def table(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    with sessions.begin() as s:
        s.execute(text("CREATE TABLE t (name TEXT PRIMARY KEY)"))
    return sessions


def _names(sessions: sessionmaker[Session]) -> set[str]:
    with sessions.begin() as s:
        return set(s.scalars(text("SELECT name FROM t")))


def _insert(name: str, fail: bool = False):  # type: ignore[no-untyped-def]
    def work(session: Session) -> str:
        session.execute(text("INSERT INTO t VALUES (:n)"), {"n": name})
        if fail:
            raise ValueError(f"{name} refused")
        return name

    return work


def _batch_behind_a_slow_one(group: GroupCommit, works: dict[str, object]) -> dict[str, object]:
    """Run ``works`` concurrently while a first, slow store of the same study holds the
    group: they wait, then go in one batch together."""
    release, entered = threading.Event(), threading.Event()
    out: dict[str, object] = {}

    def slow(session: Session) -> str:
        entered.set()
        release.wait(10)
        session.execute(text("INSERT INTO t VALUES ('slow')"))
        return "slow"

    def call(name: str, work) -> None:  # type: ignore[no-untyped-def]
        try:
            out[name] = group.run(work, key="1.2.3")  # one study: one lane everywhere
        except Exception as exc:
            out[name] = exc

    first = threading.Thread(target=call, args=("slow", slow))
    first.start()
    assert entered.wait(10)
    others = [threading.Thread(target=call, args=(n, w)) for n, w in works.items()]
    for t in others:
        t.start()
    deadline = time.monotonic() + 10
    while group.waiting() < len(works) and time.monotonic() < deadline:
        time.sleep(0.01)  # the others wait behind the slow one
    release.set()
    for t in [first, *others]:
        t.join(10)
    return out


def test_one_failure_in_a_batch_is_its_own(table: sessionmaker[Session]) -> None:
    group = GroupCommit(table)
    out = _batch_behind_a_slow_one(
        group, {"a": _insert("a"), "b": _insert("b", fail=True), "c": _insert("c")}
    )
    assert out["slow"] == "slow" and out["a"] == "a" and out["c"] == "c"
    assert isinstance(out["b"], ValueError) and str(out["b"]) == "b refused"
    assert _names(table) == {"slow", "a", "c"}  # b's batch rolled back; a and c again, alone


def test_a_batch_commits_once(table: sessionmaker[Session]) -> None:
    group = GroupCommit(table)
    commits: list[object] = []

    def count(conn: object) -> None:
        commits.append(conn)

    engine = table.kw["bind"]
    event.listen(engine, "commit", count)
    try:
        out = _batch_behind_a_slow_one(group, {n: _insert(n) for n in "abc"})
    finally:
        event.remove(engine, "commit", count)
    assert out == {"slow": "slow", "a": "a", "b": "b", "c": "c"}
    assert len(commits) == 2  # the slow one's, then one for a, b and c
    assert _names(table) == {"slow", "a", "b", "c"}


def test_a_failed_commit_fails_every_store_of_the_batch(table: sessionmaker[Session]) -> None:
    group = GroupCommit(table)
    with table.begin() as s:  # a reference SQLite checks only at COMMIT
        s.execute(
            text("CREATE TABLE r (name TEXT REFERENCES t (name) DEFERRABLE INITIALLY DEFERRED)")
        )

    def breaks_the_batch(session: Session) -> str:
        session.execute(text("INSERT INTO t VALUES ('x')"))
        session.execute(text("INSERT INTO r VALUES ('nowhere')"))  # every statement succeeds
        return "x"

    out = _batch_behind_a_slow_one(group, {"x": breaks_the_batch, "y": _insert("y")})
    assert out["slow"] == "slow"
    assert isinstance(out["x"], IntegrityError) and isinstance(out["y"], IntegrityError)
    assert "foreign key" in str(out["x"]).lower()
    assert _names(table) == {"slow"}  # nothing of the failed batch was committed
    assert group.run(_insert("z"), key="z") == "z"  # nor is the database left locked
    assert _names(table) == {"slow", "z"}


def test_other_studies_wait_for_a_batch_only_on_sqlite(table: sessionmaker[Session]) -> None:
    """SQLite: one writer, one lane for every study. PostgreSQL: a lane per study, so a
    store of another study commits while a batch of the first one is still open."""
    dialect = table.kw["bind"].dialect.name
    group = GroupCommit(table)
    assert group.one_lane is (dialect == "sqlite")
    release, entered, done = threading.Event(), threading.Event(), threading.Event()

    def slow(session: Session) -> str:
        entered.set()
        release.wait(10)
        session.execute(text("INSERT INTO t VALUES ('slow')"))
        return "slow"

    def other() -> None:
        group.run(_insert("other"), key="1.2.4")
        done.set()

    first = threading.Thread(target=lambda: group.run(slow, key="1.2.3"))
    first.start()
    assert entered.wait(10)
    second = threading.Thread(target=other)
    second.start()
    finished_while_held = done.wait(5 if dialect == "postgresql" else 0.5)
    release.set()
    first.join(10)
    second.join(10)
    assert finished_while_held is (dialect == "postgresql")
    assert _names(table) == {"slow", "other"}
    assert group.waiting() == 0 and group._lanes == {}  # lanes forgotten once empty


def test_a_lone_store_runs_without_a_savepoint_and_raises_its_error(
    table: sessionmaker[Session],
) -> None:
    group = GroupCommit(table)
    assert group.run(_insert("one"), key="1") == "one"
    with pytest.raises(ValueError, match="two refused"):
        group.run(_insert("two", fail=True), key="2")
    assert _names(table) == {"one"}
