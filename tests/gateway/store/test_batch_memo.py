"""A `Store.one_write` batch (the workflow's steps between two waits) reads each case's
and subject's key once: its memo (`batch_memo`) keeps what the batch read, forgets a
key the batch destroys, and lives no longer than the batch's transaction."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import insert

from gateway.crypto import sealing
from gateway.crypto.sealing import Sealer
from gateway.store import Store
from gateway.store.batch import batch_memo
from gateway.store.schema import subjects
from tests.conftest import Stack
from tests.gateway.cases.test_case_view import Key, own_case


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, str]]:
    """Each time the store is asked for a key: the connection asked and which key
    ("case" or "subject"). Other tasks' reads (the stack's workflows) are in it too, on
    their own connections: tests count those of their own connection only."""
    asked: list[tuple[Any, str]] = []
    execute = sealing.execute  # type: ignore[attr-defined]

    async def counting(conn: Any, statement: Any, *args: Any) -> Any:
        if statement is sealing._KEY:
            asked.append((conn, "case"))
        elif statement is sealing._SUBJECT_KEY:
            asked.append((conn, "subject"))
        return await execute(conn, statement, *args)

    monkeypatch.setattr(sealing, "execute", counting)
    return asked


def _on(asked: list[tuple[Any, str]], conn: Any, kind: str) -> int:
    return sum(1 for c, k in asked if c is conn and k == kind)


async def test_a_batch_reads_a_subject_key_once_and_forgets_it_when_destroyed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    sealer = Sealer(b"k" * 32)
    async with store.write() as conn:
        await conn.execute(
            insert(subjects).values(subject_id="s-1", created_at=dt.datetime.now(dt.UTC))
        )
        made = await sealer.create_subject_key(conn, "s-1")
    asked = _count_reads(monkeypatch)
    async with store.one_write() as conn:
        memo = batch_memo(conn)
        assert memo is not None
        keys = [await sealer.subject_key(conn, "s-1") for _ in range(3)]
        assert _on(asked, conn, "subject") == 1
        assert all(k is not None for k in keys)
        sealed = Sealer.seal(keys[0], b"hello", "aad")
        assert Sealer.open(made, sealed, "aad") == b"hello"
        await Sealer.destroy_subject_key(conn, "s-1")
        assert await sealer.subject_key(conn, "s-1") is None  # read again: destroyed
        assert _on(asked, conn, "subject") == 2
    # Outside a batch every read goes to the store (an erasure elsewhere counts at once).
    async with store.write() as conn:
        assert batch_memo(conn) is None
        before = _on(asked, conn, "subject")
        assert await sealer.subject_key(conn, "s-1") is None
        assert await sealer.subject_key(conn, "s-1") is None
        assert _on(asked, conn, "subject") - before == 2


async def test_a_batch_reads_a_case_key_once_and_a_new_batch_reads_it_again(
    stack: Stack, unique: Key, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, case_id = await own_case(stack, unique)
    store = stack.runtime.store
    sealer = stack.runtime.domain.cases.reader.sealer
    asked = _count_reads(monkeypatch)
    for _ in range(2):
        async with store.one_write() as conn:
            before = _on(asked, conn, "case")  # a kept connection: earlier batches' reads
            first = await sealer.key(conn, case_id)
            assert first is not None
            assert await sealer.key(conn, case_id) is first
            async with store.write() as joined:  # a step's own write joins the batch
                assert joined is conn
                assert await sealer.key(joined, case_id) is first
            assert _on(asked, conn, "case") - before == 1  # each batch reads it afresh
    async with store.one_write() as conn:
        before = _on(asked, conn, "case")
        assert await sealer.key(conn, case_id) is not None
        await Sealer.destroy(conn, [case_id])
        assert await sealer.key(conn, case_id) is None
        assert _on(asked, conn, "case") - before == 2
