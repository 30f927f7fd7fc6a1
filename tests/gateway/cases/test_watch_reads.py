"""What a live watch reads: one read per change it is woken for (a batch smaller than
the limit held everything committed when it was read, so no second read only to find
nothing new), and a full batch is followed at once by the next one, without waiting
for a change notification."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import pytest
from coopgate.v1 import cases_pb2

from gateway.cases import watch as watch_module
from gateway.cases.watch import CaseWatch
from tests.conftest import Stack
from tests.gateway.cases.test_case_view import Key, own_case, say


def _count_reads(watching: CaseWatch, monkeypatch: pytest.MonkeyPatch, case_id: str) -> list[int]:
    """How many events each of the watch's store reads of ``case_id`` returned, in order
    (other watches of the stack, of other cases, are not counted)."""
    reads: list[int] = []
    read_batch: Callable[..., Any] = watching._read_batch

    async def counted(caller: Any, read_case: str, *args: Any) -> watch_module.WatchBatch:
        batch: watch_module.WatchBatch = await read_batch(caller, read_case, *args)
        if read_case == case_id:
            reads.append(len(batch.events))
        return batch

    monkeypatch.setattr(watching, "_read_batch", counted)
    return reads


async def _summaries(call: AsyncIterable[cases_pb2.WatchCaseResponse]) -> AsyncIterator[str]:
    async for response in call:
        if response.item.HasField("interaction"):
            yield response.item.interaction.summary


async def test_a_watch_reads_once_per_change_it_is_woken_for(
    stack: Stack, unique: Key, monkeypatch: pytest.MonkeyPatch
) -> None:
    bank, case_id = await own_case(stack, unique)
    reads = _count_reads(stack.runtime.domain.cases.watching, monkeypatch, case_id)
    call = bank.cases.WatchCase(
        cases_pb2.WatchCaseRequest(case_id=case_id, purpose="incident-resolution")
    )
    said = [f"change {n}" for n in range(4)]
    try:
        async with asyncio.timeout(30):
            received = _summaries(call)
            await anext(received)  # the opening contact
            for summary in said:
                await say(bank, case_id, summary, unique)
                assert await anext(received) == summary
    finally:
        call.cancel()
    # Each change woke one read that returned it. Before, every read that returned
    # events was followed by one that returned none (as many empty reads as full ones:
    # [2, 0, 0, 3, 1, 0, 0, 1, 0, 1, 0, 1] here). An empty read is left only where a
    # commit's announcement raced the read that already saw it (the workflow's own
    # writes to the case come and go meanwhile).
    empty = reads.count(0)
    assert len(reads) - empty >= len(said), reads
    assert empty <= 2, reads


async def test_a_full_batch_is_followed_at_once_by_the_next(
    stack: Stack, unique: Key, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no change announced after the watch starts (and the feed's safety poll
    out of the way), every event already written still arrives: a batch that hit the
    limit is read on, not waited on."""
    monkeypatch.setattr(watch_module, "WATCH_BATCH", 2)
    monkeypatch.setattr(watch_module, "_EVENTS_AFTER", watch_module._EVENTS_AFTER.limit(2))
    feed = stack.runtime.domain.cases.watching.feed
    monkeypatch.setattr(feed, "interval", 60.0)
    bank, case_id = await own_case(stack, unique)
    said = [f"earlier {n}" for n in range(5)]
    for summary in said:
        await say(bank, case_id, summary, unique)
    reads = _count_reads(stack.runtime.domain.cases.watching, monkeypatch, case_id)
    call = bank.cases.WatchCase(
        cases_pb2.WatchCaseRequest(case_id=case_id, purpose="incident-resolution")
    )
    got: list[str] = []
    try:
        async with asyncio.timeout(watch_module.WATCH_IDLE_SECONDS - 1):
            async for summary in _summaries(call):
                got.append(summary)
                if len(got) == 1 + len(said):
                    break
    finally:
        call.cancel()
    assert got[1:] == said
    assert reads[:3] == [2, 2, 2], reads  # opening contact + 5 said, two at a time
