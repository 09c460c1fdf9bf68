"""The storage suites run on both databases: SQLite (embedded) and a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.config import DatabaseConfig
from storage.db import make_sessionmaker, migrate, open_engine


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").new_database()
    engine = open_engine(
        DatabaseConfig(url=url) if url else None, sqlite_default=tmp_path / "test.sqlite3"
    )
    migrate(engine)
    yield make_sessionmaker(engine)
    engine.dispose()
