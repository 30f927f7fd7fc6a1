"""Statements compiled once: SQLAlchemy builds and compiles a Core statement at each
execution unless it finds it in its cache, and finding it there means computing the
statement's cache key, a walk of the whole statement. On the hot paths (work delivery,
activities, idempotency) that was a third of the gateway's busy time; these run the
SQL text compiled once per dialect straight on the driver."""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ClauseElement, Connection, CursorResult, Dialect, Executable
from sqlalchemy.exc import DBAPIError, MultipleResultsFound, NoResultFound
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler


@dataclass(frozen=True, slots=True)
class DriverStatement:
    """A statement compiled once for a dialect, to run on the driver with positional
    parameters; its rows come back as the driver returns them (no type processing)."""

    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]

    def parameters(self, params: Mapping[str, object]) -> tuple[object, ...]:
        return tuple(params[n] if n in params else self.defaults[n] for n in self.names)

    def rows(self, conn: Connection, params: Mapping[str, object]) -> list[tuple[Any, ...]]:
        """Run on ``conn`` (inside `Store.run_read`/`run_write`); on the inline SQLite
        driver straight on its connection (no execution context or result object)."""
        values = self.parameters(params)
        if conn.dialect.driver != "inline":
            return [tuple(r) for r in conn.exec_driver_sql(self.sql, values)]
        driver = conn.connection.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        try:
            return driver.execute(self.sql, values).fetchall()
        except sqlite3.Error as exc:  # as SQLAlchemy raises it, for the callers' handlers
            raise DBAPIError.instance(self.sql, values, exc, sqlite3.Error) from exc


_driver_statements: dict[tuple[ClauseElement, str], DriverStatement] = {}


def driver_statement(statement: ClauseElement, dialect: Dialect) -> DriverStatement:
    key = (statement, dialect.name)
    found = _driver_statements.get(key)
    if found is None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        assert compiled.positiontup is not None, "a positional paramstyle is expected"
        found = _driver_statements[key] = DriverStatement(
            compiled.string, tuple(compiled.positiontup), dict(compiled.params)
        )
    return found


class Rows:
    """A statement's rows, read whole, with the parts of SQLAlchemy's result the hot
    paths use (`first`, `one`, `scalar`, `scalar_one`, `all`, `rowcount`)."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise (
                NoResultFound("expected one row")
                if not self._rows
                else MultipleResultsFound("expected one row")
            )
        return self._rows[0]

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]


@dataclass(frozen=True, slots=True)
class InlineStatement:
    """A statement compiled once for inline SQLite, run on the transaction's own driver
    connection with SQLAlchemy's bind and result conversions (dates as text) applied
    here: what `AsyncConnection.execute` returns, for a fraction of its cost (a greenlet
    switch, the statement's cache key, an execution context and a result object)."""

    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]
    binds: tuple[Callable[[Any], Any] | None, ...]
    results: tuple[Callable[[Any], Any] | None, ...]
    row: Callable[..., Any] | None

    def run(self, driver: sqlite3.Connection, params: Mapping[str, object]) -> Rows:
        values = tuple(
            p(v) if p is not None else v  # as SQLAlchemy does, None included
            for p, v in zip(
                self.binds,
                (params[n] if n in params else self.defaults[n] for n in self.names),
                strict=True,
            )
        )
        try:
            cursor = driver.execute(self.sql, values)
            raw = cursor.fetchall() if cursor.description is not None else []
        except sqlite3.Error as exc:  # as SQLAlchemy raises it, for the callers' handlers
            raise DBAPIError.instance(self.sql, values, exc, sqlite3.Error) from exc
        if self.row is None:
            return Rows(raw, cursor.rowcount)
        results, row = self.results, self.row
        return Rows(
            [
                row(*(f(v) if f is not None else v for f, v in zip(results, r, strict=True)))
                for r in raw
            ],
            cursor.rowcount,
        )


_inline_statements: dict[tuple[ClauseElement, str], InlineStatement] = {}


def _inline_statement(statement: ClauseElement, dialect: Dialect) -> InlineStatement:
    key = (statement, dialect.name)
    found = _inline_statements.get(key)
    if found is None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        assert compiled.positiontup is not None, "a positional paramstyle is expected"
        assert not compiled.post_compile_params, "no expanding (IN) parameters"
        processors = compiled._bind_processors
        binds = tuple(cast(Any, processors.get(name)) for name in compiled.positiontup)
        columns = compiled._result_columns
        results = tuple(c.type._cached_result_processor(dialect, None) for c in columns)
        keys = [c.keyname for c in columns]
        row = namedtuple("Row", keys, rename=True) if keys else None
        found = _inline_statements[key] = InlineStatement(
            compiled.string,
            tuple(compiled.positiontup),
            dict(compiled.params),
            binds,
            results,
            row,
        )
    return found


async def execute(
    conn: AsyncConnection, statement: Executable, params: Mapping[str, object]
) -> Rows | CursorResult[Any]:
    """``await conn.execute(statement, params)`` for a statement built once at import
    (no Python-side column defaults: a SELECT, or an UPDATE or INSERT that names every
    value). On the inline SQLite driver it runs straight on the transaction's driver
    connection (`InlineStatement`); elsewhere through SQLAlchemy as ever."""
    sync = conn.sync_connection
    if sync is None or sync.dialect.driver != "inline":
        return await conn.execute(statement, params)
    return _run_inline(sync, statement, params)


def execute_in(
    conn: Connection, statement: Executable, params: Mapping[str, object]
) -> Rows | CursorResult[Any]:
    """`execute` on a synchronous connection (inside `Store.run_read`/`run_write`)."""
    if conn.dialect.driver != "inline":
        return conn.execute(statement, params)
    return _run_inline(conn, statement, params)


def _run_inline(conn: Connection, statement: Executable, params: Mapping[str, object]) -> Rows:
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    return _inline_statement(cast(ClauseElement, statement), conn.dialect).run(driver, params)
