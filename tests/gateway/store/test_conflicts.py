"""A transaction PostgreSQL rolls back for another's sake (a deadlock) is UNAVAILABLE
`STORE_CONFLICT`: nothing of it happened, so the caller retries with the same key;
and partner work, which two streams of one partner may deliver at once, locks its
rows in one order so that it does not deadlock in the first place."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from sqlalchemy import text

from gateway.core.errors import Unavailable
from gateway.store import create_store, migrate


async def test_a_deadlock_is_unavailable_store_conflict_and_the_other_commits(
    pg_database_factory: Callable[[], object],
) -> None:
    url = await pg_database_factory()  # type: ignore[misc]
    assert isinstance(url, str)
    store = create_store(url)
    try:
        await migrate(store)
        async with store.write() as conn:
            await conn.execute(text("CREATE TABLE pair (id int PRIMARY KEY, v int)"))
            await conn.execute(text("INSERT INTO pair VALUES (1, 0), (2, 0)"))
        both_hold = asyncio.Barrier(2)

        async def cross(first: int, second: int) -> str:
            try:
                async with store.write() as conn:
                    await conn.execute(text(f"UPDATE pair SET v = v + 1 WHERE id = {first}"))
                    await both_hold.wait()
                    await conn.execute(text(f"UPDATE pair SET v = v + 1 WHERE id = {second}"))
            except Unavailable as exc:
                return exc.reason
            return "committed"

        outcomes = await asyncio.gather(cross(1, 2), cross(2, 1))
        assert sorted(outcomes) == ["STORE_CONFLICT", "committed"]
        async with store.read() as conn:
            values = (await conn.execute(text("SELECT v FROM pair ORDER BY id"))).scalars()
            assert list(values) == [1, 1]  # the rolled-back one left nothing
    finally:
        await store.close()


pytestmark = pytest.mark.postgres
