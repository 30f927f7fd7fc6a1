"""A `Store.one_write` batch (the workflow's steps between two waits) reads each case's
and subject's key once: its memo (`batch_memo`) keeps what the batch read, forgets a
key the batch destroys, and lives no longer than the batch's transaction."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import insert

from gateway.core.caller import Role
from gateway.crypto import sealing
from gateway.crypto.sealing import Sealer
from gateway.store import Store
from gateway.store.batch import batch_memo
from gateway.store.schema import subjects
from tests.conftest import Stack
from tests.gateway.cases.test_case_view import Key, open_case, own_service


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many times the store was asked for a case key and for a subject key."""
    counted = {"case": 0, "subject": 0}
    execute = sealing.execute  # type: ignore[attr-defined]

    async def counting(conn: Any, statement: Any, *args: Any) -> Any:
        if statement is sealing._KEY:
            counted["case"] += 1
        elif statement is sealing._SUBJECT_KEY:
            counted["subject"] += 1
        return await execute(conn, statement, *args)

    monkeypatch.setattr(sealing, "execute", counting)
    return counted


async def test_a_batch_reads_a_subject_key_once_and_forgets_it_when_destroyed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    sealer = Sealer(b"k" * 32)
    async with store.write() as conn:
        await conn.execute(
            insert(subjects).values(subject_id="s-1", created_at=dt.datetime.now(dt.UTC))
        )
        made = await sealer.create_subject_key(conn, "s-1")
    reads = _count_reads(monkeypatch)
    async with store.one_write() as conn:
        memo = batch_memo(conn)
        assert memo is not None
        keys = [await sealer.subject_key(conn, "s-1") for _ in range(3)]
        assert reads["subject"] == 1
        assert all(k is not None for k in keys)
        sealed = Sealer.seal(keys[0], b"hello", "aad")
        assert Sealer.open(made, sealed, "aad") == b"hello"
        await Sealer.destroy_subject_key(conn, "s-1")
        assert await sealer.subject_key(conn, "s-1") is None  # read again: destroyed
        assert reads["subject"] == 2
    # Outside a batch every read goes to the store (an erasure elsewhere counts at once).
    async with store.write() as conn:
        assert batch_memo(conn) is None
        assert await sealer.subject_key(conn, "s-1") is None
        assert await sealer.subject_key(conn, "s-1") is None
    assert reads["subject"] == 4


async def test_a_batch_reads_a_case_key_once_and_a_new_batch_reads_it_again(
    stack: Stack, unique: Key, monkeypatch: pytest.MonkeyPatch
) -> None:
    service_id = await own_service(stack, unique, [])
    bank = stack.api("bank-a", Role.ADVISOR)
    case_id = await open_case(bank, service_id, unique("c"), unique)
    store = stack.runtime.store
    sealer = stack.runtime.domain.cases.reader.sealer
    reads = _count_reads(monkeypatch)
    for batch in (1, 2):
        async with store.one_write() as conn:
            first = await sealer.key(conn, case_id)
            assert first is not None
            assert await sealer.key(conn, case_id) is first
            async with store.write() as joined:  # a step's own write joins the batch
                assert await sealer.key(joined, case_id) is first
            assert reads["case"] == batch
    async with store.one_write() as conn:
        await Sealer.destroy(conn, [case_id])
        assert await sealer.key(conn, case_id) is None
        assert reads["case"] == 3
