"""Two dialects, one schema: migrations, schema checks, concurrency, and no password in sight."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select, text

from core.config import DatabaseConfig
from core.config_file import ConfigError, load_config
from storage.db import DatabaseError, describe, ensure_schema, migrate, open_engine
from storage.models import Base, Instance, Study
from tests.pg import PostgresServer
from tests.storage.stored import store


def test_migrations_match_the_models_on_postgresql(postgres: PostgresServer) -> None:
    engine = open_engine(DatabaseConfig(url=postgres.new_database()), Path("unused"))
    migrate(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        # The queue's uniqueness holds only while a job waits, on both dialects.
        index = conn.execute(
            text("SELECT indexdef FROM pg_indexes WHERE indexname = 'uq_jobs_queueing_lock_todo'")
        ).scalar_one()
    engine.dispose()
    assert diff == []
    assert "WHERE" in index and "'todo'" in index


def test_an_empty_database_is_created_and_a_stale_one_refused(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    for db in (DatabaseConfig(url=postgres.new_database()), None):
        engine = open_engine(db, tmp_path / "a.sqlite3")
        ensure_schema(engine)  # empty: created
        ensure_schema(engine)  # current: nothing to do
        engine.dispose()
        stale = open_engine(
            DatabaseConfig(url=postgres.new_database()) if db else None, tmp_path / "b.sqlite3"
        )
        migrate(stale, "0004")  # what an older ainode left
        with pytest.raises(DatabaseError, match=r"older than this ainode's .*`ainode db upgrade`"):
            ensure_schema(stale)
        migrate(stale)
        ensure_schema(stale)
        stale.dispose()
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
        with pytest.raises(DatabaseError, match=r"made by a newer ainode, or is not ainode's"):
            ensure_schema(engine)
        engine.dispose()


def test_unreachable_server_names_host_and_port(tmp_path: Path) -> None:
    from tests.peers import free_port

    port = free_port()  # nothing listens there
    engine = open_engine(
        DatabaseConfig(url=f"postgresql+psycopg://ainode@127.0.0.1:{port}/ainode"), tmp_path
    )
    with pytest.raises(DatabaseError, match=rf"PostgreSQL ainode@127.0.0.1:{port}/ainode"):
        ensure_schema(engine)


def test_password_comes_from_a_file_and_never_shows(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with postgres.admin() as conn:
        conn.execute("CREATE ROLE ainode LOGIN PASSWORD 's3cret-Pw'")
        conn.execute("CREATE DATABASE owned OWNER ainode")
    # Trust on loopback would let any password in: require one for this role.
    hba = postgres.data / "pg_hba.conf"
    hba.write_text("host all ainode 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    with postgres.admin() as conn:
        conn.execute("SELECT pg_reload_conf()")
    url = f"postgresql+psycopg://ainode@127.0.0.1:{postgres.port}/owned"
    secret = tmp_path / "password"
    secret.write_text("s3cret-Pw\n")
    engine = open_engine(DatabaseConfig(url=url, password_file=secret), tmp_path)
    ensure_schema(engine)
    assert "s3cret" not in describe(engine) and "s3cret" not in repr(engine.url)
    engine.dispose()
    monkeypatch.setenv("AINODE_DATABASE_PASSWORD", "wrong")
    bad = open_engine(DatabaseConfig(url=url), tmp_path)
    with pytest.raises(DatabaseError, match=r"password authentication failed") as err:
        ensure_schema(bad)
    bad.dispose()
    assert "wrong" not in str(err.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql+psycopg://u:pw@h:5432/db", "must not hold a password"),
        ("mysql://u@h/db", 'must start with "sqlite:///" or "postgresql+psycopg://"'),
        ("postgresql+psycopg://h:5432/db", "must name user, host and database"),
        ("postgresql+psycopg://u@h:port/db", "the port must be a number"),
    ],
)
def test_database_url_is_validated(write_config, url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"\[database\] url: " + message.replace("+", r"\+")):
        load_config(write_config(database={"url": url}))


def test_concurrent_stores_into_one_new_study_make_one_study(sessions) -> None:
    """Two associations storing the first instances of a study at once (READ COMMITTED on
    PostgreSQL): the study row is made once, every instance is indexed."""
    errors: list[BaseException] = []

    def sender(n: int) -> None:
        try:
            for i in range(10):
                store(sessions, f"1.9.{n}.{i}", study="1.9", series=f"1.9.{n}")
        except BaseException as exc:  # collected and re-raised by the test
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(Study)) == 1
        assert s.scalar(select(func.count()).select_from(Instance)) == 40
        assert s.scalar(select(Study.instance_count)) == 40


def test_a_singleton_runs_on_one_node_at_a_time(postgres: PostgresServer) -> None:
    from storage.db import make_sessionmaker
    from storage.dialect import only_one

    url = postgres.new_database()
    engines = [open_engine(DatabaseConfig(url=url), Path("unused")) for _ in range(2)]
    one, two = (make_sessionmaker(e) for e in engines)
    with only_one(one, "delivery pacs") as first:
        with only_one(two, "delivery pacs") as second, only_one(two, "delivery vna") as other:
            assert (first, second, other) == (True, False, True)
    with only_one(two, "delivery pacs") as again:
        assert again  # released when the first node's run ended
    for engine in engines:
        engine.dispose()


def test_concurrent_completion_runs_queue_each_study_once(sessions) -> None:
    """Two nodes' completion schedules fire at once: each quiet study is closed and queued once."""
    from datetime import timedelta

    from storage.completion import PipelineTarget, complete_due
    from storage.models import Job
    from tests.storage.stored import T0

    for n in range(5):
        store(sessions, f"2.{n}.1", study=f"2.{n}", series=f"2.{n}.9")
    target = PipelineTarget(name="p", priority=100, max_attempts=3)
    errors: list[BaseException] = []

    def node() -> None:
        try:
            with sessions.begin() as s:
                complete_due(
                    s, level="study", quiet_s=1, now=T0 + timedelta(seconds=5), pipelines=[target]
                )
        except BaseException as exc:  # collected and re-raised by the test
            errors.append(exc)

    threads = [threading.Thread(target=node) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 5
        assert set(s.scalars(select(Study.completion_count))) == {1}
