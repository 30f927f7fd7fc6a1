"""Scale-out from outside: two `coopgate gateway` replicas and two `coopgate worker`
processes, configured by settings only (no data dir, keys as environment variables),
on one PostgreSQL store and one Temporal server; partners spread their calls over
both replicas through gRPC's round_robin. One replica is SIGKILLed mid-load."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections import Counter
from functools import partial

import pytest
from coopgate.v1 import cases_pb2, common_pb2
from sqlalchemy import func, select
from temporalio.client import Client

from gateway.core.caller import Role
from gateway.store import create_store
from gateway.store.schema import audit_entries, cases
from tests.conftest import Api
from tests.scale.cluster import (
    RETRIES,
    Cluster,
    assert_work_once,
    audit_verifies,
    open_request,
    resolve_and_close,
    until_status,
    with_retries,
    work_kinds,
)
from tests.scale.conftest import CHAIN, quick_service
from tests.scale.counting import counting_partners

#: Cases opened while a replica is killed.
LOAD = 16
#: Changes timed from one replica to a watch on the other.
WATCHED_CHANGES = 40


async def watch_delays(
    through: Api, watcher: Api, case_id: str, n: int
) -> tuple[list[float], list[float]]:
    """For ``n`` AppendInteraction calls through one replica, the seconds until the item
    reached a watch held on ``watcher``: from the call's start (the write's own time
    included), and from its reply (the change committed; 0 when the watch had it
    first)."""
    call = watcher.cases.WatchCase(
        cases_pb2.WatchCaseRequest(case_id=case_id, purpose="incident-resolution")
    )
    arrived: dict[int, float] = {}
    sent: dict[int, tuple[float, float]] = {}

    async def read() -> None:
        async for response in call:
            arrived.setdefault(response.item.sequence, time.perf_counter())

    reader = asyncio.create_task(read())
    try:
        await asyncio.sleep(0.5)  # the watch has caught up with the case's past
        for i in range(n):
            start = time.perf_counter()
            reply = await through.cases.AppendInteraction(
                cases_pb2.AppendInteractionRequest(
                    idempotency_key=f"note-{case_id}-{uuid.uuid4().hex[:8]}",
                    case_id=case_id,
                    interaction=cases_pb2.Interaction(
                        channel=common_pb2.CHANNEL_PHONE, summary=f"called back, {i}"
                    ),
                ),
                timeout=10,
            )
            sent[reply.sequence] = (start, time.perf_counter())
            async with asyncio.timeout(5):
                while reply.sequence not in arrived:
                    await asyncio.sleep(0.001)
            await asyncio.sleep(0.02)
    finally:
        call.cancel()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    from_start = sorted(arrived[seq] - at for seq, (at, _) in sent.items())
    from_reply = sorted(max(0.0, arrived[seq] - done) for seq, (_, done) in sent.items())
    return from_start, from_reply


def percentiles(samples: list[float]) -> str:
    p99 = samples[max(0, round(0.99 * len(samples)) - 1)]
    return (
        f"p50 {statistics.median(samples) * 1000:6.1f} ms, p99 {p99 * 1000:6.1f} ms, "
        f"max {samples[-1] * 1000:6.1f} ms"
    )


@pytest.mark.timeout(300)
async def test_two_replicas_two_workers_one_store_a_replica_killed_mid_load(
    pg_cluster: Cluster,
) -> None:
    c = pg_cluster
    one, two = c.add_gateway(), c.add_gateway()
    workers = [c.add_worker(), c.add_worker()]
    for process in (one, two, *workers):
        process.start()
    await asyncio.gather(c.serving(one), c.serving(two))
    # Configured by settings only: no replica made itself a data dir.
    assert not c.absent_data_dir.exists()

    tag = uuid.uuid4().hex[:8]
    service_id = await quick_service(c.api("coopgate", Role.ADMIN, only=one), f"nfc-{tag}")
    case_ids: set[str] = set()
    async with counting_partners(
        lambda p: c.api(p), CHAIN.values(), case_ids, faulty="telco-a", accepting="bank-a"
    ) as partners:
        # An incident opened on replica 1 is handled through replica 2.
        on_one = c.api("bank-a", Role.ADVISOR, only=one)
        on_two = c.api("bank-a", Role.ADVISOR, only=two)
        request = open_request(service_id, f"open-{tag}", f"c-{tag}")
        first = await with_retries(partial(on_one.cases.OpenCase, request, timeout=20))
        assert isinstance(first, cases_pb2.OpenCaseResponse)
        case_ids.add(first.case_id)
        await until_status(on_two, first.case_id, cases_pb2.CASE_STATUS_OWNED)
        # The same-replica watch is the baseline, measured in the same run.
        same_start, same_reply = await watch_delays(on_one, on_one, first.case_id, WATCHED_CHANGES)
        cross_start, cross_reply = await watch_delays(
            on_one, on_two, first.case_id, WATCHED_CHANGES
        )
        print(
            f"\nwatch delay over {WATCHED_CHANGES} changes each (machine shared):\n"
            f"  cross-replica, from the write's reply: {percentiles(cross_reply)}\n"
            f"  same replica,  from the write's reply: {percentiles(same_reply)}\n"
            f"  cross-replica, from the write's start: {percentiles(cross_start)}\n"
            f"  same replica,  from the write's start: {percentiles(same_start)}"
        )
        assert cross_reply[-1] < 5, cross_reply  # it arrives
        closed = await resolve_and_close(on_two, first.case_id)
        assert closed.header.relationship_owner_id == "bank-a"
        assert list(closed.header.resolver_ids) == ["telco-a"]

        # Load over both replicas; replica 1 is SIGKILLed a third of the way in.
        bank = c.api("bank-a", Role.ADVISOR)
        streams_before = sum(p.streams for p in partners.values())

        async def open_one(i: int) -> str:
            await asyncio.sleep(i * 0.08)
            request = open_request(service_id, f"open-{tag}-{i}", f"c-{tag}-{i}")
            reply = await with_retries(lambda: bank.cases.OpenCase(request, timeout=10))
            assert isinstance(reply, cases_pb2.OpenCaseResponse)
            case_ids.add(reply.case_id)
            return reply.case_id

        async def kill_one() -> None:
            await asyncio.sleep(LOAD * 0.08 / 3)
            one.kill()

        opened, _ = await asyncio.gather(
            asyncio.gather(*(open_one(i) for i in range(LOAD))), kill_one()
        )
        assert len(set(opened)) == LOAD
        # Every incident reaches an owner and a resolution through the survivor.
        finals = await asyncio.gather(*(resolve_and_close(bank, case) for case in opened))
        assert {v.header.relationship_owner_id for v in finals} == {"bank-a"}
        resubscribed = sum(p.streams for p in partners.values()) - streams_before
        size = await audit_verifies(
            c.api("coopgate", Role.COMPLIANCE, only=two),
            c.api("coopgate", Role.COMPLIANCE, only=two),
            c.workdir,
            c.address(two),
            c.credentials("coopgate", Role.COMPLIANCE),
        )

    # Nothing twice: no item given again after its acknowledgement, and in the store
    # exactly the work and notifications each incident calls for.
    for partner in partners.values():
        assert partner.again_after_ack == [], partner.partner
    store = create_store(c.database_url)
    try:
        async with store.read() as conn:
            per_case = await work_kinds(conn, c.keys, case_ids)
            stored_cases = (
                await conn.execute(
                    select(func.count()).select_from(cases).where(cases.c.service_id == service_id)
                )
            ).scalar_one()
            decided = set(
                (
                    await conn.execute(
                        select(audit_entries.c.case_id).where(audit_entries.c.kind == "ownership")
                    )
                ).scalars()
            )
            decided_in_log = len(decided & case_ids)
    finally:
        await store.close()
    assert_work_once(
        per_case, case_ids, len(CHAIN), ("received", "diagnosing", "owner-assigned", "resolved")
    )
    notified = Counter(m for p in partners.values() for (_, m) in p.notifications)
    counts = (stored_cases, decided_in_log, len(case_ids))
    assert counts == (LOAD + 1,) * 3, counts
    visible = await temporal_visible(c, case_ids)
    assert sorted(visible) == sorted(case_ids)
    print(
        f"replicas: {LOAD + 1} incidents, 1 replica SIGKILLed, store {stored_cases} cases, "
        f"Temporal {len(visible)} workflows, audit {decided_in_log} cases, log size {size}, "
        f"work items {sum(sum(k.values()) for k in per_case.values())}, "
        f"notifications delivered {sum(notified.values())}, calls retried {RETRIES['calls']}, "
        f"work streams opened again {resubscribed}"
    )


async def temporal_visible(c: Cluster, case_ids: set[str]) -> list[str]:
    """The cases' workflows as Temporal's visibility lists them (it catches up shortly)."""
    client = await Client.connect(c.temporal_address)
    visible: list[str] = []
    async with asyncio.timeout(20):
        while sorted(visible) != sorted(case_ids):
            visible = [
                w.id
                async for w in client.list_workflows(f"TaskQueue = '{c.task_queue}'")
                if w.id in case_ids
            ]
            await asyncio.sleep(0.5)
    return visible
