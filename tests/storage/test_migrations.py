"""The migrations build exactly the schema the models describe (no drift either way)."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from storage.db import create_sqlite_engine, migrate
from storage.models import Base


def test_migrations_match_the_models(tmp_path: Path) -> None:
    engine = create_sqlite_engine(tmp_path / "db.sqlite3")
    migrate(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
