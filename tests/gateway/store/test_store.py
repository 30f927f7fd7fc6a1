"""Migrations and store settings, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from gateway.core.errors import Unavailable
from gateway.store import Store, create_store, migrate
from gateway.store.migrate import current_revision, downgrade
from gateway.store.schema import metadata

#: Which server process serves a connection.
BACKEND_PID = select(func.pg_backend_pid())

EXPECTED_TABLES = set(metadata.tables)


async def _tables(url: str) -> set[str]:
    store = create_store(url)
    try:
        async with store.engine.connect() as conn:
            names = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await store.close()
    return names - {"alembic_version"}


async def test_migrations_create_the_schema_and_are_idempotent(database_url: str) -> None:
    store = create_store(database_url)
    try:
        assert await current_revision(store) is None
        await migrate(store)
        head = await current_revision(store)
        assert head is not None
        await migrate(store)  # a second run changes nothing
        assert await current_revision(store) == head
    finally:
        await store.close()
    assert await _tables(database_url) == EXPECTED_TABLES


async def test_migrations_downgrade_to_base_and_up_again(database_url: str) -> None:
    store = create_store(database_url)
    try:
        await migrate(store)
        await downgrade(store, "base")
        assert await current_revision(store) is None
        assert await _tables(database_url) == set()
        await migrate(store)
    finally:
        await store.close()
    assert await _tables(database_url) == EXPECTED_TABLES


async def test_the_migrated_schema_matches_the_table_definitions(database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    store = create_store(database_url)
    try:
        await migrate(store)
        async with store.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), metadata
                )
            )
    finally:
        await store.close()
    assert diff == []


async def test_sqlite_runs_with_foreign_keys_and_wal(tmp_path: object) -> None:
    store = create_store(f"sqlite:///{tmp_path}/pragmas.db")
    try:
        async with store.read() as conn:
            fk = (await conn.execute(text("PRAGMA foreign_keys"))).scalar()
            journal = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
        assert (fk, journal) == (1, "wal")
        await migrate(store)
        async with store.write() as conn:
            # A case pointing at nothing is refused by the database itself.
            from sqlalchemy.exc import IntegrityError

            try:
                await conn.execute(
                    text(
                        "INSERT INTO subject_links"
                        " (partner_id, local_hash, sealed_local_id, subject_id, linked_at)"
                        " VALUES ('nobody', x'00', x'00', 'nothing', '2026-01-01')"
                    )
                )
            except IntegrityError:
                pass
            else:
                raise AssertionError("foreign keys are not enforced")
    finally:
        await store.close()


async def test_sqlite_statements_run_on_the_loop_thread(tmp_path: object) -> None:
    """The inline driver: no thread hop per statement (the point of `inline_sqlite`)."""
    import threading

    store = create_store(f"sqlite:///{tmp_path}/inline.db")
    try:
        async with store.read() as conn:
            raw = await conn.get_raw_connection()
            assert raw.driver_connection is not None
            threads: set[int] = set()

            def where_am_i() -> int:
                threads.add(threading.get_ident())
                return 1

            raw.driver_connection.create_function("where_am_i", 0, where_am_i)
            await conn.execute(text("SELECT where_am_i()"))
        assert threads == {threading.get_ident()}
    finally:
        await store.close()


async def test_a_sqlite_writer_waits_for_another_process_without_blocking_the_loop(
    tmp_path: object,
) -> None:
    """Another connection (as another process would) holds the write lock for 300 ms:
    the store's writer waits with asynchronous back-off, the loop keeps serving reads
    meanwhile, and the write commits once the lock is released."""
    import asyncio
    import sqlite3
    import time

    path = f"{tmp_path}/locked.db"
    store = create_store(f"sqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        async with store.write() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()

        async def write() -> float:
            async with store.write() as conn:
                await conn.execute(text("INSERT INTO t VALUES (1)"))
            return time.monotonic() - started

        writer = asyncio.create_task(write())
        ticks = 0
        while not writer.done():
            async with store.read() as conn:  # readers are not held up by the lock
                await conn.execute(text("SELECT count(*) FROM t"))
            ticks += 1
            await asyncio.sleep(0.01)
            # Released after 300 ms and ten reads, however slow a loaded machine is: a
            # blocked loop never gets to ten, and the writer gives up instead.
            if time.monotonic() - started > 0.3 and ticks >= 10 and other.in_transaction:
                other.execute("ROLLBACK")
        waited = await writer
        assert waited >= 0.3  # it did wait for the lock...
        assert ticks >= 10  # ...while the loop went on (a blocked loop would tick once)
        async with store.read() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 1
    finally:
        other.close()
        await store.close()


async def test_a_sqlite_writer_gives_up_as_unavailable_when_the_lock_is_never_released(
    tmp_path: object, monkeypatch: object
) -> None:
    import sqlite3

    import pytest

    from gateway.core.errors import Unavailable
    from gateway.store import engine, sqlite_file

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    monkeypatch.setattr(engine, "SQLITE_LOCK_WAIT_SECONDS", 0.2)
    monkeypatch.setattr(sqlite_file, "SQLITE_LOCK_WAIT_SECONDS", 0.2)
    path = f"{tmp_path}/stuck.db"
    store = create_store(f"sqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None)
    try:
        async with store.write() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(Unavailable) as caught:
            async with store.write() as conn:
                await conn.execute(text("INSERT INTO t VALUES (1)"))
        assert caught.value.reason == "STORE_BUSY"
        other.execute("ROLLBACK")
        async with store.read() as conn:  # nothing was written
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 0
    finally:
        other.close()
        await store.close()


async def test_concurrent_sqlite_writers_in_one_process_all_commit(tmp_path: object) -> None:
    import asyncio

    store = create_store(f"sqlite:///{tmp_path}/many.db")
    try:
        async with store.write() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))

        async def write(i: int) -> None:
            async with store.write() as conn:
                await conn.execute(text("INSERT INTO t VALUES (:x)"), {"x": i})
                await asyncio.sleep(0)  # a transaction that yields mid-way
                await conn.execute(text("INSERT INTO t VALUES (:x)"), {"x": -i})

        await asyncio.gather(*(write(i) for i in range(1, 51)))
        async with store.read() as conn:
            total = (await conn.execute(text("SELECT count(*), sum(x) FROM t"))).one()
        assert tuple(total) == (100, 0)
    finally:
        await store.close()


async def test_sqlite_wal_is_checkpointed_off_the_loop(tmp_path: object) -> None:
    """Store connections never checkpoint at commit (that stalled the loop); the store's
    checkpointer thread copies the log back, so the database file holds the writes."""
    import asyncio
    import os

    path = f"{tmp_path}/wal.db"
    store = create_store(f"sqlite:///{path}")
    try:
        async with store.read() as conn:
            assert (await conn.execute(text("PRAGMA wal_autocheckpoint"))).scalar() == 0
        async with store.write() as conn:
            await conn.execute(text("CREATE TABLE t (x BLOB)"))
        for _ in range(200):
            async with store.write() as conn:
                await conn.execute(text("INSERT INTO t VALUES (randomblob(4000))"))
        assert store.checkpointer is not None
        runs = store.checkpointer.runs
        for _ in range(100):  # a few checkpointer periods
            if store.checkpointer.runs > runs + 1:
                break
            await asyncio.sleep(0.05)
        assert store.checkpointer.runs > runs + 1
        # The rows reached the database file itself (without a checkpoint they would
        # only be in the -wal file: no store connection checkpoints).
        assert os.path.getsize(path) > 200 * 4000
    finally:
        await store.close()
    assert store.checkpointer is None


async def test_a_long_scan_runs_off_the_loop(database_url: str) -> None:
    """`run_scan` on SQLite runs on a worker thread: the scan below can only finish if
    the event loop keeps running while it is in progress (on PostgreSQL the statement's
    wait is asynchronous anyway)."""
    import asyncio
    import threading

    from sqlalchemy import Connection

    store = create_store(database_url)
    loop_ran = threading.Event()
    scanning = threading.Event()

    def scan(conn: Connection) -> int:
        scanning.set()
        # Stands in for a long statement: holds the scan until the loop has run on.
        assert loop_ran.wait(10), "the loop was blocked by the scan"
        return int(conn.execute(text("SELECT 41 + 1")).scalar_one())

    async def the_loop_goes_on() -> None:
        while not scanning.is_set():
            await asyncio.sleep(0.001)
        async with store.read() as conn:  # another request, served meanwhile
            await conn.execute(text("SELECT 1"))
        loop_ran.set()

    try:
        if store.is_sqlite:
            result, _ = await asyncio.gather(store.run_scan(scan), the_loop_goes_on())
            assert result == 42
        else:
            loop_ran.set()
            assert await store.run_scan(scan) == 42
    finally:
        await store.close()


async def test_a_dropped_postgresql_connection_fails_once_as_unavailable(
    pg_database_factory: object,
) -> None:
    """No ping before each checkout: when the server drops the pooled connections, the
    next statement fails as UNAVAILABLE (nothing half-done), and the one after it runs
    on a fresh connection."""
    from collections.abc import Awaitable, Callable

    import asyncpg
    import pytest

    from gateway.core.errors import Unavailable
    from tests.conftest import PG_ADMIN_DSN

    assert callable(pg_database_factory)
    factory: Callable[[], Awaitable[str]] = pg_database_factory
    url = await factory()
    store = create_store(url)
    try:
        async with store.read() as conn:
            await conn.execute(text("SELECT 1"))
        database = store.engine.url.database
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            dropped = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
        finally:
            await admin.close()
        assert dropped >= 1
        with pytest.raises(Unavailable):
            async with store.read() as conn:
                await conn.execute(text("SELECT 1"))
        async with store.read() as conn:
            assert (await conn.execute(text("SELECT 2"))).scalar() == 2
    finally:
        await store.close()


async def test_a_write_awaited_inside_another_write_fails_instead_of_hanging(
    tmp_path: object, monkeypatch: object
) -> None:
    """SQLite has one writer: a write that waits for one its own caller holds would wait
    forever. It gives up as UNAVAILABLE after the lock wait, and nothing is written."""
    import pytest

    from gateway.core.errors import Unavailable
    from gateway.store import engine, sqlite_file

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    monkeypatch.setattr(engine, "SQLITE_LOCK_WAIT_SECONDS", 0.2)
    monkeypatch.setattr(sqlite_file, "SQLITE_LOCK_WAIT_SECONDS", 0.2)
    store = create_store(f"sqlite:///{tmp_path}/nested.db")
    try:
        async with store.write() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
        with pytest.raises(Unavailable) as caught:
            async with store.write() as outer:
                await outer.execute(text("INSERT INTO t VALUES (1)"))
                async with store.write() as inner:
                    await inner.execute(text("INSERT INTO t VALUES (2)"))
        assert caught.value.reason == "STORE_BUSY"
        async with store.read() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 0
    finally:
        await store.close()


async def test_a_free_sqlite_write_starts_without_yielding_to_the_loop(tmp_path: object) -> None:
    """Statements run inline, so a write with nobody ahead of it needs no loop iteration
    to start: a task scheduled before it has not run by the time it is inside. (A wait
    that did yield cost a quarter of the case view's throughput.)"""
    import asyncio

    store = create_store(f"sqlite:///{tmp_path}/free.db")
    ran = False

    async def scheduled_before() -> None:
        nonlocal ran
        ran = True

    try:
        async with store.write() as conn:  # the first connection is opened here
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
        other = asyncio.create_task(scheduled_before())
        async with store.write() as conn:
            assert not ran
            await conn.execute(text("INSERT INTO t VALUES (1)"))
        await other
        assert ran
    finally:
        await store.close()


async def test_sqlite_writes_share_one_connection_and_each_commits_or_rolls_back_whole(
    tmp_path: object,
) -> None:
    """Every write of the process runs on one kept writer connection (`_sqlite_write`):
    a write that raises leaves nothing behind and the next one commits on the same
    connection; a write whose COMMIT fails (a deferred foreign key, which leaves SQLite's
    transaction open) retires the connection, and the next write begins afresh on
    another, without the failed write's row."""
    store = create_store(f"sqlite:///{tmp_path}/writer.db")
    try:
        async with store.write() as conn:
            await conn.execute(text("CREATE TABLE p (id INTEGER PRIMARY KEY)"))
            await conn.execute(text("CREATE TABLE c (p INTEGER REFERENCES p(id))"))
            first = conn.sync_connection
        with pytest.raises(RuntimeError):
            async with store.write() as conn:
                await conn.execute(text("INSERT INTO p VALUES (1)"))
                raise RuntimeError("the write fails half-way")
        async with store.write() as conn:
            assert conn.sync_connection is first
            assert (await conn.execute(text("SELECT count(*) FROM p"))).scalar() == 0
            await conn.execute(text("INSERT INTO p VALUES (2)"))
        with pytest.raises(IntegrityError):
            async with store.write() as conn:
                await conn.execute(text("PRAGMA defer_foreign_keys=ON"))
                await conn.execute(text("INSERT INTO c VALUES (99)"))  # no such p
        async with store.write() as conn:
            assert conn.sync_connection is not first
            await conn.execute(text("INSERT INTO c VALUES (2)"))
        async with store.read() as conn:
            rows = (await conn.execute(text("SELECT p FROM c"))).scalars().all()
            assert rows == [2]
            assert (await conn.execute(text("SELECT id FROM p"))).scalars().all() == [2]
    finally:
        await store.close()


async def test_a_cancelled_sqlite_write_rolls_back_and_the_next_commits(tmp_path: object) -> None:
    store = create_store(f"sqlite:///{tmp_path}/cancel.db")
    try:
        async with store.write() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
        inside = asyncio.Event()

        async def stuck() -> None:
            async with store.write() as conn:
                await conn.execute(text("INSERT INTO t VALUES (1)"))
                inside.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(stuck())
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with store.write() as conn:
            await conn.execute(text("INSERT INTO t VALUES (2)"))
        async with store.read() as conn:
            assert (await conn.execute(text("SELECT x FROM t"))).scalars().all() == [2]
    finally:
        await store.close()


async def test_sqlite_reads_reuse_kept_reader_connections(tmp_path: object) -> None:
    """A read takes a kept reader connection and gives it back (`_sqlite_read`): the next
    read runs on the same one; two reads open at once each have their own."""
    store = create_store(f"sqlite:///{tmp_path}/readers.db")
    try:
        async with store.read() as conn:
            first = conn.sync_connection
        async with store.read() as conn:
            assert conn.sync_connection is first
            async with store.read() as other:  # open at the same time: another one
                assert other.sync_connection is not first
            second = other.sync_connection
        # `run_read` as well, on one of the two kept.
        assert await store.run_read(lambda c: c) in {first, second}
    finally:
        await store.close()


async def test_concurrent_sqlite_reads_each_keep_their_snapshot_across_a_write(
    tmp_path: object,
) -> None:
    """Two read transactions open at once on kept reader connections: each sees the
    database as of its first statement, while a write commits between their
    statements (WAL: the write does not wait for them); a read begun after it sees it."""
    store = create_store(f"sqlite:///{tmp_path}/snapshots.db")
    count = text("SELECT count(*) FROM t")
    try:
        async with store.write() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
            await conn.execute(text("INSERT INTO t VALUES (1)"))
        async with store.read() as one:
            assert (await one.execute(count)).scalar() == 1
            async with store.write() as conn:
                await conn.execute(text("INSERT INTO t VALUES (2)"))
            async with store.read() as two:
                assert (await two.execute(count)).scalar() == 2
                async with store.write() as conn:
                    await conn.execute(text("INSERT INTO t VALUES (3)"))
                assert (await one.execute(count)).scalar() == 1
                assert (await two.execute(count)).scalar() == 2
        async with store.read() as conn:
            assert (await conn.execute(count)).scalar() == 3
    finally:
        await store.close()


async def test_a_failed_sqlite_read_rolls_back_and_the_next_read_works(tmp_path: object) -> None:
    """A read the database fails is rolled back and its connection closed, not kept; a
    read that raises an error of its own is rolled back and its connection kept; the
    next read works either way, in a fresh transaction."""
    store = create_store(f"sqlite:///{tmp_path}/failed.db")
    try:
        async with store.write() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
        with pytest.raises(Unavailable):  # the database's own error, as the store says it
            async with store.read() as conn:
                failed = conn.sync_connection
                await conn.execute(text("SELECT nothing FROM nowhere"))
        assert failed is not None
        assert failed.closed
        with pytest.raises(LookupError):
            async with store.read() as conn:
                kept = conn.sync_connection
                assert kept is not failed
                await conn.execute(text("SELECT count(*) FROM t"))
                raise LookupError("not found")
        async with store.write() as conn:
            await conn.execute(text("INSERT INTO t VALUES (1)"))
        async with store.read() as conn:
            assert conn.sync_connection is kept
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 1
    finally:
        await store.close()


async def test_closing_the_store_closes_its_reader_connections(tmp_path: object) -> None:
    store = create_store(f"sqlite:///{tmp_path}/close.db")
    async with store.read() as one, store.read() as two:
        pass
    readers = [one.sync_connection, two.sync_connection]
    assert all(c is not None and not c.closed for c in readers)
    await store.close()
    assert all(c is not None and c.closed for c in readers)


@pytest.fixture
async def pg_store(pg_database_factory: object) -> AsyncIterator[Store]:
    """A store on a fresh PostgreSQL database, one connection to a pool."""
    from collections.abc import Awaitable, Callable

    assert callable(pg_database_factory)
    factory: Callable[[], Awaitable[str]] = pg_database_factory
    store = create_store(await factory(), pool_size=1)
    try:
        yield store
    finally:
        await store.close()


@pytest.mark.parametrize("goodbye", ["unread", "read"])
async def test_read_rows_after_the_server_dropped_its_connection_reads_on_a_fresh_one(
    pg_store: Store, goodbye: str
) -> None:
    """`Store.read_rows` runs on an asyncpg pool of its own: a connection the server
    dropped while it was idle is replaced and the read served once the loop has read the
    server's goodbye. Not yet read, the statement may go out on the dead connection:
    that read is UNAVAILABLE (clients retry those), and the next is served."""
    import time

    import asyncpg

    from gateway.core.errors import Unavailable
    from tests.conftest import PG_ADMIN_DSN

    [(first,)] = await pg_store.read_rows(BACKEND_PID, {})
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
    finally:
        await admin.close()
    if goodbye == "read":
        await asyncio.sleep(0.3)
    else:  # on the socket, the loop kept from reading it
        time.sleep(0.3)  # noqa: ASYNC251 (the point: the loop must not run)
    try:
        [(second,)] = await pg_store.read_rows(BACKEND_PID, {})
        reason = None
    except Unavailable as lost:
        reason = lost.reason
        [(second,)] = await pg_store.read_rows(BACKEND_PID, {})
    assert reason in ((None, "STORE_UNAVAILABLE") if goodbye == "unread" else (None,))
    assert second != first


async def test_a_read_the_server_ends_mid_statement_is_unavailable_and_the_next_is_served(
    pg_store: Store,
) -> None:
    """A connection lost in the middle of `read_rows` (here the server ends it while the
    statement runs, as a restart would) is UNAVAILABLE, which clients retry, and is
    thrown away: the next read runs on a fresh one."""
    from gateway.core.errors import Unavailable

    [(first,)] = await pg_store.read_rows(BACKEND_PID, {})
    with pytest.raises(Unavailable) as failed:
        await pg_store.read_rows(select(func.pg_terminate_backend(func.pg_backend_pid())), {})
    assert failed.value.reason == "STORE_UNAVAILABLE"
    [(second,)] = await pg_store.read_rows(BACKEND_PID, {})
    assert second != first


async def test_a_postgresql_server_refusing_connections_is_unavailable_not_internal(
    pg_database_factory: object,
) -> None:
    """ "too many clients" (SQLSTATE 53300) says the server cannot serve now: the caller
    is told UNAVAILABLE, to retry, not INTERNAL. A role allowed no connection gets the
    same refusal from the server as a full one."""
    import uuid

    import asyncpg

    from gateway.core.errors import Unavailable
    from tests.conftest import PG_ADMIN_DSN

    assert callable(pg_database_factory)
    url = await pg_database_factory()
    role = f"coopgate_full_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    await admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 0')
    from sqlalchemy.engine import make_url

    store = create_store(make_url(url).set(username=role).render_as_string(hide_password=False))
    try:
        with pytest.raises(Unavailable) as refused:
            async with store.read() as conn:
                await conn.execute(text("SELECT 1"))
        assert refused.value.reason == "STORE_UNAVAILABLE"
    finally:
        await store.close()
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()
