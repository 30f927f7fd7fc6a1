"""Many live watches on one gateway: 300 streams opened at once over two fresh channels
(150 on one connection) all attach, all receive the change made to their case, and
leave nothing behind when they end. Not timed: it proves delivery, not speed."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
from coopgate.v1 import cases_pb2

from gateway.core.caller import Role
from tests.conftest import Stack
from tests.gateway.cases.test_case_view import Key, open_case, own_service, say

WATCHERS = 300
CASES = 20
CHANNELS = 2


async def test_three_hundred_watchers_on_one_gateway_all_get_their_change(
    stack: Stack, unique: Key
) -> None:
    service_id = await own_service(stack, unique, [])
    bank = stack.api("bank-a", Role.ADVISOR)
    case_ids = [await open_case(bank, service_id, unique("c"), unique) for _ in range(CASES)]
    feed = stack.runtime.domain.cases.watching.feed
    changes = stack.runtime.store.changes
    watching_before = feed.watching
    # Fresh channels, not connected yet: every stream waits on the same handshakes.
    apis = [stack.api("bank-a", Role.ADVISOR) for _ in range(CHANNELS)]
    received: dict[int, list[str]] = {k: [] for k in range(WATCHERS)}
    failures: Counter[str] = Counter()
    calls = []

    async def watch(k: int) -> None:
        case_id = case_ids[k % CASES]
        call = apis[k % CHANNELS].cases.WatchCase(
            cases_pb2.WatchCaseRequest(case_id=case_id, purpose="incident-resolution")
        )
        calls.append(call)
        try:
            async for response in call:
                if response.item.HasField("interaction"):
                    received[k].append(response.item.interaction.summary)
                    if response.item.interaction.summary == f"ping {case_id}":
                        return
        except grpc.aio.AioRpcError as exc:
            failures[exc.code().name] += 1

    tasks = [asyncio.create_task(watch(k)) for k in range(WATCHERS)]
    try:
        async with asyncio.timeout(60):
            while feed.watching < watching_before + WATCHERS:
                assert not failures, failures
                await asyncio.sleep(0.1)
        await asyncio.gather(
            *(say(bank, case_id, f"ping {case_id}", unique) for case_id in case_ids)
        )
        async with asyncio.timeout(60):
            await asyncio.gather(*tasks)
    finally:
        for call in calls:
            call.cancel()
        for task in tasks:
            task.cancel()
    assert not failures, failures
    missing = [k for k, got in received.items() if f"ping {case_ids[k % CASES]}" not in got]
    assert missing == [], f"{len(missing)} of {WATCHERS} watchers never got their change"
    # Each saw its own case only: the opening contact, then its ping, nothing else's.
    for k, got in received.items():
        assert got[-1] == f"ping {case_ids[k % CASES]}"
        assert not any(s.startswith("ping ") and s != got[-1] for s in got)
    # Ended watches leave no watcher or change subscription behind.
    async with asyncio.timeout(20):
        while feed.watching > watching_before:
            await asyncio.sleep(0.1)
    assert not any(("case", case_id) in changes._waiting for case_id in case_ids)
