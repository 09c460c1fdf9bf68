"""The database engine: SQLite (embedded default) or PostgreSQL, and the schema's state.

SQLite: WAL, full fsync, and writers serialised by BEGIN IMMEDIATE. One engine
per process, created at start-up and shared by its threads. Every transaction
starts with ``BEGIN IMMEDIATE`` so that a read-then-write can never fail half
way with "database is locked" (SQLite's deferred transactions upgrade their lock
lazily); writers queue on the busy timeout instead.

PostgreSQL (psycopg 3): READ COMMITTED; where SQLite's one writer made a
read-then-write safe, :mod:`storage.dialect` takes a lock of the same scope.
The password comes from ``[database] password_file`` or
``AINODE_DATABASE_PASSWORD``, never from the URL, and never appears in what
:func:`describe` returns.

The schema: :func:`ensure_schema` creates it in an empty database and refuses
a database whose schema is older or newer than this code, naming the command
that fixes it; :func:`migrate` (``ainode db upgrade``) brings it up to date.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from core.config import DatabaseConfig, NodeConfig

__all__ = [
    "BUSY_TIMEOUT_S",
    "DatabaseError",
    "create_sqlite_engine",
    "describe",
    "ensure_schema",
    "make_sessionmaker",
    "migrate",
    "node_engine",
    "open_engine",
    "schema_revisions",
]

BUSY_TIMEOUT_S = 30.0
_MIGRATIONS = Path(__file__).parent / "migrations"


def create_sqlite_engine(path: Path) -> Engine:
    """Return an engine on the SQLite file at ``path`` (created if missing)."""
    engine = create_engine(
        f"sqlite+pysqlite:///{path}",
        connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
        pool_size=32,
        max_overflow=32,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN, not the driver.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced on every commit, so an acknowledged
        # instance survives power loss, not only a killed process.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Straight on the DBAPI connection (through exec_driver_sql: ~30 µs more per
        # transaction), its errors raised as SQLAlchemy raises them.
        try:
            conn.connection.driver_connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise DBAPIError.instance("BEGIN IMMEDIATE", (), exc, sqlite3.Error) from exc

    return engine


class DatabaseError(Exception):
    """The database cannot be used: unreachable, or its schema does not fit this code."""


def open_engine(db: DatabaseConfig | None, sqlite_default: Path) -> Engine:
    """The engine ``[database]`` names (``None``: SQLite at ``sqlite_default``)."""
    if db is None:
        return create_sqlite_engine(sqlite_default)
    if db.sqlite_path is not None:
        return create_sqlite_engine(db.sqlite_path)
    url = make_url(db.url)
    password = os.environ.get("AINODE_DATABASE_PASSWORD")
    if db.password_file is not None:
        try:
            password = db.password_file.read_text().strip()
        except OSError as exc:
            raise DatabaseError(
                f"[database] password_file: cannot read {db.password_file}: {exc.strerror}"
            ) from None
    if password:
        url = url.set(password=password)
    return create_engine(
        url,
        pool_size=8,
        max_overflow=24,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 10, "application_name": "ainode"},
    )


def node_engine(cfg: NodeConfig) -> Engine:
    """The engine of a node's ``[database]`` (SQLite in its data folder by default)."""
    return open_engine(cfg.database, cfg.storage.database_path)


def describe(engine: Engine) -> str:
    """Where the database is, for logs and status: never the password."""
    if engine.dialect.name == "sqlite":
        return f"SQLite {engine.url.database}"
    url = engine.url
    return f"PostgreSQL {url.username}@{url.host}:{url.port or 5432}/{url.database}"


def _script() -> ScriptDirectory:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    return ScriptDirectory.from_config(cfg)


def schema_revisions(engine: Engine) -> tuple[str | None, str, bool]:
    """(the database's revision or None, this code's newest, whether the database is empty).

    Raises
    ------
    DatabaseError
        The server cannot be reached (naming host and port) or refuses the login.
    """
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
            empty = not inspect(conn).get_table_names()
    except OperationalError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseError(f"cannot use the database ({describe(engine)}): {first}") from None
    head = _script().get_current_head()
    assert head is not None
    return current, head, empty


def ensure_schema(engine: Engine) -> None:
    """Create the schema in an empty database; refuse one older or newer than this code."""
    current, head, empty = schema_revisions(engine)
    if current == head:
        return
    if current is None and empty:
        migrate(engine)
        return
    known = {rev.revision for rev in _script().walk_revisions()}
    if current in known:
        raise DatabaseError(
            f"the database schema ({describe(engine)}) is at revision {current}, older than "
            f"this ainode's {head}: run `ainode db upgrade` (back the database up first)"
        )
    raise DatabaseError(
        f"the database schema ({describe(engine)}) is at revision {current or 'none'}, which "
        f"this ainode (newest {head}) does not know: it was made by a newer ainode, or is not "
        "ainode's; upgrade ainode, or point [database] url at ainode's own database"
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to the newest Alembic revision, or to ``revision`` (idempotent)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    with engine.connect() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)
