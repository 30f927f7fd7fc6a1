"""Kill anything, lose nothing: the gateway, the worker and the Temporal dev server
(each a process of its own, on a SQLite store and the dev server's own state file)
are SIGKILLed in the middle of incidents, each alone and then all at once, and
started again. Every incident still reaches an owner and a resolution; no partner is
given an item again after acknowledging it; the store holds exactly the work and the
customer notifications each incident calls for; the audit log verifies. And a case
opened while Temporal is down gets its workflow with no retry from its caller."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path

import grpc
import pytest
from coopgate.v1 import cases_pb2
from sqlalchemy import select

from gateway.core.caller import Role
from gateway.stack import Pki
from gateway.store import create_store
from gateway.store.schema import cases, workflow_starts
from partners import PartnerCredentials
from tests.scale.cluster import (
    Cluster,
    Process,
    assert_work_once,
    audit_verifies,
    dev_server,
    keys_environment,
    open_request,
    resolve_and_close,
    until_status,
    with_retries,
    work_kinds,
)
from tests.scale.conftest import CHAIN, quick_service, seed
from tests.scale.counting import counting_partners

#: Incidents opened before each fault.
PER_FAULT = 3
FAULTS = ("gateway", "worker", "temporal", "all")


@pytest.fixture
async def own_cluster(
    pki: Pki, credentials: Callable[[str, Role], PartnerCredentials], tmp_path: Path
) -> AsyncIterator[tuple[Cluster, Process]]:
    temporal = dev_server(tmp_path)
    temporal.start()
    cluster = Cluster(
        workdir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'coopgate.db'}",
        temporal_address=f"127.0.0.1:{temporal.args[temporal.args.index('--port') + 1]}",
        task_queue=f"tq-{uuid.uuid4()}",
        tls=pki.server,
        keys=keys_environment(tmp_path / "vault"),
        credentials=credentials,
    )
    try:
        async with asyncio.timeout(60):
            while True:  # the dev server serves once a client connects
                try:
                    await seed(cluster)
                    break
                except RuntimeError:
                    assert temporal.alive(), temporal.tail()
                    await asyncio.sleep(0.5)
        yield cluster, temporal
    finally:
        await cluster.close()
        temporal.stop()


@pytest.mark.timeout(300)
async def test_sigkill_of_gateway_worker_temporal_alone_and_together_loses_nothing(
    own_cluster: tuple[Cluster, Process],
) -> None:
    c, temporal = own_cluster
    gateway, worker = c.add_gateway(), c.add_worker()
    gateway.start()
    worker.start()
    await c.serving(gateway)
    tag = uuid.uuid4().hex[:8]
    service_id = await quick_service(c.api("coopgate", Role.ADMIN), f"nfc-{tag}")
    bank = c.api("bank-a", Role.ADVISOR)
    case_ids: set[str] = set()
    injected: Counter[str] = Counter()
    async with counting_partners(
        lambda p: c.api(p), CHAIN.values(), case_ids, faulty="telco-a", accepting="bank-a"
    ) as partners:
        for fault in FAULTS:
            opened: list[str] = []
            for i in range(PER_FAULT):
                name = f"{tag}-{fault}-{i}"
                request = open_request(service_id, f"open-{name}", f"c-{name}")
                reply = await with_retries(partial(bank.cases.OpenCase, request, timeout=10))
                assert isinstance(reply, cases_pb2.OpenCaseResponse)
                opened.append(reply.case_id)
                case_ids.add(reply.case_id)
            # Mid-incident: the first is being diagnosed.
            await until_status(bank, opened[0], cases_pb2.CASE_STATUS_DIAGNOSING)
            victims = {
                "gateway": [gateway],
                "worker": [worker],
                "temporal": [temporal],
                "all": [temporal, gateway, worker],
            }[fault]
            for victim in victims:
                victim.kill()
                injected[victim.name.split("-")[0]] += 1
            await asyncio.sleep(1)
            for victim in victims:  # the dev server first: the others reconnect to it
                victim.start()
            if gateway in victims:
                await c.serving(gateway)
            finals = await asyncio.gather(*(resolve_and_close(bank, case) for case in opened))
            assert {v.header.relationship_owner_id for v in finals} == {"bank-a"}, fault
        size = await audit_verifies(
            c.api("coopgate", Role.COMPLIANCE),
            c.api("coopgate", Role.COMPLIANCE),
            c.workdir,
            c.address(gateway),
            c.credentials("coopgate", Role.COMPLIANCE),
        )

    for partner in partners.values():
        assert partner.again_after_ack == [], partner.partner
    store = create_store(c.database_url)
    try:
        async with store.read() as conn:
            per_case = await work_kinds(conn, c.keys, case_ids)
    finally:
        await store.close()
    assert_work_once(
        per_case,
        case_ids,
        len(CHAIN),
        ("received", "diagnosing", "owner-assigned", "resolved", "closed"),
    )
    stored: Counter[str] = sum(per_case.values(), Counter())
    delivered = sum(sum(p.seen.values()) for p in partners.values())
    print(
        f"\nfaults: {len(case_ids)} incidents; SIGKILLs {dict(injected)}; work items stored "
        f"{dict(stored)} (each case: {len(CHAIN)} diagnosis requests, 1 offer, 1 notification "
        f"per milestone, as expected); deliveries seen {delivered}, again after ack 0; "
        f"audit log {size} entries verified"
    )


@pytest.mark.timeout(240)
async def test_a_case_opened_while_temporal_is_down_gets_its_workflow_with_no_retry(
    own_cluster: tuple[Cluster, Process],
) -> None:
    """OpenCase commits the case, then cannot start its workflow (the dev server is
    SIGKILLed); the caller never retries. Once Temporal is back, a replica's sweep of
    cases without their workflow starts it, and the incident reaches its owner."""
    c, temporal = own_cluster
    c.extra_env.update(
        COOPGATE_WORKFLOW_START_SWEEP_SECONDS="2", COOPGATE_WORKFLOW_START_GRACE_SECONDS="1"
    )
    gateway, worker = c.add_gateway(), c.add_worker()
    gateway.start()
    worker.start()
    await c.serving(gateway)
    tag = uuid.uuid4().hex[:8]
    service_id = await quick_service(c.api("coopgate", Role.ADMIN), f"nfc-{tag}")
    bank = c.api("bank-a", Role.ADVISOR)
    case_ids: set[str] = set()
    async with counting_partners(
        lambda p: c.api(p), CHAIN.values(), case_ids, faulty="telco-a", accepting="bank-a"
    ):
        temporal.kill()
        request = open_request(service_id, f"open-{tag}", f"c-{tag}")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await bank.cases.OpenCase(request, timeout=20)
        assert failed.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ), failed.value
        store = create_store(c.database_url)
        try:
            async with store.read() as conn:
                (case_id,) = (
                    await conn.execute(
                        select(cases.c.case_id).where(cases.c.service_id == service_id)
                    )
                ).scalars()
                assert (
                    await conn.execute(
                        select(workflow_starts.c.case_id).where(
                            workflow_starts.c.case_id == case_id
                        )
                    )
                ).scalar() == case_id
        finally:
            await store.close()
        case_ids.add(case_id)
        temporal.start()
        owned = await until_status(bank, case_id, cases_pb2.CASE_STATUS_OWNED, timeout=150)
    assert owned.header.relationship_owner_id == "bank-a"
    print(f"\nswept: the case opened while Temporal was down reached its owner ({case_id})")
