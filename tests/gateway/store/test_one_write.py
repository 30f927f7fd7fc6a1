"""`Store.one_write`: the writes a task makes in it join it, committed together or not
at all; a task it starts gets a transaction of its own."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import func, insert, select

from gateway.store import Store
from gateway.store.changes import WORK, announce
from gateway.store.schema import partners


async def _add(store: Store, partner_id: str) -> None:
    async with store.write() as conn:
        await conn.execute(
            insert(partners).values(
                partner_id=partner_id,
                display_name=partner_id,
                kind=1,
                created_at=dt.datetime.now(dt.UTC),
            )
        )
        announce(conn, WORK, partner_id)


async def _count(store: Store, *ids: str) -> int:
    async with store.read() as conn:
        return int(
            (
                await conn.execute(
                    select(func.count()).select_from(partners).where(partners.c.partner_id.in_(ids))
                )
            ).scalar_one()
        )


async def test_writes_in_it_are_committed_together(store: Store) -> None:
    with store.changes.subscribe(WORK, "ow-b") as changes:
        await store.changes.listening()
        await changes.wait(0)
        async with store.one_write():
            await _add(store, "ow-a")
            await _add(store, "ow-b")
            assert await _count(store, "ow-a", "ow-b") == 0  # not yet committed
            assert not await changes.wait(0.05)  # nor announced
        assert await _count(store, "ow-a", "ow-b") == 2
        assert await changes.wait(1.0)


async def test_a_failure_in_it_undoes_every_write(store: Store) -> None:
    with pytest.raises(RuntimeError, match="half-way"):
        async with store.one_write():
            await _add(store, "ow-c")
            raise RuntimeError("half-way")
    assert await _count(store, "ow-c") == 0


async def test_a_task_it_starts_writes_on_its_own(store: Store) -> None:
    async with store.one_write():
        await _add(store, "ow-d")
        if not store.is_sqlite:  # SQLite: one writer; the task would wait for this one
            await asyncio.create_task(_add(store, "ow-e"))
            assert await _count(store, "ow-e") == 1  # committed by itself already
    assert await _count(store, "ow-d") == 1
