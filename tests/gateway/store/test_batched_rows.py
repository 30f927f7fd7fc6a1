"""`BatchedRows`: callers that ask while a read is under way share the next read, and
none is answered from a read that started before it asked. On PostgreSQL, where it
batches; SQLite reads each caller's rows inline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import (
    ARRAY,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    any_,
    bindparam,
    case,
    exists,
    func,
    literal,
    select,
    text,
)

from gateway.store import Store, create_store
from gateway.store.batched import BatchedRows

probe = Table("batch_probe", MetaData(), Column("k", String), Column("n", Integer))
ONE = select(probe.c.k, probe.c.n).where(probe.c.k == bindparam("k")).order_by(probe.c.n)
MANY = (
    select(probe.c.k, probe.c.n)
    .where(probe.c.k == any_(bindparam("keys", type_=ARRAY(String))))
    .order_by(probe.c.n)
)
#: Taking its snapshot, then a fifth of a second before it reads.
SLOW = exists(select(literal(1)).select_from(func.pg_sleep(0.2)))
#: Key "a"'s rows divide by zero: a read that includes it fails as a whole.
FAILING_ON_A = probe.c.n / case((probe.c.k == "a", 0), else_=1) > 0


@pytest.fixture
async def store(pg_database_factory: object) -> AsyncIterator[Store]:
    assert callable(pg_database_factory)
    factory: Callable[[], Awaitable[str]] = pg_database_factory
    store = create_store(await factory())
    async with store.write() as conn:
        await conn.execute(text("CREATE TABLE batch_probe (k text, n int)"))
        await conn.execute(probe.insert(), [{"k": k, "n": n} for k in "abc" for n in (1, 2)])
    try:
        yield store
    finally:
        await store.close()


async def test_callers_that_come_together_share_reads_and_each_gets_its_own_rows(
    store: Store,
) -> None:
    batched = BatchedRows(store, ONE, MANY, "k", 0)
    keys = [k for _ in range(10) for k in "abcz"]
    answers = await asyncio.gather(*(batched.rows(k) for k in keys))
    for key, rows in zip(keys, answers, strict=True):
        assert rows == await store.read_rows(ONE, {"k": key})
    assert answers[3] == []  # "z" has no rows
    assert batched.callers == 40
    assert batched.reads < 10


async def _until_a_slow_read_runs(store: Store) -> None:
    """Until a read of this test's database is inside its ``pg_sleep``: its statement
    has started, so its snapshot is taken (counting the batcher's reads is not enough:
    on a loaded machine the statement may not have reached the server yet)."""
    running = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND state = 'active' AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()"
    )
    for _ in range(500):
        async with store.read() as conn:
            if (await conn.execute(running)).scalar():
                return
        await asyncio.sleep(0.005)
    raise AssertionError("the slow read never started")


async def test_a_caller_is_never_answered_by_a_read_that_started_before_it_asked(
    store: Store,
) -> None:
    batched = BatchedRows(store, ONE.where(SLOW), MANY.where(SLOW), "k", 0)
    early = asyncio.create_task(batched.rows("a"))
    await _until_a_slow_read_runs(store)  # the early read has taken its snapshot and sleeps
    async with store.write() as conn:
        await conn.execute(probe.insert(), [{"k": "a", "n": 3}])
    late = await batched.rows("a")
    assert [n for _, n in await early] == [1, 2]
    assert [n for _, n in late] == [1, 2, 3]
    assert batched.reads == 2


async def test_a_failed_read_fails_its_callers_and_later_reads_go_on(store: Store) -> None:
    batched = BatchedRows(store, ONE.where(FAILING_ON_A), MANY.where(FAILING_ON_A), "k", 0)
    # The first caller reads at once for itself; the two others share the next read.
    failed = await asyncio.gather(
        batched.rows("a"), batched.rows("a"), batched.rows("b"), return_exceptions=True
    )
    assert all(isinstance(f, Exception) for f in failed), failed
    assert (batched.reads, batched.callers) == (2, 3)
    assert [n for _, n in await batched.rows("b")] == [1, 2]


async def test_callers_waiting_on_a_reader_that_went_away_are_read_for(store: Store) -> None:
    """The first caller reads for those who wait; cancelled (its client went away), the
    read it made is abandoned and theirs is made by the batcher."""
    batched = BatchedRows(store, ONE.where(SLOW), MANY.where(SLOW), "k", 0)
    first = asyncio.create_task(batched.rows("a"))
    while batched.reads == 0:
        await asyncio.sleep(0.01)
    second = asyncio.create_task(batched.rows("b"))
    third = asyncio.create_task(batched.rows("a"))
    await asyncio.sleep(0.05)
    first.cancel()
    assert [n for _, n in await asyncio.wait_for(second, 5)] == [1, 2]
    assert [k for k, _ in await asyncio.wait_for(third, 5)] == ["a", "a"]
    assert first.cancelled()
