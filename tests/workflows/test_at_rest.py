"""Erasure and retention at rest, under the time-skipping test server, on SQLite and
PostgreSQL (issue 18). Two customers' cases, each with markers in the customer's local
id, the summary, an interaction, a finding, a consent request and the owner's
resolution (the first also in a consent grant), driven through the domain's calls and
the workflow to CLOSED. The first customer is erased (`EraseCustomer`): the bank's
work stream sends it the erasure notice naming its own id, the acknowledgement is
logged, the subject access report says what was erased and when, holding no marker.
The second customer's case is shredded by the stack's own `RetentionWorkflow` once the
retention period has passed on Temporal's clock, audited like an erasure, every
participant told. The log verifies. Then, with the stack stopped cleanly, no marker is
in any file of the data directory nor in any column of any table."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import AsyncGenerator
from datetime import timedelta
from pathlib import Path
from typing import cast

from coopgate.v1 import (
    admin_pb2,
    audit_pb2,
    cases_pb2,
    common_pb2,
    consents_pb2,
    identity_pb2,
    work_pb2,
)
from sqlalchemy import select
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from gateway.core.caller import Caller, Role
from gateway.orchestration.temporal import create_worker
from gateway.settings import Settings
from gateway.stack import open_runtime
from gateway.store import create_store
from gateway.store.schema import audit_entries, case_keys, work_items
from tests.at_rest import found_in_columns, found_in_files, log_verifies
from tests.helpers import queued_items
from tests.workflows.driver import ADMIN, Incident
from tests.workflows.test_incident_timeskipping import NFC, all_answer

RETENTION_DAYS = 30


def _markers(name: str) -> dict[str, str]:
    tag = f"{name}{uuid.uuid4().hex[:12]}"
    return {
        "local id": f"cust-L{tag}",
        "summary": f"S{tag} the phone will not pay",
        "note": f"N{tag} called back from the shop",
        "finding": f"F{tag}-evidence",
        "reason": f"R{tag} to see the card check",
        "resolution": f"Q{tag} applet reinstalled",
        "consent": f"C{tag}-notice",
    }


async def _closed_case(incident: Incident, m: dict[str, str], *, grant: bool) -> str:
    incident.case_id = ""
    await incident.open("bank-a", "nfc-payment", customer=m["local id"], summary=m["summary"])
    intake = incident.runtime.domain.cases.intake
    await intake.append_interaction(
        incident.caller("bank-a"),
        cases_pb2.AppendInteractionRequest(
            idempotency_key=uuid.uuid4().hex,
            case_id=incident.case_id,
            interaction=cases_pb2.Interaction(channel=common_pb2.CHANNEL_APP, summary=m["note"]),
        ),
    )
    await intake.submit_finding(
        incident.caller("telco-a"),
        cases_pb2.SubmitFindingRequest(
            idempotency_key=uuid.uuid4().hex,
            case_id=incident.case_id,
            finding=cases_pb2.Finding(
                component="sim-secure-element",
                status=cases_pb2.FINDING_STATUS_FAULTY,
                confidence=0.92,
                fault_code="SE_LOCKED",
                evidence_ref=m["finding"],
            ),
        ),
    )
    await all_answer(incident, {}, {k: v for k, v in NFC.items() if v != "telco-a"})
    await incident.runtime.domain.consents.request(
        incident.caller("bank-a"),
        consents_pb2.RequestConsentRequest(
            idempotency_key=uuid.uuid4().hex,
            case_id=incident.case_id,
            source_partner_id="telco-a",
            categories=["device.sim"],
            purposes=["incident-resolution"],
            reason=m["reason"],
        ),
    )
    if grant:
        await incident.runtime.domain.consents.grant(
            incident.caller("bank-a"),
            consents_pb2.GrantConsentRequest(
                idempotency_key=uuid.uuid4().hex,
                customer_local_id=m["local id"],
                source_partner_id="telco-a",
                recipient_partner_ids=["bank-a"],
                categories=["device.sim"],
                purposes=["incident-resolution"],
                channel=common_pb2.CHANNEL_PHONE,
                notice_version=m["consent"],
            ),
        )
    await incident.answer_offer("bank-a", accept=True)
    await incident.resolve("bank-a", m["resolution"])
    await incident.confirm("bank-a")
    handle = incident.env.client.get_workflow_handle(incident.case_id)
    assert (await handle.result())["status"] == "CLOSED"
    return incident.case_id


async def _erasure_notice(incident: Incident, local_id: str) -> work_pb2.WorkItem:
    """The erasure notice the bank's work stream sends, naming its own id; acknowledged."""
    work = incident.runtime.domain.work
    bank = Caller("bank-a", Role.PARTNER, "")
    stream = cast(
        AsyncGenerator[work_pb2.SubscribeResponse],
        work.subscribe(bank, work_pb2.SubscribeRequest(max_in_flight=100)),
    )
    try:
        async with asyncio.timeout(20):
            async for response in stream:
                item = response.item
                if item.HasField("erasure_notice") and (
                    item.erasure_notice.customer_local_id == local_id
                ):
                    break
    finally:
        await stream.aclose()
    await work.acknowledge(
        bank, work_pb2.AcknowledgeRequest(idempotency_key=uuid.uuid4().hex, work_ids=[item.work_id])
    )
    return item


