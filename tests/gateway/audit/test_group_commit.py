"""The group appender: callers that come together share a commit; a lone caller is
committed at once; every record gets its own index, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from sqlalchemy import distinct, func, select

from gateway.audit.log import AuditLog, AuditRecord
from gateway.store import Store
from gateway.store.schema import audit_entries


def _record(n: int) -> AuditRecord:
    return AuditRecord(kind="access", action="read", actor_partner_id="bank-a", reason=str(n))


async def _commits(store: Store) -> int:
    """How many commits stored the log, as the stored entries tell (a fresh store per
    test): the entries of one commit share its time, and commits are apart by far more
    than the timestamp's microsecond. The appender's own way to the database differs by
    backend (on PostgreSQL one statement is its own transaction)."""
    async with store.read() as conn:
        stored = await conn.execute(select(func.count(distinct(audit_entries.c.recorded_at))))
        return int(stored.scalar_one())


async def test_sequential_callers_are_committed_one_by_one_without_waiting(store: Store) -> None:
    audit = AuditLog(store)
    try:
        indices = [await audit.record([_record(n)]) for n in range(20)]
    finally:
        await audit.close()
    assert [i for [i] in indices] == list(range(indices[0][0], indices[0][0] + 20))
    assert await _commits(store) == 20
    assert audit.lingered == 0


async def test_concurrent_callers_share_commits_and_each_record_has_its_index(
    store: Store,
) -> None:
    audit = AuditLog(store)
    callers = 200
    try:
        # Callers arriving in waves, as requests do: each wave while the previous commits.
        async def caller(n: int) -> list[int]:
            await asyncio.sleep((n % 10) * 0.0005)
            return await audit.record([_record(n), _record(-n)])

        results = await asyncio.gather(*(caller(n) for n in range(callers)))
    finally:
        await audit.close()
    indices = sorted(i for pair in results for i in pair)
    assert indices == list(range(indices[0], indices[0] + 2 * callers))
    assert all(b == a + 1 for a, b in results)  # one caller's records stay together
    assert await _commits(store) < callers / 4  # shared commits, not one per caller
    assert audit.lingered > 0
    async with store.read() as conn:
        stored = (await conn.execute(select(func.count()).select_from(audit_entries))).scalar()
    assert stored == 2 * callers
