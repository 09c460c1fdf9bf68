"""``[database]`` of config.toml: SQLite (the embedded default) or a PostgreSQL server.

::

    [database]
    url = "sqlite:///data/ainode.sqlite3"          # relative to the config file
    # url = "postgresql+psycopg://ainode@db.hospital.local:5432/ainode"
    # password_file = "/etc/ainode/db-password"    # or AINODE_DATABASE_PASSWORD

A password written into the URL is refused: it would end up in logs, in
``ainode status`` and in the config file everyone can read.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from core.config import DatabaseConfig
from core.config_rules import ConfigError, existing_file
from core.tomltable import Table

__all__ = ["parse_database"]

_POSTGRES = ("postgresql", "postgresql+psycopg")


def parse_database(table: Table, base: Path, default_sqlite: Path) -> DatabaseConfig:
    url = table.string("url", "")
    password_file = existing_file(table, "password_file", base, required=False)
    table.finish()
    if not url:
        return DatabaseConfig(url=f"sqlite:///{default_sqlite}", password_file=password_file)
    key = table.key("url")
    parts = urlsplit(url)
    if parts.scheme in ("sqlite", "sqlite+pysqlite"):
        path = Path(url.split(":///", 1)[1]) if ":///" in url else None
        if path is None or not str(path):
            raise ConfigError(f'{key}: must look like "sqlite:///data/ainode.sqlite3" ({url!r})')
        path = path if path.is_absolute() else base / path
        if not path.parent.is_dir():
            raise ConfigError(f"{key}: the folder that holds {path} must exist")
        return DatabaseConfig(url=f"sqlite:///{path}", password_file=password_file)
    if parts.scheme not in _POSTGRES:
        raise ConfigError(
            f'{key}: must start with "sqlite:///" or "postgresql+psycopg://" (got {parts.scheme!r})'
        )
    if parts.password is not None:
        raise ConfigError(
            f"{key}: must not hold a password: put it in [database] password_file "
            "or the AINODE_DATABASE_PASSWORD environment variable"
        )
    if not parts.hostname or not parts.username or parts.path in ("", "/"):
        raise ConfigError(
            f"{key}: must name user, host and database, e.g. "
            f'"postgresql+psycopg://ainode@db.example:5432/ainode" (got {url!r})'
        )
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        raise ConfigError(f"{key}: the port must be a number (got {url!r})") from None
    return DatabaseConfig(
        url="postgresql+psycopg" + url[len(parts.scheme) :], password_file=password_file
    )
