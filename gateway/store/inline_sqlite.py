"""SQLite for the async store, called inline on the event loop.

An aiosqlite connection runs every statement on its own thread: each call is
a queue put, a thread wake-up and a future resolved back on the loop, with the
GIL handed over twice. An indexed SQLite read takes a few microseconds, the
hand-over far longer (≈0.4 ms per statement measured on the case view, and
GIL convoys under load). This dialect is the stdlib ``sqlite3`` driver marked
async for SQLAlchemy's asyncio extension: statements run in the caller's
greenlet, on the loop thread, with no hop.

What keeps the loop from blocking on another writer is the store's part:
write transactions queue on an asyncio lock in the process, and a lock held
by another process is waited for asynchronously (``Store``), never inside
SQLite's busy handler.
"""

from __future__ import annotations

import sqlite3
from collections.abc import MutableMapping, Sequence
from typing import Any

from sqlalchemy import pool
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine.url import URL
from sqlalchemy.util import await_only

DRIVER = "inline"


async def _inline() -> None:
    """Completes at once: awaited before each statement, it tells SQLAlchemy's asyncio
    layer (which refuses a driver that never awaits) that the call went through an
    await, without yielding to the loop."""


class _Cursor(sqlite3.Cursor):
    async def _async_soft_close(self) -> None:
        """Rows stay in the cursor and are fetched inline: nothing to do."""


class _Connection(sqlite3.Connection):
    def cursor(self, factory: Any = _Cursor) -> Any:
        return super().cursor(factory)


class InlineSQLiteDialect(SQLiteDialect_pysqlite):
    """``sqlite+inline://``: pysqlite on the event loop thread."""

    driver = DRIVER
    is_async = True
    supports_statement_cache = True

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        if cls._is_url_file_db(url):
            return pool.AsyncAdaptedQueuePool
        return pool.StaticPool

    def create_connect_args(self, url: URL) -> tuple[Sequence[str], MutableMapping[str, Any]]:
        args, kwargs = super().create_connect_args(url)
        # Connections are made and used on the loop thread, but the pool may
        # close one from the garbage collector's thread at exit.
        kwargs["check_same_thread"] = False
        kwargs["factory"] = _Connection
        return args, kwargs

    def do_execute(self, cursor: Any, statement: Any, parameters: Any, context: Any = None) -> None:
        await_only(_inline())
        cursor.execute(statement, parameters)

    def do_executemany(
        self, cursor: Any, statement: Any, parameters: Any, context: Any = None
    ) -> None:
        await_only(_inline())
        cursor.executemany(statement, parameters)

    def do_execute_no_params(self, cursor: Any, statement: Any, context: Any = None) -> None:
        await_only(_inline())
        cursor.execute(statement)


registry.register(f"sqlite.{DRIVER}", __name__, "InlineSQLiteDialect")
