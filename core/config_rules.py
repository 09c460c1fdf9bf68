"""Helpers shared by the parts of the config parser: the error, tables, names, text."""

from __future__ import annotations

import re
from pathlib import Path

from core.tomltable import Table

__all__ = [
    "NAME_RE",
    "ConfigError",
    "array_of_tables",
    "config_table",
    "existing_file",
    "short_text",
    "validate_ae_title",
]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or breaks a rule."""


def config_table(data: object, name: str) -> Table:
    """A table of config.toml: its errors are ConfigError."""
    return Table(data, name, ConfigError)


def array_of_tables(raw: object, name: str) -> list[Table]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"[[{name}]]: must be an array of tables")
    return [config_table(item, f"[[{name}]] #{i + 1}") for i, item in enumerate(raw)]


def short_text(table: Table, key: str, limit: int) -> str:
    value = table.string(key, "")
    if len(value) > limit or "\\" in value:
        raise ConfigError(f"{table.key(key)}: at most {limit} characters, no backslash")
    return value


def validate_ae_title(value: object, key: str) -> str:
    """Return a valid AE title or raise :class:`ConfigError` naming ``key``.

    PS3.5 6.2: at most 16 characters of the default repertoire, no backslash,
    no control characters, not only spaces.
    """
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a string (got {type(value).__name__})")
    if len(value) > 16:
        raise ConfigError(f"{key}: must be at most 16 characters (got {len(value)})")
    if "\\" in value:
        raise ConfigError(f"{key}: must not contain a backslash")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ConfigError(f"{key}: must not contain control characters")
    if any(ord(c) > 0x7E for c in value):
        raise ConfigError(f"{key}: must use ASCII characters only")
    if not value.strip():
        raise ConfigError(f"{key}: must not be empty or only spaces")
    return value.strip()


def existing_file(table: Table, key: str, base: Path, *, required: bool) -> Path | None:
    """A key naming a readable file, relative to the config file's folder; None when absent."""
    if not table.has(key):
        if required:
            raise table.fail(key, "is required")
        return None
    path = Path(table.required_string(key)).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise table.fail(key, f"{path} is not a file")
    try:
        path.open("rb").close()
    except OSError as exc:
        raise table.fail(key, f"{path} cannot be read: {exc.strerror}") from None
    return path
