"""The SQLite file's own mechanics, under the store's engine: the pragmas every
connection gets, the writers' BEGIN IMMEDIATE with asynchronous back-off while another
process holds the write lock, the WAL checkpoints off the event loop, and closing a
kept connection (the writer, a reader) with nothing left open.

SQLite is set up for a server: foreign keys on, WAL, ``synchronous=NORMAL``, and
``BEGIN IMMEDIATE`` for writers so two writers queue at the start of their transactions
instead of failing half-way. Statements run inline on the event loop (`inline_sqlite`),
so nothing may wait inside SQLite: writers of a process queue on the store's asyncio
lock, and a write lock held by another process is retried with asynchronous back-off
(SQLite's own busy handler would block the loop); readers never wait for writers in WAL
mode."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.util import await_only

from gateway.core.errors import Unavailable

log = logging.getLogger(__name__)

#: The execution option that marks a writer's connection (BEGIN IMMEDIATE, not BEGIN).
WRITER = "coopgate_writer"
#: How long a writer waits for another process's write lock before UNAVAILABLE.
SQLITE_LOCK_WAIT_SECONDS = 10.0
#: SQLite's own busy wait, which blocks the loop: only for the rare reader wait
#: (WAL index recovery); writers' waits happen in `begin_sqlite_writer`.
SQLITE_BUSY_MS = 20


class WalCheckpointer:
    """Copies SQLite's write-ahead log back into the database from a thread of its own.

    SQLite checkpoints in the committing connection by default, every 1000 log
    pages; the store's connections run on the event loop, where that stalled
    every reply for milliseconds (a 4-record audit commit: p50 0.3 ms, p99 4.9 ms,
    max 13 ms). The store's connections turn that off, and this thread runs a
    PASSIVE checkpoint (never waits for readers or writers) every ``interval``
    on its own connection; sqlite3 releases the GIL while it works.

    Once a second: a checkpoint copies each page the log changed since the last one,
    once, however often it was rewritten (the case rows, the work queue's and the audit
    tree's pages are rewritten many times a second under load); every 0.2 s it was 3%
    of `coopgate up`'s busy samples under the incident benchmark.
    """

    def __init__(self, path: str, interval: float = 1.0) -> None:
        self.path = path
        self.interval = interval
        self.runs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-wal-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error:
            log.exception("WAL checkpointer cannot open %s", self.path)
            return
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self.interval * 1000)}")
            while not self._stop.wait(self.interval):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.runs += 1
                except sqlite3.Error:  # busy, or the file went away: try again later
                    log.debug("WAL checkpoint skipped", exc_info=True)
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


async def retire(conn: AsyncConnection) -> None:
    """Close a kept SQLite connection (the writer, a reader) back to its pool, rolling
    back on the driver whatever SQLite transaction is left open."""
    sync = conn.sync_connection
    with contextlib.suppress(Exception):
        if sync is not None and not sync.invalidated:
            driver = sync.connection.driver_connection
            if isinstance(driver, sqlite3.Connection) and driver.in_transaction:
                driver.rollback()
    with contextlib.suppress(Exception):
        await conn.close()


def begin_sqlite_writer(conn: Connection) -> None:
    """Take the write lock with BEGIN IMMEDIATE, backing off asynchronously while
    another process holds it (SQLAlchemy's ``begin`` then adopts the transaction:
    the "begin" event emits nothing for writers, and the driver's commit and
    rollback end whatever transaction the connection is in). Runs in SQLAlchemy's
    greenlet, whose awaits suspend the calling task, not the loop."""
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    deadline = time.monotonic() + SQLITE_LOCK_WAIT_SECONDS
    pause = 0.001
    while not began_immediate(dbapi, deadline):
        await_only(asyncio.sleep(pause))
        pause = min(pause * 2, 0.05)


async def begin_immediate(driver: sqlite3.Connection) -> None:
    """`begin_sqlite_writer` on the loop itself (`Store._sqlite_write`)."""
    deadline = time.monotonic() + SQLITE_LOCK_WAIT_SECONDS
    pause = 0.001
    while not began_immediate(driver, deadline):
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.05)


def began_immediate(driver: sqlite3.Connection, deadline: float) -> bool:
    """One BEGIN IMMEDIATE: True when it took the write lock, False while another
    process holds it (try again), UNAVAILABLE past ``deadline`` or on any other error."""
    try:
        driver.execute("BEGIN IMMEDIATE")
        return True
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise Unavailable("the store cannot be reached", reason="STORE_UNAVAILABLE") from exc
        if time.monotonic() > deadline:
            raise Unavailable(
                "the store is locked by another process", reason="STORE_BUSY"
            ) from exc
        return False


def connect_hot(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    conn.execute("PRAGMA secure_delete=ON")
    return conn


def configure_sqlite(sync_engine: Engine) -> None:
    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let the "begin" event below emit BEGIN itself (writers: `begin_sqlite_writer`).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA foreign_keys=ON",
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            "PRAGMA wal_autocheckpoint=0",  # WalCheckpointer does it off the loop
            f"PRAGMA busy_timeout={SQLITE_BUSY_MS}",
            # Deleted rows are overwritten with zeros, not left in free space (issue 18).
            "PRAGMA secure_delete=ON",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        if not conn.get_execution_options().get(WRITER, False):
            # Straight to the driver: an execution through SQLAlchemy costs more than BEGIN.
            conn.connection.driver_connection.execute("BEGIN")


#: Attempts of `truncate_wal` (about 2.5 s of backing off in all).
_TRUNCATE_ATTEMPTS = 8


async def truncate_wal(path: str) -> bool:
    """`Store.truncate_wal` on the file at ``path``: a TRUNCATE checkpoint on a thread,
    tried again a few times while readers or the WAL checkpointer are in the way."""

    def checkpoint() -> bool:
        conn = connect_hot(path)
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            return bool(busy == 0)
        except sqlite3.OperationalError:  # locked
            return False
        finally:
            conn.close()

    for attempt in range(_TRUNCATE_ATTEMPTS):
        if await asyncio.to_thread(checkpoint):
            return True
        await asyncio.sleep(0.01 * 2**attempt)
    return False
