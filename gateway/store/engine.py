"""The store's engine: async SQLAlchemy over SQLite (embedded) or PostgreSQL.

SQLite is set up for a server: foreign keys on, WAL, ``synchronous=NORMAL``,
a busy timeout, and ``BEGIN IMMEDIATE`` for writers so two writers queue at
the start of their transactions instead of failing half-way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.errors import Unavailable

_WRITER = "coopgate_writer"


class Store:
    """Owns the engine; hands out read and write transactions."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self._transaction(writer=False) as conn:
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, committed when the block exits cleanly."""
        async with self._transaction(writer=True) as conn:
            yield conn

    @asynccontextmanager
    async def _transaction(self, *, writer: bool) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.connect() as conn:
                if writer:
                    conn = await conn.execution_options(**{_WRITER: True})
                async with conn.begin():
                    yield conn
        except (OperationalError, OSError, ConnectionError) as exc:
            raise Unavailable("the store cannot be reached", reason="STORE_UNAVAILABLE") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise Unavailable(
                    "the store connection was lost", reason="STORE_UNAVAILABLE"
                ) from exc
            raise

    async def close(self) -> None:
        await self.engine.dispose()


def create_store(url: str, **engine_kwargs: Any) -> Store:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(url, **engine_kwargs)
        _configure_sqlite(engine)
    else:
        engine_kwargs.setdefault("pool_pre_ping", True)
        engine = create_async_engine(url, **engine_kwargs)
    return Store(engine)


def _configure_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below emit BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA foreign_keys=ON",
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            "PRAGMA busy_timeout=10000",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        writer = conn.get_execution_options().get(_WRITER, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")
