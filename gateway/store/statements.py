"""Statements compiled once: SQLAlchemy builds and compiles a Core statement at each
execution unless it finds it in its cache, and finding it there means computing the
statement's cache key, a walk of the whole statement. On the hot paths (work delivery,
activities, idempotency) that was a third of the gateway's busy time; these run the
SQL text compiled once per dialect straight on the driver."""

from __future__ import annotations

import re
import sqlite3
from collections import namedtuple
from collections.abc import AsyncIterator, Callable, Mapping, Sequence, Sized
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast

import asyncpg
from sqlalchemy import ClauseElement, Connection, CursorResult, Dialect, Executable
from sqlalchemy.exc import DBAPIError, MultipleResultsFound, NoResultFound
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.util import await_only, greenlet_spawn


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
        driver and on asyncpg straight on its connection (no execution context or result
        object)."""
        return driver_rows(conn, self.sql, self.parameters(params))


def driver_rows(conn: Connection, sql: str, values: Sequence[object]) -> list[tuple[Any, ...]]:
    """SQL text in the driver's paramstyle run on ``conn`` as `exec_driver_sql` would run
    it (no conversions), straight on the inline SQLite or asyncpg connection."""
    if conn.dialect.driver == "asyncpg":
        try:
            records = await_only(_fetch_pg(conn, sql, values))
        except BaseException as exc:
            _raise_as_sqlalchemy(conn, exc, sql, values)
        return [tuple(r) for r in records]
    if conn.dialect.driver != "inline":
        return [tuple(r) for r in conn.exec_driver_sql(sql, tuple(values))]
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    try:
        return driver.execute(sql, values).fetchall()
    except sqlite3.Error as exc:  # as SQLAlchemy raises it, for the callers' handlers
        raise DBAPIError.instance(sql, values, exc, sqlite3.Error) from exc


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

    def scalars(self) -> list[Any]:
        return [r[0] for r in self._rows]


@dataclass(frozen=True, slots=True)
class InlineStatement:
    """A statement compiled once for inline SQLite or asyncpg, run on the transaction's
    own driver connection with SQLAlchemy's bind and result conversions (dates as text
    on SQLite, the project's types) applied here: what `AsyncConnection.execute`
    returns, for a fraction of its cost (a greenlet switch, the statement's cache key,
    an execution context and a result object)."""

    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]
    binds: tuple[Callable[[Any], Any] | None, ...]
    results: tuple[Callable[[Any], Any] | None, ...]
    row: Callable[..., Any] | None
    #: An expanding (``IN``) parameter's name and the names its values take, in order.
    expansion: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: asyncpg: the result columns' types, whose conversions may depend on the type the
    #: server reports (as SQLAlchemy's cursor passes it); and those conversions, found
    #: at the first run (`run_pg`).
    types: tuple[Any, ...] = ()
    pg_results: list[tuple[Callable[[Any], Any] | None, ...]] = field(default_factory=list)

    def values(self, params: Mapping[str, object]) -> tuple[object, ...]:
        if self.expansion:
            params = dict(params)
            for name, names in self.expansion:
                values = params[name] if name in params else self.defaults[name]
                params.update(zip(names, cast(Sequence[object], values), strict=True))
        return tuple(
            p(v) if p is not None else v  # as SQLAlchemy does, None included
            for p, v in zip(
                self.binds,
                (params[n] if n in params else self.defaults[n] for n in self.names),
                strict=True,
            )
        )

    def many_values(self, rows: Sequence[Mapping[str, object]]) -> list[tuple[object, ...]]:
        """The values of many parameter sets (``executemany``; no expanding ones)."""
        assert not self.expansion
        binds, defaults = self.binds, self.defaults
        return [
            tuple(
                p(v) if p is not None else v
                for p, v in zip(
                    binds, (ps[n] if n in ps else defaults[n] for n in self.names), strict=True
                )
            )
            for ps in rows
        ]

    def run(self, driver: sqlite3.Connection, params: Mapping[str, object]) -> Rows:
        values = self.values(params)
        try:
            cursor = driver.execute(self.sql, values)
            raw = cursor.fetchall() if cursor.description is not None else []
        except sqlite3.Error as exc:  # as SQLAlchemy raises it, for the callers' handlers
            raise DBAPIError.instance(self.sql, values, exc, sqlite3.Error) from exc
        return self._rows(self.results, raw, cursor.rowcount)

    def run_many(self, driver: sqlite3.Connection, rows: Sequence[Mapping[str, object]]) -> Rows:
        """One statement for many parameter sets (``executemany``; no expanding ones)."""
        values = self.many_values(rows)
        try:
            cursor = driver.executemany(self.sql, values)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(self.sql, values, exc, sqlite3.Error) from exc
        return Rows([], cursor.rowcount)

    async def run_pg(self, conn: Connection, values: Sequence[object] | list[Any]) -> Rows:
        """On asyncpg, in the transaction SQLAlchemy holds on ``conn`` (begun here if no
        statement has begun it yet); rows as SQLAlchemy converts them, rowcount as it
        reads it (rows returned, or the command's status). ``values`` a list of tuples
        for an ``executemany`` (rowcount -1, as SQLAlchemy's)."""
        async with _pg_driver(conn) as driver:
            if isinstance(values, list):
                await driver.executemany(self.sql, values)
                return Rows([], -1)
            if self.row is None:  # no rows: the status says how many it changed
                status = await driver.execute(self.sql, *values)
                counted = _ROWCOUNT.match(status or "")
                return Rows([], int(counted.group(1)) if counted else -1)
            if not self.pg_results:
                attributes = (await driver.prepare(self.sql)).get_attributes()
                self.pg_results.append(
                    tuple(
                        t._cached_result_processor(conn.dialect, a.type.oid)
                        for t, a in zip(self.types, attributes, strict=True)
                    )
                )
            records = await driver.fetch(self.sql, *values)
        return self._rows(self.pg_results[0], records, len(records))

    def _rows(
        self, results: tuple[Callable[[Any], Any] | None, ...], raw: list[Any], rowcount: int
    ) -> Rows:
        row = self.row
        if row is None:
            return Rows(raw, rowcount)
        if not any(results):
            return Rows([row(*r) for r in raw], rowcount)
        return Rows(
            [
                row(*(f(v) if f is not None else v for f, v in zip(results, r, strict=True)))
                for r in raw
            ],
            rowcount,
        )


#: The status asyncpg returns for a command, as SQLAlchemy's asyncpg cursor reads it.
_ROWCOUNT = re.compile(r"(?:SELECT|UPDATE|DELETE|INSERT \d+) (\d+)")


@asynccontextmanager
async def _pg_driver(conn: Connection) -> AsyncIterator[asyncpg.Connection]:
    """The asyncpg connection under ``conn``, for one statement at a time (SQLAlchemy's
    adapter lock), in the transaction SQLAlchemy holds on it: begun here if no
    statement has begun it yet, so that SQLAlchemy's commit and rollback end it."""
    adapter: Any = conn.connection.dbapi_connection
    async with adapter._execute_mutex:
        if not adapter._started:
            await adapter._start_transaction()
        yield adapter._connection


async def _fetch_pg(conn: Connection, sql: str, values: Sequence[object]) -> list[Any]:
    """`DriverStatement.rows` on asyncpg, in the transaction SQLAlchemy holds on ``conn``."""
    async with _pg_driver(conn) as driver:
        return cast(list[Any], await driver.fetch(sql, *values))


def _raise_as_sqlalchemy(
    conn: Connection, exc: BaseException, sql: str, values: object
) -> NoReturn:
    """Raise what asyncpg raised as SQLAlchemy raises it: translated by its adapter
    (`IntegrityError` for a conflict, with the driver's error as its cause and its
    ``sqlstate``), wrapped by its connection, which invalidates itself when the
    connection was lost or a statement cancelled midway (the pool then renews it). In a
    greenlet (`greenlet_spawn` from a coroutine): invalidating closes the connection."""
    adapter: Any = conn.connection.dbapi_connection
    try:
        adapter._handle_exception(exc)  # raises it, translated if it is asyncpg's
    except BaseException as translated:
        conn._handle_dbapi_exception(translated, sql, values, None, None)  # type: ignore[arg-type]
    raise AssertionError("unreachable")  # pragma: no cover


_inline_statements: dict[tuple[Any, ...], InlineStatement] = {}
#: A statement compiled for a dialect, and the names of its expanding (``IN``)
#: parameters; None for one SQLAlchemy must run (a parameter rendered as a literal).
_compiled: dict[tuple[ClauseElement, str], tuple[SQLCompiler, tuple[str, ...]] | None] = {}
#: Lists longer than this for an expanding parameter run through SQLAlchemy (its SQL,
#: compiled per list length, is cached here only for the short lists of the hot paths).
MAX_EXPANDED = 64


def _compile(
    statement: ClauseElement, dialect: Dialect
) -> tuple[SQLCompiler, tuple[str, ...]] | None:
    key = (statement, dialect.name)
    if key not in _compiled:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        assert compiled.positiontup is not None, "a positional paramstyle is expected"
        post = compiled.post_compile_params
        inline = all(p.expanding and not p.literal_execute for p in post)
        # On asyncpg a textual statement's rows are read only if it says it has some
        # (``text(...).columns(...)``); any other runs through SQLAlchemy.
        if dialect.driver == "asyncpg" and isinstance(statement, TextClause):
            inline = False
        _compiled[key] = (
            (compiled, tuple(sorted(compiled.bind_names[p] for p in post))) if inline else None
        )
    return _compiled[key]


def _inline_statement(
    statement: ClauseElement, dialect: Dialect, lengths: tuple[int, ...] = ()
) -> InlineStatement:
    """The statement compiled once, or once per length of its ``IN`` lists (`lengths`,
    in the order of `_compile`'s names): SQLAlchemy's own expansion of the lists, done
    once for those lengths, names the positions their values take."""
    key = (statement, dialect.name, lengths)
    found = _inline_statements.get(key)
    if found is None:
        found_compiled = _compile(statement, dialect)
        assert found_compiled is not None
        compiled, expanding = found_compiled
        processors: dict[str, Any] = dict(compiled._bind_processors)
        columns = compiled._result_columns
        on_pg = dialect.driver == "asyncpg"  # its conversions are found at the first run
        results = (
            () if on_pg else tuple(c.type._cached_result_processor(dialect, None) for c in columns)
        )
        keys = [c.keyname for c in columns]
        row = namedtuple("Row", keys, rename=True) if keys else None
        sql, names, defaults = compiled.string, tuple(compiled.positiontup or ()), compiled.params
        expansion: tuple[tuple[str, tuple[str, ...]], ...] = ()
        if expanding:
            params = compiled.construct_params(
                {n: [None] * k for n, k in zip(expanding, lengths, strict=True)},
                escape_names=False,
                _check=False,
            )
            state = compiled._process_parameters_for_postcompile(params)
            assert state.positiontup is not None
            sql, names = state.statement, tuple(state.positiontup)
            processors.update(state.processors)
            expansion = tuple((n, tuple(state.parameter_expansion[n])) for n in expanding)
        found = _inline_statements[key] = InlineStatement(
            sql,
            names,
            dict(defaults),
            tuple(processors.get(name) for name in names),
            results,
            row,
            expansion,
            tuple(c.type for c in columns) if on_pg else (),
        )
    return found


async def execute(
    conn: AsyncConnection,
    statement: Executable,
    params: Mapping[str, object] | Sequence[Mapping[str, object]],
) -> Rows | CursorResult[Any]:
    """``await conn.execute(statement, params)`` for a statement built once at import
    (no Python-side column defaults: a SELECT, or an UPDATE or INSERT that names every
    value). On the inline SQLite driver and on asyncpg it runs straight on the
    transaction's driver connection (`InlineStatement`); elsewhere through SQLAlchemy
    as ever. A list of parameter sets runs as one ``executemany``; an expanding ``IN``
    parameter (``bindparam(..., expanding=True)``) takes a list of up to `MAX_EXPANDED`
    values here (longer lists go through SQLAlchemy)."""
    sync = conn.sync_connection
    if sync is not None:
        driver = sync.dialect.driver
        if driver == "inline":
            rows = _run_inline(sync, statement, params)
            if rows is not None:
                return rows
        elif driver == "asyncpg" and not sync.invalidated:
            found = _prepared(sync, statement, params)
            if found is not None:
                inline, values = found
                try:
                    return await inline.run_pg(sync, values)
                except BaseException as exc:
                    await greenlet_spawn(_raise_as_sqlalchemy, sync, exc, inline.sql, values)
    return await conn.execute(statement, params)


def execute_in(
    conn: Connection,
    statement: Executable,
    params: Mapping[str, object] | Sequence[Mapping[str, object]],
) -> Rows | CursorResult[Any]:
    """`execute` on a synchronous connection (inside `Store.run_read`/`run_write`)."""
    driver = conn.dialect.driver
    if driver == "inline":
        rows = _run_inline(conn, statement, params)
        if rows is not None:
            return rows
    elif driver == "asyncpg" and not conn.invalidated:
        found = _prepared(conn, statement, params)
        if found is not None:
            inline, values = found
            try:
                return await_only(inline.run_pg(conn, values))
            except BaseException as exc:
                _raise_as_sqlalchemy(conn, exc, inline.sql, values)
    return conn.execute(statement, params)


def _prepared(
    conn: Connection,
    statement: Executable,
    params: Mapping[str, object] | Sequence[Mapping[str, object]],
) -> tuple[InlineStatement, tuple[object, ...] | list[tuple[object, ...]]] | None:
    """The statement compiled for ``params`` and its values for the driver, or None for
    SQLAlchemy to run it (as `_run_inline` tells)."""
    found = _inline_for(conn, statement, params)
    if found is None:
        return None
    if isinstance(params, Mapping):
        return found, found.values(params)
    return found, found.many_values(params)


def _inline_for(
    conn: Connection,
    statement: Executable,
    params: Mapping[str, object] | Sequence[Mapping[str, object]],
) -> InlineStatement | None:
    """The statement compiled for these parameters (one set, or many without expanding
    ones), or None for SQLAlchemy to run it (an empty list of parameter sets, an ``IN``
    list longer than `MAX_EXPANDED` or in an ``executemany``, a parameter SQLAlchemy
    renders as a literal)."""
    clause = cast(ClauseElement, statement)
    found = _compile(clause, conn.dialect)
    if found is None:
        return None
    compiled, expanding = found
    if not isinstance(params, Mapping):
        if not params or expanding:
            return None
        return _inline_statement(clause, conn.dialect)
    lengths = tuple(
        len(cast(Sized, params[n] if n in params else compiled.params[n])) for n in expanding
    )
    if any(n > MAX_EXPANDED for n in lengths):
        return None
    return _inline_statement(clause, conn.dialect, lengths)


def _run_inline(
    conn: Connection,
    statement: Executable,
    params: Mapping[str, object] | Sequence[Mapping[str, object]],
) -> Rows | None:
    """The statement run on the inline driver, or None for SQLAlchemy to run it."""
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    found = _inline_for(conn, statement, params)
    if found is None:
        return None
    if not isinstance(params, Mapping):
        return found.run_many(driver, params)
    return found.run(driver, params)
