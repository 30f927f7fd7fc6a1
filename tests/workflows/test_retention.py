"""Retention on Temporal's clock, under the time-skipping test server, on SQLite and
PostgreSQL: a case with markers in the customer's local id, the summary, an
interaction, a finding, a consent request and the owner's resolution, driven through
the domain and the workflow to CLOSED; the stack's own `RetentionWorkflow` (started by
`open_runtime`) shreds it once the retention period has passed on the workflow's clock,
audited like an erasure, every participant told; then, with the stack stopped cleanly,
no marker is in any file of the data directory nor in any column of any table."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

from coopgate.v1 import cases_pb2, common_pb2, consents_pb2, work_pb2
from sqlalchemy import select
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from gateway.orchestration.temporal import create_worker
from gateway.settings import Settings
from gateway.stack import open_runtime
from gateway.store import create_store
from gateway.store.schema import audit_entries, case_keys, work_items
from tests.at_rest import found_in_columns, found_in_files, log_verifies
from tests.helpers import queued_items
from tests.workflows.driver import Incident
from tests.workflows.test_incident_timeskipping import NFC, all_answer
from workflows import IncidentWorkflow

RETENTION_DAYS = 30


async def _closed_case(incident: Incident, m: dict[str, str]) -> None:
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
    await incident.answer_offer("bank-a", accept=True)
    await incident.resolve("bank-a", m["resolution"])
    await incident.confirm("bank-a")
    handle = incident.env.client.get_workflow_handle(incident.case_id)
    assert (await handle.result())["status"] == "CLOSED"


async def test_a_closed_case_is_shredded_when_its_retention_ends_on_temporals_clock(
    skipping_env: WorkflowEnvironment, database_url: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:12]
    m = {
        "local id": f"cust-L{tag}",
        "summary": f"S{tag} the phone will not pay",
        "note": f"N{tag} called back from the shop",
        "finding": f"F{tag}-evidence",
        "reason": f"R{tag} to see the card check",
        "resolution": f"Q{tag} applet reinstalled",
    }
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
        incident = Incident(runtime, skipping_env)
        await _closed_case(incident, m)
        store = runtime.store
        before = await found_in_columns(store, m)
        # The search finds what is there (the stored answers, the sealed rest not).
        assert {"summary", "note", "finding"} <= before.keys(), before
        assert "local id" not in before, before

        await skipping_env.sleep(timedelta(days=RETENTION_DAYS + 1))
        key = select(case_keys.c.wrapped_key).where(case_keys.c.case_id == incident.case_id)
        async with asyncio.timeout(20):
            while True:
                async with store.read() as conn:
                    if (await conn.execute(key)).scalar() is None:
                        break
                await asyncio.sleep(0.05)

        async with store.read() as conn:
            actions = [
                bytes(c)
                for c in (
                    await conn.execute(
                        select(audit_entries.c.canonical).where(
                            audit_entries.c.case_id == incident.case_id,
                            audit_entries.c.kind == "erasure",
                        )
                    )
                ).scalars()
            ]
        assert [a for a in actions if b"case.retention_expired" in a]
        await log_verifies(store)
        # Every participant is told on its work stream (as the stream sends it).
        notices = await queued_items(runtime, work_items.c.work_id.like("erasure-%"))
        told = {}
        async with store.read() as conn:
            for item in notices:
                partner = (
                    await conn.execute(
                        select(work_items.c.partner_id).where(work_items.c.work_id == item.work_id)
                    )
                ).scalar_one()
                told[partner] = item.erasure_notice
        assert sorted(told) == sorted(set(NFC.values()))
        for notice in told.values():
            assert notice.reason == work_pb2.ERASURE_REASON_RETENTION_EXPIRED
            assert list(notice.case_ids) == [incident.case_id]
            assert notice.customer_local_id == ""  # the customer stays; the case goes
        retention = skipping_env.client.get_workflow_handle(f"retention-{settings.task_queue}")
        assert (await retention.describe()).status == WorkflowExecutionStatus.RUNNING
        incident_run = skipping_env.client.get_workflow_handle_for(
            IncidentWorkflow.run, incident.case_id
        )
        assert (await incident_run.describe()).status == WorkflowExecutionStatus.COMPLETED
        await retention.terminate("test finished")
    # Stopped cleanly: nothing of the case is readable in any file or any column.
    after = found_in_files(data_dir, m)
    if postgres:
        store = create_store(database_url)
        try:
            after.update(await found_in_columns(store, m))
        finally:
            await store.close()
    else:
        assert (data_dir / "coopgate.db").stat().st_size > 0
    assert after == {}, f"found after retention expiry: {after} (before: {before})"
