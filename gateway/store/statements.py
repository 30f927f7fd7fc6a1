"""Statements compiled once: SQLAlchemy builds and compiles a Core statement at each
execution unless it finds it in its cache, and finding it there means computing the
statement's cache key, a walk of the whole statement. On the hot paths (work delivery,
activities, idempotency) that was a third of the gateway's busy time; these run the
SQL text compiled once per dialect straight on the driver."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ClauseElement, Connection, Dialect
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
        """Run on ``conn`` (inside `Store.run_read`/`run_write`)."""
        return [tuple(r) for r in conn.exec_driver_sql(self.sql, self.parameters(params))]


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
