"""Activities that ask partners for a diagnosis and record those that do not answer."""

from __future__ import annotations

from coopgate.v1 import cases_pb2, work_pb2
from temporalio import activity

from gateway.cases.rows import CASE_BY_ID, CASE_STATUS_CATEGORY, INTERACTION_CATEGORY, append_event
from gateway.cases.service import Cases
from gateway.consent.rules import ConsentRules, Flow
from gateway.core.caller import Caller, Role
from gateway.crypto.pseudonyms import Pseudonyms
from gateway.orchestration.shared import ts
from gateway.store import Store
from gateway.store.statements import execute
from gateway.work.delivery import enqueue
from workflows.contracts import (
    RECORD_UNRESPONSIVE,
    REQUEST_DIAGNOSIS,
    DiagnosisRequestInput,
    UnresponsiveInput,
)

FINDINGS_CATEGORY = "diagnostic.findings"
DIAGNOSIS_PURPOSE = "incident-diagnosis"


class DiagnosisActivities:
    def __init__(
        self, store: Store, cases: Cases, rules: ConsentRules, pseudonyms: Pseudonyms
    ) -> None:
        self._store = store
        self._cases = cases
        self._rules = rules
        self._pseudonyms = pseudonyms

    @activity.defn(name=REQUEST_DIAGNOSIS)
    async def request_diagnosis(self, request: DiagnosisRequestInput) -> None:
        """Send the partner a diagnosis request carrying only what consent lets it see."""
        async with self._store.write() as conn:
            case = (await execute(conn, CASE_BY_ID, {"case_id": request.case_id})).one()
            reader = Caller(partner_id=request.partner_id, role=Role.PARTNER, person_id="")
            local = await self._cases.local_ids.local_id(conn, request.partner_id, case.subject_id)
            diagnosis = work_pb2.DiagnosisRequest(
                request_id=request.request_id,
                case_id=case.case_id,
                service_id=case.service_id,
                component=request.component,
                customer_local_id=local,
                subject_id=self._pseudonyms.for_partner(request.partner_id, case.subject_id),
            )
            diagnosis.deadline.FromDatetime(ts(request.deadline_s))
            summary = self._cases.reader.sealer.open_text(
                await self._cases.reader.sealer.key(conn, case.case_id),
                case.summary,
                f"{case.case_id}/summary",
            )
            if request.partner_id == case.first_contact_partner_id:
                diagnosis.summary = summary
            else:
                flow = Flow(case.first_contact_partner_id, INTERACTION_CATEGORY)
                decided = await self._rules.decide(
                    conn,
                    reader=reader,
                    subject_id=case.subject_id,
                    service_id=case.service_id,
                    purpose=DIAGNOSIS_PURPOSE,
                    flows=[flow],
                    case_id=case.case_id,
                )
                if decided[flow].allowed:
                    diagnosis.summary = summary
            await enqueue(
                conn,
                f"{request.request_id}:diagnosis",
                request.partner_id,
                work_pb2.WorkItem(diagnosis_request=diagnosis),
                # It may name the partner's id for the customer, and carry the summary.
                sealed_for=(self._cases.reader.sealer, case.subject_id),
            )

    @activity.defn(name=RECORD_UNRESPONSIVE)
    async def record_unresponsive(self, request: UnresponsiveInput) -> None:
        async with self._store.write() as conn:
            finding = cases_pb2.Finding(
                finding_id=f"unresponsive:{request.request_id}",
                partner_id=request.partner_id,
                component=request.component,
                status=cases_pb2.FINDING_STATUS_UNRESPONSIVE,
                category=FINDINGS_CATEGORY,
            )
            finding.reported_at.GetCurrentTime()
            item = cases_pb2.TimelineItem(finding=finding)
            item.occurred_at.CopyFrom(finding.reported_at)
            await append_event(
                conn,
                self._cases.reader.sealer,
                request.case_id,
                item,
                source_partner_id="",
                category=CASE_STATUS_CATEGORY,
                dedup_key=finding.finding_id,
            )
