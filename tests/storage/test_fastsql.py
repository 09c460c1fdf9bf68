"""storage.fastsql: index statements on the DBAPI cursor store what SQLAlchemy stores.

The tests taking ``sessions`` run on SQLite and on a real PostgreSQL server.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest
import sqlalchemy.exc
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, sessionmaker

from core.config import DatabaseConfig
from storage import fastsql
from storage.db import create_sqlite_engine, make_sessionmaker, migrate, open_engine
from storage.fastsql import execute, execute_all
from storage.models import Instance, Series, Study
from tests.pg import PostgresServer

_studies = cast(Table, Study.__table__)
_series = cast(Table, Series.__table__)
_instances = cast(Table, Instance.__table__)

_INSERT_STUDY = insert(_studies).returning(_studies.c.id)
_INSERT_SERIES = insert(_series).returning(_series.c.id)
_INSERT_INSTANCE = insert(_instances)
_TOUCH_SERIES = (
    update(_series)
    .where(_series.c.id == bindparam("row_id"))
    .values(instance_count=_series.c.instance_count + bindparam("added"), state="complete")
)
_FIND = select(_instances.c.id, _instances.c.path).where(
    _instances.c.sop_instance_uid == bindparam("uid")
)
_RECEIVED_AT = select(_instances.c.received_at)  # a UTC datetime: needs result processing

WHEN = datetime(2026, 11, 28, 9, 41, 7, 123456, tzinfo=UTC)


def _tree(session: Session, *, via_fastsql: bool, n: int) -> int:
    """A study, a series and ``n`` instances; the series' row id."""

    def run(stmt, params):  # type: ignore[no-untyped-def]
        conn = session.connection()
        return execute(conn, stmt, params) if via_fastsql else conn.execute(stmt, params)

    tag = "fast" if via_fastsql else "core"
    study = run(
        _INSERT_STUDY,
        {
            "study_instance_uid": f"1.2.{n}.{tag}",
            "first_received_at": WHEN,
            "last_received_at": WHEN,
            "modalities": "CT",
        },
    ).scalar_one()
    series = run(
        _INSERT_SERIES,
        {
            "series_instance_uid": f"1.2.{n}.{tag}.1",
            "study_id": study,
            "first_received_at": WHEN,
            "last_received_at": WHEN,
        },
    ).scalar_one()
    for k in range(n):
        run(
            _INSERT_INSTANCE,
            {
                "sop_instance_uid": f"1.2.{n}.{tag}.1.{k}",
                "series_id": series,
                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                "instance_number": str(k + 1),
                "size_bytes": 1000 + k,
                "path": f"/data/{tag}/{k}.dcm",
                "calling_ae_title": "CT1",
                "received_at": WHEN + timedelta(microseconds=k),
            },
        )
    run(_TOUCH_SERIES, {"row_id": series, "added": n})
    return int(series)


_TAGGED = {"studies": "study_instance_uid", "series": "series_instance_uid", "instances": "path"}


def _raw_rows(session: Session, table: str, tag: str) -> list[tuple[object, ...]]:
    """A table's rows of one writer as stored (no type processing), ids left out."""
    rows = session.execute(
        text(f"SELECT * FROM {table} WHERE {_TAGGED[table]} LIKE :tag ORDER BY id"),
        {"tag": f"%{tag}%"},
    ).all()
    return [
        tuple(
            v.replace(tag, "*") if isinstance(v, str) else v
            for k, v in row._asdict().items()
            if k not in ("id", "series_id", "study_id")
        )
        for row in rows
    ]


