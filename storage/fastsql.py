"""Core statements run straight on the DBAPI connection, for the C-STORE path.

Each C-STORE runs the same few index statements (``storage.index``). Through
SQLAlchemy each execution costs 40-75 µs of Python for 2-3 µs in SQLite
itself (an execution context, parameter processing, a result object), about a
fifth of a small instance's whole store. :func:`execute` runs such a statement
with SQLAlchemy's own compiled SQL on the session's DBAPI connection (sqlite3
or psycopg), inside the same transaction:

- compiled once per statement, dialect and set of parameter names;
- every parameter converted by its type's own bind processor (an aware UTC
  datetime is stored exactly as SQLAlchemy stores it), literal values taken
  from the statement, constant Python-side column defaults (an INSERT's
  ``default``, an UPDATE's ``onupdate``) filled in;
- statements whose results would need type processing, or that leave a column
  to a Python function, are refused when prepared, not run wrong.

Rows come back as named tuples behind ``first()``, ``one()`` and ``scalar_one()``
like SQLAlchemy's.

On PostgreSQL every statement is also a round trip to the server (~90 µs on
loopback here, more across a network), and a store runs about ten of them.
:func:`execute_all` sends several statements whose parameters do not depend on
each other's results in one round trip (psycopg's pipeline mode: the server
still runs them one after the other, each with its own snapshot, and stops at
the first error); on SQLite it runs them in turn.
"""

from __future__ import annotations

import functools
import threading
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.exc import DBAPIError, MultipleResultsFound, NoResultFound
from sqlalchemy.sql.base import Executable

__all__ = ["Rows", "execute", "execute_all"]


class Rows:
    """The rows of one execution (fetched at once: these statements return at most a few)."""

    __slots__ = ("_rows",)

    def __init__(self, rows: Sequence[Any]) -> None:
        self._rows = rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if not self._rows:
            raise NoResultFound("No row was found when one was required")
        if len(self._rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when exactly one was required")
        return self._rows[0]

    def scalar_one(self) -> Any:
        return self.one()[0]


_Processor = Callable[[Any], Any] | None


class _Prepared:
    """A statement compiled for one dialect and one set of parameter names."""

    def __init__(self, stmt: Executable, dialect: Dialect, keys: frozenset[str]) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=sorted(keys))  # type: ignore[attr-defined]
        # sqlite3 takes positional parameters (qmark), psycopg named ones (pyformat).
        self.positional = dialect.positional
        order = compiled.positiontup if self.positional else list(compiled.binds)
        if order is None or compiled.escaped_bind_names:
            raise ValueError(f"not a statement with plain parameter names: {compiled}")
        self.sql = str(compiled)
        fixed: dict[str, Any] = {}
        for name, bind in compiled.binds.items():
            if not bind.required:
                fixed[name] = bind.effective_value
        # Columns SQLAlchemy would compute in Python at execution (an INSERT's
        # defaults, an UPDATE's onupdate values): constants are filled in here;
        # a function would be called once and its value reused, so it is refused.
        for column, generator in [
            *((c, c.default) for c in compiled.insert_prefetch),
            *((c, c.onupdate) for c in compiled.update_prefetch),
        ]:
            if generator is None or not generator.is_scalar:
                raise ValueError(f"{column} needs a value or a constant default: {self.sql}")
            fixed[column.key] = generator.arg
        self.fixed = fixed
        processors: dict[str, _Processor] = {
            name: bind.type.bind_processor(dialect) for name, bind in compiled.binds.items()
        }
        self.params: list[tuple[str, _Processor]] = [(name, processors[name]) for name in order]
        for column in getattr(stmt, "exported_columns", ()):
            if column.type.result_processor(dialect, None) is not None:
                raise ValueError(f"{column} needs result processing: {self.sql}")
        self.row: Any = None  # a named tuple type, from the first execution's description

    def values(self, params: Mapping[str, Any]) -> Any:
        """The DBAPI parameters: a list in the statement's order, or a dict by name."""
        fixed = self.fixed
        values = []
        for name, process in self.params:
            value = params[name] if name in params else fixed[name]
            values.append(value if process is None else process(value))
        if self.positional:
            return values
        return dict(zip((name for name, _ in self.params), values, strict=True))

    def rows(self, cursor: Any) -> Rows:
        """The executed statement's rows."""
        if cursor.description is None:
            return Rows(())
        if self.row is None:
            self.row = namedtuple("Row", [d[0] for d in cursor.description], rename=True)  # type: ignore[misc]
        return Rows([self.row._make(r) for r in cursor.fetchall()])


_prepared: dict[tuple[int, str, frozenset[str]], tuple[Executable, _Prepared]] = {}
_lock = threading.Lock()


def _prepare(stmt: Executable, dialect: Dialect, params: Mapping[str, Any]) -> _Prepared:
    key = (id(stmt), dialect.name, frozenset(params))
    entry = _prepared.get(key)
    if entry is None:
        with _lock:
            entry = _prepared.get(key)
            if entry is None:
                entry = _prepared[key] = (stmt, _Prepared(stmt, dialect, key[2]))
    return entry[1]


@functools.cache
def pipeline_supported() -> bool:
    """Whether psycopg's libpq has pipeline mode (libpq 14 and later); else one by one."""
    import psycopg

    return bool(psycopg.Pipeline.is_supported())


def execute(conn: Connection, stmt: Executable, params: Mapping[str, Any]) -> Rows:
    """Run ``stmt`` with ``params`` in ``conn``'s transaction; its rows.

    ``stmt`` must be a module-level statement (prepared statements are kept for
    the life of the process).
    """
    return execute_all(conn, [(stmt, params)])[0]


def execute_all(
    conn: Connection, steps: Sequence[tuple[Executable, Mapping[str, Any]]]
) -> list[Rows]:
    """Run each ``(statement, params)`` in order in ``conn``'s transaction; their rows.

    On PostgreSQL in one round trip; the first error stops the rest, and is
    raised as SQLAlchemy raises it (``IntegrityError``, ``OperationalError``, ...
    with ``.orig``). A lost connection is invalidated, as SQLAlchemy does.
    """
    dialect = conn.dialect
    prepared = [(_prepare(stmt, dialect, params), params) for stmt, params in steps]
    dbapi: Any = conn.connection.driver_connection
    Error = dialect.loaded_dbapi.Error
    cursors: list[Any] = []
    rows: list[Rows] = []
    sql, values = "", None
    pipelined = dialect.name == "postgresql" and len(prepared) > 1 and pipeline_supported()
    try:
        with dbapi.pipeline() if pipelined else nullcontext():
            for p, params in prepared:
                sql, values = p.sql, p.values(params)
                cursor = dbapi.cursor()
                cursors.append(cursor)
                cursor.execute(sql, values)
                if not pipelined:  # its rows now, before the next statement runs
                    rows.append(p.rows(cursor))
            if pipelined:  # any of them may be the one that failed: the error names them all
                sql, values = "; ".join(p.sql for p, _ in prepared), None
        if pipelined:
            rows = [p.rows(cursor) for (p, _), cursor in zip(prepared, cursors, strict=True)]
        return rows
    except Error as exc:
        if dialect.is_disconnect(exc, dbapi, None):
            conn.invalidate(exc)
        raise DBAPIError.instance(sql, values, exc, Error) from exc
    finally:
        for cursor in cursors:
            cursor.close()