async def _participants_told(
    incident: Incident, case_id: str, reason: work_pb2.ErasureReason.ValueType
) -> dict[str, work_pb2.ErasureNotice]:
    """Each partner's erasure notice naming the case, as its stream would send it."""
    told = {}
    async with incident.runtime.store.read() as conn:
        for item in await queued_items(incident.runtime, work_items.c.work_id.like("erasure-%")):
            if list(item.erasure_notice.case_ids) == [case_id]:
                partner = (
                    await conn.execute(
                        select(work_items.c.partner_id).where(work_items.c.work_id == item.work_id)
                    )
                ).scalar_one()
                assert item.erasure_notice.reason == reason
                told[partner] = item.erasure_notice
    return told


async def _erasure_actions(incident: Incident, case_id: str) -> list[str]:
    async with incident.runtime.store.read() as conn:
        return [
            json.loads(bytes(c))["action"]
            for c in (
                await conn.execute(
                    select(audit_entries.c.canonical)
                    .where(audit_entries.c.kind == "erasure")
                    .where(audit_entries.c.case_id == case_id)
                )
            ).scalars()
        ]


async def test_nothing_of_an_erased_or_expired_case_is_at_rest(
    skipping_env: WorkflowEnvironment, database_url: str, tmp_path: Path
) -> None:
    erased, expired = _markers("E"), _markers("X")
    markers = {**erased, **{f"x {k}": v for k, v in expired.items()}}
    postgres = database_url.startswith("postgres")
    data_dir = tmp_path / "data"
    settings = Settings(
        data_dir=data_dir,
        # SQLite: the embedded store's own place, DATA_DIR/coopgate.db.
        database_url=database_url if postgres else None,
        task_queue=f"tq-{uuid.uuid4()}",
        case_retention_days=RETENTION_DAYS,
        # Sweeps at 0, 10, 20 and 30 days; the one at 30 finds the case due seconds
        # later and sleeps until then.
        retention_sweep_seconds=10 * 86400,
    )
    async with (
        open_runtime(settings, client=skipping_env.client, seed=True) as runtime,
        create_worker(skipping_env.client, settings.task_queue, runtime.activities),
    ):
        await runtime.domain.agreements.define_sharing_agreement(
            ADMIN,
            admin_pb2.DefineSharingAgreementRequest(
                idempotency_key=uuid.uuid4().hex,
                agreement=admin_pb2.SharingAgreement(
                    source_partner_id="telco-a",
                    recipient_partner_id="bank-a",
                    service_id="nfc-payment",
                    categories=["device.sim"],
                    purposes=["incident-resolution"],
                ),
            ),
        )
        incident = Incident(runtime, skipping_env)
        erased_case = await _closed_case(incident, erased, grant=True)
        pseudonym = (await incident.view("bank-a")).header.subject_id
        expired_case = await _closed_case(incident, expired, grant=False)
        store = runtime.store
        before = await found_in_columns(store, markers)
        # The search finds what is there: the stored answers hold the summary, note and
        # finding, the consent its notice version; the local id, the consent request's
        # reason and the resolution are sealed (or kept as keyed hash) from the start.
        assert {"summary", "note", "finding", "consent"} <= before.keys(), before
        assert not {"local id", "reason", "resolution"} & before.keys(), before

        # EraseCustomer: the bank is told by its own id, every participant by the case.
        asked = dt.datetime.now(dt.UTC)
        answer = await runtime.domain.erasure.erase(
            Caller("bank-a", Role.ADVISOR, "bank-a-advisor"),
            identity_pb2.EraseCustomerRequest(
                idempotency_key=uuid.uuid4().hex, customer_local_id=erased["local id"]
            ),
        )
        assert answer.erased_cases == 1
        notice = (await _erasure_notice(incident, erased["local id"])).erasure_notice
        assert list(notice.case_ids) == [erased_case]
        assert notice.reason == work_pb2.ERASURE_REASON_CUSTOMER_REQUEST
        told = await _participants_told(
            incident, erased_case, work_pb2.ERASURE_REASON_CUSTOMER_REQUEST
        )
        assert sorted(told) == sorted(set(NFC.values()) - {"bank-a"})
        # The subject access report for the erased customer: what was erased and when.
        report = await runtime.domain.audit.subject_access_report(
            Caller("bank-a", Role.ADVISOR, "bank-a-advisor"),
            audit_pb2.SubjectAccessReportRequest(subject_id=pseudonym),
        )
        steps = [(e.action, list(e.case_ids)) for e in report.erasures]
        assert steps[0] == (audit_pb2.ERASURE_ACTION_CUSTOMER_ERASED, [erased_case])
        assert (audit_pb2.ERASURE_ACTION_RECIPIENT_ACKNOWLEDGED, []) in steps
        assert report.erasures[0].at.ToDatetime(dt.UTC) >= asked
        raw = report.SerializeToString()
        assert not [name for name, marker in erased.items() if marker.encode() in raw]

        # Retention, on Temporal's clock: a month and a day later.
        await skipping_env.sleep(timedelta(days=RETENTION_DAYS + 1))
        key = select(case_keys.c.wrapped_key).where(case_keys.c.case_id == expired_case)
        async with asyncio.timeout(20):
            while True:
                async with store.read() as conn:
                    if (await conn.execute(key)).scalar() is None:
                        break
                await asyncio.sleep(0.05)
        assert "case.retention_expired" in await _erasure_actions(incident, expired_case)
        told = await _participants_told(
            incident, expired_case, work_pb2.ERASURE_REASON_RETENTION_EXPIRED
        )
        assert sorted(told) == sorted(set(NFC.values()))
        assert {n.customer_local_id for n in told.values()} == {""}  # the customer stays
        await log_verifies(store)
        retention = skipping_env.client.get_workflow_handle(f"retention-{settings.task_queue}")
        assert (await retention.describe()).status == WorkflowExecutionStatus.RUNNING
        await retention.terminate("test finished")
    # Stopped cleanly: nothing of either case is readable in any file or any column.
    after = found_in_files(data_dir, markers)
    if postgres:
        store = create_store(database_url)
        try:
            after.update(await found_in_columns(store, markers))
        finally:
            await store.close()
    else:
        assert (data_dir / "coopgate.db").stat().st_size > 0
    assert after == {}, f"found after erasure and retention: {after} (before: {before})"