def test_rows_written_on_the_cursor_are_those_sqlalchemy_writes(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as s:
        _tree(s, via_fastsql=False, n=3)
        _tree(s, via_fastsql=True, n=3)
    with sessions.begin() as s:
        for table in ("studies", "series", "instances"):
            core, fast = _raw_rows(s, table, "core"), _raw_rows(s, table, "fast")
            assert core and core == fast, table
        # Read back through the ORM: aware UTC datetimes, counts, defaults.
        series = s.scalars(select(Series).where(Series.series_instance_uid.like("%fast%"))).one()
        assert (series.instance_count, series.state) == (3, "complete")
        assert series.first_received_at == WHEN
        got = s.scalars(select(Instance).where(Instance.path == "/data/fast/2.dcm")).one()
        assert got.received_at == WHEN + timedelta(microseconds=2)


def test_rows_come_back_with_attribute_access_and_sqlalchemy_semantics(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as s:
        _tree(s, via_fastsql=True, n=2)
        conn = s.connection()
        row = execute(conn, _FIND, {"uid": "1.2.2.fast.1.1"}).first()
        assert row is not None and row.path == "/data/fast/1.dcm" and row.id > 0
        assert execute(conn, _FIND, {"uid": "1.2.2.fast.1.1"}).one().path == row.path
        assert execute(conn, _FIND, {"uid": "nope"}).first() is None
        with pytest.raises(sqlalchemy.exc.NoResultFound):
            execute(conn, _FIND, {"uid": "nope"}).one()


@pytest.fixture
def sqlite_sessions(tmp_path: Path) -> sessionmaker[Session]:
    engine = create_sqlite_engine(tmp_path / "index.db")
    migrate(engine)
    return make_sessionmaker(engine)


def test_statements_it_cannot_run_exactly_are_refused(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    with sqlite_sessions.begin() as s:
        conn = s.connection()
        # Results that need type processing (UTC datetimes) would come back as strings.
        with pytest.raises(ValueError, match="needs result processing"):
            execute(conn, _RECEIVED_AT, {})
        # A required parameter left out is an error, not a NULL.
        with pytest.raises(KeyError):
            execute(conn, _FIND, {})


def test_database_errors_are_raised_as_sqlalchemy_raises_them(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    with sqlite_sessions.begin() as s:
        _tree(s, via_fastsql=True, n=1)
    with sqlite_sessions.begin() as s, pytest.raises(sqlalchemy.exc.IntegrityError):
        _tree(s, via_fastsql=True, n=1)  # the same UIDs again: a unique constraint
    with sqlite_sessions.begin() as s:
        s.execute(text("DROP TABLE instances"))
    with sqlite_sessions.begin() as s, pytest.raises(sqlalchemy.exc.OperationalError) as caught:
        execute(s.connection(), _FIND, {"uid": "1"})
    assert "no such table: instances" in str(caught.value.orig)


def test_python_side_defaults_are_filled_in_or_refused(tmp_path: Path) -> None:
    engine = create_sqlite_engine(tmp_path / "toy.db")
    meta = MetaData()
    toy = Table(
        "toy",
        meta,
        Column("id", Integer, primary_key=True),
        Column("kind", String(8), default="plain"),
        Column("stamp", Integer, default=lambda: 5),
        Column("touched", Integer, onupdate=lambda: 7),
    )
    meta.create_all(engine)
    with engine.begin() as conn:
        execute(conn, insert(toy).values(stamp=1), {"id": 1})  # "kind": its constant default
        assert conn.execute(select(toy.c.kind, toy.c.stamp)).one() == ("plain", 1)
        # A default or onupdate function would be called once and its value reused.
        with pytest.raises(ValueError, match="needs a value or a constant default"):
            execute(conn, insert(toy), {"id": 2})
        with pytest.raises(ValueError, match="needs a value or a constant default"):
            execute(conn, update(toy).where(toy.c.id == bindparam("row")), {"row": 1, "kind": "x"})
    engine.dispose()


_COUNT = select(_series.c.instance_count).where(_series.c.id == bindparam("row_id"))


@pytest.mark.parametrize("pipeline", [True, False], ids=["pipeline", "libpq-without-pipeline"])
def test_statements_sent_together_run_in_order_and_return_their_rows(
    sessions: sessionmaker[Session], pipeline: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A libpq older than 14 has no pipeline mode: the statements then go one by one.
    monkeypatch.setattr(fastsql, "pipeline_supported", lambda: pipeline)
    with sessions.begin() as s:
        series = _tree(s, via_fastsql=True, n=1)
        conn = s.connection()
        before, _, after, missing, found = execute_all(
            conn,
            [
                (_COUNT, {"row_id": series}),
                (_TOUCH_SERIES, {"row_id": series, "added": 4}),
                (_COUNT, {"row_id": series}),
                (_FIND, {"uid": "nope"}),
                (_FIND, {"uid": "1.2.1.fast.1.0"}),
            ],
        )
        assert (before.scalar_one(), after.scalar_one()) == (1, 5)
        assert missing.first() is None and found.one().path == "/data/fast/0.dcm"
        assert execute_all(conn, []) == []


def test_the_first_failing_statement_stops_the_rest_and_is_raised_as_sqlalchemy_raises_it(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as s:
        series = _tree(s, via_fastsql=True, n=1)
    with sessions() as s:
        conn = s.connection()
        duplicate = {
            "sop_instance_uid": "1.2.1.fast.1.0",  # already indexed: a unique constraint
            "series_id": series,
            "sop_class_uid": "1.2",
            "transfer_syntax_uid": "1.2",
            "size_bytes": 1,
            "path": "/x",
            "calling_ae_title": "CT1",
            "received_at": WHEN,
        }
        with pytest.raises(sqlalchemy.exc.IntegrityError) as caught:
            execute_all(
                conn,
                [
                    (_TOUCH_SERIES, {"row_id": series, "added": 10}),
                    (_INSERT_INSTANCE, duplicate),
                    (_TOUCH_SERIES, {"row_id": series, "added": 100}),
                ],
            )
        assert "sop_instance_uid" in str(caught.value.orig)
        s.rollback()
        # After the failure the transaction is rolled back: not one of them counted.
        assert execute(s.connection(), _COUNT, {"row_id": series}).scalar_one() == 1


def test_a_lost_server_connection_is_invalidated_and_the_next_session_reconnects(
    postgres: PostgresServer,
) -> None:
    engine = open_engine(DatabaseConfig(url=postgres.new_database()), Path("unused"))
    migrate(engine)
    sessions = make_sessionmaker(engine)
    try:
        with sessions() as s:
            conn = s.connection()
            pid = s.execute(text("SELECT pg_backend_pid()")).scalar_one()
            with postgres.admin() as admin:  # the server ends this connection
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(sqlalchemy.exc.OperationalError):
                execute_all(conn, [(_FIND, {"uid": "1"}), (_FIND, {"uid": "2"})])
            assert conn.invalidated
        with sessions.begin() as s:
            assert execute(s.connection(), _FIND, {"uid": "1"}).first() is None
    finally:
        engine.dispose()
