"""A bounded soak: incidents opened as fast as the stack takes them (a fixed number
in flight) for a bounded time, on a `coopgate gateway` and a `coopgate worker`
process over PostgreSQL and the Temporal dev server, seven partners answering over
two services, every case watched until it has an owner. At the end every case is accounted for
— the store, Temporal's visibility and the audit log count the same cases — and the
gateway's memory stopped growing.

Bounded for CI: ``COOPGATE_SOAK_INCIDENTS`` (default 2000) is the most it opens,
``COOPGATE_SOAK_SECONDS`` (default 90) the longest it keeps opening,
``COOPGATE_SOAK_IN_FLIGHT`` (default 24) how many incidents are open at once; it reports
how many it drove, at what rate, and how long each took to an owner."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from functools import partial

import grpc
import psutil
import pytest
from coopgate.v1 import cases_pb2
from sqlalchemy import func, select, text

from gateway.core.caller import Role
from gateway.store import create_store
from gateway.store.schema import audit_entries, cases
from tests.conftest import Api
from tests.scale.cluster import (
    Cluster,
    open_request,
    until_status,
    with_retries,
)
from tests.scale.conftest import quick_service
from tests.scale.counting import counting_partners
from tests.scale.test_replicas import temporal_visible

INCIDENTS = int(os.environ.get("COOPGATE_SOAK_INCIDENTS", "2000"))
SECONDS = float(os.environ.get("COOPGATE_SOAK_SECONDS", "90"))
IN_FLIGHT = int(os.environ.get("COOPGATE_SOAK_IN_FLIGHT", "24"))
#: Service -> (first contact, the partner whose component is at fault).
SERVICES = {"nfc-payment": ("bank-a", "telco-a"), "smart-heating": ("energy-a", "thermo-a")}
PARTNERS = ("telco-a", "bank-a", "acquirer-a", "handset-a", "thermo-a", "energy-a", "isp-a")


def _p(values: list[float], q: int) -> float:
    return sorted(values)[min(len(values) - 1, len(values) * q // 100)]


async def _until_owned(api: Api, case_id: str, seen: Counter[str]) -> None:
    """Until the case has an owner, told by a watch of it (pushed, not polled: polling
    every incident's view five times a second was most of the gateway's work and of the
    audit log, 157 entries per incident); a watch that ends early falls back to polling."""
    call = api.cases.WatchCase(
        cases_pb2.WatchCaseRequest(case_id=case_id, purpose="incident-resolution")
    )
    try:
        async with asyncio.timeout(90):
            async for response in call:
                seen["events"] += 1
                if response.header.status >= cases_pb2.CASE_STATUS_OWNED:
                    seen["watches saw an owner"] += 1
                    return
    except grpc.aio.AioRpcError:
        seen["watches ended early"] += 1
    except TimeoutError:
        seen["watches never told"] += 1  # the owner polled below tells whether it came
    finally:
        call.cancel()
    await until_status(api, case_id, cases_pb2.CASE_STATUS_OWNED, timeout=120)


@pytest.mark.soak
@pytest.mark.timeout(SECONDS + 240)  # opening, then the last incidents to an owner
async def test_soak_every_incident_accounted_for_and_memory_bounded(pg_cluster: Cluster) -> None:
    c = pg_cluster
    gateway, worker = c.add_gateway(), c.add_worker()
    gateway.start()
    worker.start()
    await c.serving(gateway)
    assert gateway.popen is not None
    process = psutil.Process(gateway.popen.pid)
    assert worker.popen is not None
    worker_process = psutil.Process(worker.popen.pid)

    def cpu() -> tuple[float, float]:
        return (
            sum(process.cpu_times()[:2]),
            sum(worker_process.cpu_times()[:2]),
        )

    tag = uuid.uuid4().hex[:8]
    admin = c.api("coopgate", Role.ADMIN)
    services = {
        await quick_service(admin, f"{base}-{tag}", deadline=20, base=base): roles
        for base, roles in SERVICES.items()
    }
    openers = {
        opener: [c.api(opener, Role.ADVISOR) for _ in range(2)] for opener, _ in services.values()
    }
    case_ids: set[str] = set()
    watched: Counter[str] = Counter()
    rss: list[tuple[int, float]] = []
    opened_in: list[float] = []
    owner_in: list[float] = []
    owned = 0
    async with counting_partners(
        lambda p: c.api(p), PARTNERS, case_ids, faulty="", accepting="", concurrency=16
    ) as partners:
        for partner in partners.values():
            partner.accepts = True
            partner.faulty = partner.partner in {f for _, f in services.values()}
        slots = asyncio.Semaphore(IN_FLIGHT)
        deadline = time.monotonic() + SECONDS
        started = time.monotonic()
        cpu_before = cpu()

        async def incident(i: int) -> None:
            nonlocal owned
            try:
                service_id = list(services)[i % len(services)]
                opener = services[service_id][0]
                api = openers[opener][i % 2]
                request = open_request(service_id, f"soak-{tag}-{i}", f"c-{tag}-{i}")
                began = time.monotonic()
                reply = await with_retries(partial(api.cases.OpenCase, request, timeout=20))
                assert isinstance(reply, cases_pb2.OpenCaseResponse)
                case_ids.add(reply.case_id)
                opened_in.append(time.monotonic() - began)
                await _until_owned(api, reply.case_id, watched)
                owner_in.append(time.monotonic() - began)
                owned += 1
            finally:
                slots.release()

        async def sample() -> None:
            while True:
                rss.append((len(case_ids), process.memory_info().rss / 2**20))
                await asyncio.sleep(SECONDS / 12)

        sampler = asyncio.create_task(sample())
        running: list[asyncio.Task[None]] = []
        i = 0
        while i < INCIDENTS and time.monotonic() < deadline:
            await slots.acquire()
            running.append(asyncio.create_task(incident(i)))
            i += 1
        await asyncio.gather(*running)
        sampler.cancel()
        took = time.monotonic() - started
        cpu_after = cpu()
        rss.append((i, process.memory_info().rss / 2**20))
        visible = await temporal_visible(c, case_ids)

    driven = len(case_ids)
    assert driven == i == owned
    assert driven >= 20, "the soak drove too few incidents to say anything"
    for partner in partners.values():
        assert partner.again_after_ack == [], partner.partner
    store = create_store(c.database_url)
    try:
        async with store.read() as conn:
            stored = (
                await conn.execute(
                    select(func.count()).select_from(cases).where(cases.c.service_id.in_(services))
                )
            ).scalar_one()
            size_mb = (
                await conn.execute(text("SELECT pg_database_size(current_database())"))
            ).scalar_one() / 2**20
            log_entries = (
                await conn.execute(select(func.count()).select_from(audit_entries))
            ).scalar_one()
            decided = set(
                (
                    await conn.execute(
                        select(audit_entries.c.case_id).where(audit_entries.c.kind == "ownership")
                    )
                ).scalars()
            )
    finally:
        await store.close()
    assert (stored, len(decided & case_ids), len(visible)) == (driven,) * 3
    # Every incident was waited for by a watch of its case: nearly all saw the owner
    # pushed (one ended early by the machine's load is polled instead, not a failure).
    assert watched["watches never told"] == 0, watched
    assert watched["watches saw an owner"] + watched["watches ended early"] == driven
    assert watched["watches saw an owner"] >= driven * 0.95, watched
    # Memory: what the second half of the run added is not more than the first half's
    # (a sample every twelfth of the run: caches fill, then level off).
    assert len(rss) >= 4, rss
    mid = rss[len(rss) // 2][1]
    first_half, second_half = mid - rss[0][1], rss[-1][1] - mid
    assert second_half <= max(first_half, 0) * 1.5 + 25, rss
    gateway_ms, worker_ms = (
        (after - before) * 1000 / driven
        for before, after in zip(cpu_before, cpu_after, strict=True)
    )
    answered = Counter({p.partner: p.seen["diagnosis_request"] for p in partners.values()})
    print(
        f"\nsoak: {driven} incidents in {took:.0f} s ({driven / took:.1f}/s, {IN_FLIGHT} in "
        f"flight), all owned; seconds to open p50 {_p(opened_in, 50):.2f} max "
        f"{max(opened_in):.1f}, to an owner p50 {_p(owner_in, 50):.1f} p90 "
        f"{_p(owner_in, 90):.1f} max {max(owner_in):.1f}; store {stored}, Temporal "
        f"{len(visible)}, audit "
        f"{len(decided & case_ids)}; {watched['watches saw an owner']} watches saw the "
        f"owner pushed ({watched['watches ended early']} ended early), {watched['events']} "
        "events; "
        f"diagnosis requests answered {dict(answered)}; CPU per incident: gateway "
        f"{gateway_ms:.0f} ms, worker {worker_ms:.0f} ms; gateway RSS (incidents, MB) "
        f"{[(n, round(m)) for n, m in rss]}; store {size_mb:.0f} MB, audit log "
        f"{log_entries} entries ({log_entries / driven:.0f} per incident)"
    )
