"""Change notifications (gateway/store/changes.py): delivered when a write commits,
never before, never for a rollback; across two stores on one PostgreSQL database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from sqlalchemy import text

from gateway.store import Store, create_store, migrate
from gateway.store.changes import CASE, WORK, Subscription, announce


async def _settled(store: Store, *subscriptions: Subscription) -> None:
    """Once listening (PostgreSQL), with the wake-up that listening starts with taken."""
    async with asyncio.timeout(10):
        await store.changes.listening()
    for subscription in subscriptions:
        await subscription.wait(0)


async def test_a_commit_wakes_its_subscribers_and_no_one_else(store: Store) -> None:
    with (
        store.changes.subscribe(WORK, "p-a") as mine,
        store.changes.subscribe(WORK, "p-b") as other_key,
        store.changes.subscribe(CASE, "p-a") as other_topic,
    ):
        await _settled(store, mine, other_key, other_topic)
        async with store.write() as conn:
            announce(conn, WORK, "p-a")
        assert await mine.wait(1.0)
        assert not await other_key.wait(0.05)
        assert not await other_topic.wait(0.05)
        # Told once: the next wait waits again.
        assert not await mine.wait(0.05)


async def test_nothing_is_announced_before_the_commit_nor_after_a_rollback(store: Store) -> None:
    with store.changes.subscribe(WORK, "p-a") as changes:
        await _settled(store, changes)
        with pytest.raises(RuntimeError, match="boom"):
            async with store.write() as conn:
                announce(conn, WORK, "p-a")
                raise RuntimeError("boom")
        assert not await changes.wait(0.1)

        async def slow_write() -> None:
            async with store.write() as conn:
                announce(conn, WORK, "p-a")
                await asyncio.sleep(0.3)  # committed only after this

        started = time.monotonic()
        writing = asyncio.create_task(slow_write())
        assert await changes.wait(2.0)
        assert time.monotonic() - started >= 0.3
        await writing


async def test_run_write_announces_at_its_commit(store: Store) -> None:
    with store.changes.subscribe(CASE, "case-1") as changes:
        await _settled(store, changes)
        await store.run_write(lambda conn: announce(conn, CASE, "case-1"))
        assert await changes.wait(1.0)


async def test_announcing_outside_a_write_is_refused(store: Store) -> None:
    async with store.read() as conn:
        with pytest.raises(RuntimeError, match="outside a write transaction"):
            announce(conn, WORK, "p-a")


@pytest.mark.postgres
async def test_a_write_through_one_store_wakes_another_on_the_same_database(
    pg_database_factory: Callable[[], object],
) -> None:
    """Two processes' stores on one PostgreSQL database: NOTIFY sent in the writer's
    transaction, LISTEN on the other's; nothing arrives before the commit."""
    url = await pg_database_factory()  # type: ignore[misc]
    assert isinstance(url, str)
    writer, reader = create_store(url), create_store(url)
    await migrate(writer)
    try:
        with reader.changes.subscribe(WORK, "p-a") as changes:
            # The listener connects in the background; once it listens it wakes every
            # subscriber (changes may have gone by unheard before).
            await _settled(reader, changes)
            async with writer.write() as conn:
                announce(conn, WORK, "p-a")
                await conn.execute(text("SELECT 1"))
                await asyncio.sleep(0.3)
                assert not await changes.wait(0.05), "announced before the commit"
            started = time.monotonic()
            assert await changes.wait(5.0)
            assert time.monotonic() - started < 1.0  # well before the safety re-poll
            assert reader.changes.received >= 1

            with pytest.raises(RuntimeError):
                async with writer.write() as conn:
                    announce(conn, WORK, "p-a")
                    raise RuntimeError("rolled back")
            assert not await changes.wait(0.3)
    finally:
        await writer.close()
        await reader.close()


@pytest.mark.postgres
async def test_a_store_ignores_its_own_notifications(
    pg_database_factory: Callable[[], object],
) -> None:
    url = await pg_database_factory()  # type: ignore[misc]
    assert isinstance(url, str)
    store = create_store(url)
    await migrate(store)
    try:
        with store.changes.subscribe(WORK, "p-a") as changes:
            await _settled(store, changes)
            async with store.write() as conn:
                announce(conn, WORK, "p-a")
            assert await changes.wait(1.0)  # delivered in-process at commit
            assert not await changes.wait(0.3)  # and not once more by NOTIFY
            assert store.changes.received == 0
    finally:
        await store.close()
