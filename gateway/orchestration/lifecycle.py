"""Activities that load the incident and record the case's status."""

from __future__ import annotations

import datetime as dt
from typing import Any

from coopgate.v1 import admin_pb2, cases_pb2, work_pb2
from sqlalchemy import bindparam, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection
from temporalio import activity

from gateway.audit.log import AuditLog, AuditRecord
from gateway.cases.rows import CASE_BY_ID
from gateway.cases.service import Cases
from gateway.orchestration.shared import tell
from gateway.store import Store
from gateway.store.schema import (
    case_keys,
    case_participants,
    cases,
    services,
    sharing_agreements,
)
from gateway.store.statements import execute
from workflows.contracts import (
    LOAD_INCIDENT,
    RECORD_CASE_ERASED,
    RECORD_CASE_STATUS,
    CaseErasedInput,
    ComponentSpec,
    IncidentContext,
    LoadIncidentInput,
    PolicySpec,
    RecordCaseStatusInput,
    ServiceLevelSpec,
)


class LifecycleActivities:
    def __init__(self, store: Store, cases: Cases, audit: AuditLog) -> None:
        self._store = store
        self._cases = cases
        self._audit = audit

    @activity.defn(name=LOAD_INCIDENT)
    async def load_incident(self, request: LoadIncidentInput) -> IncidentContext:
        async with self._store.read() as conn:
            return await incident_context(conn, request.case_id)

    @activity.defn(name=RECORD_CASE_STATUS)
    async def record_case_status(self, request: RecordCaseStatusInput) -> None:
        await self._cases.progress.record_status(request.case_id, request.status)
        if request.status == "CLOSED":
            await self._tell_participants_closed(request.case_id)

    @activity.defn(name=RECORD_CASE_ERASED)
    async def record_case_erased(self, request: CaseErasedInput) -> None:
        """The case's workflow ended because its customer was erased (or its retention
        ended): in the audit log."""
        async with self._store.write() as conn:
            subject = (
                await conn.execute(
                    select(cases.c.subject_id).where(cases.c.case_id == request.case_id)
                )
            ).scalar()
            await self._audit.record_in(
                conn,
                [
                    AuditRecord(
                        kind="erasure",
                        action="case.workflow_ended",
                        actor_partner_id="coopgate",
                        subject_id=subject or "",
                        case_id=request.case_id,
                        reason="the case's customer was erased: its workflow ended",
                        details=(("why", request.reason),),
                    )
                ],
            )

    async def _tell_participants_closed(self, case_id: str) -> None:
        async with self._store.write() as conn:
            case = (await execute(conn, CASE_BY_ID, {"case_id": case_id})).one()
            rows = (
                await conn.execute(
                    select(case_participants.c.partner_id, case_participants.c.role).where(
                        case_participants.c.case_id == case_id
                    )
                )
            ).all()
            resolvers = sorted(p for p, role in rows if role == cases_pb2.PARTICIPANT_ROLE_RESOLVER)
            await tell(
                conn,
                {p for p, _ in rows},
                work_pb2.CaseNotice(
                    notice_id=f"{case_id}:closed",
                    case_id=case_id,
                    kind="closed",
                    message="the case is closed",
                    relationship_owner_id=case.relationship_owner_id or "",
                    resolver_ids=resolvers,
                ),
            )


# Statements built once (each incident reads its context twice).
_DEFINITION = select(services.c.definition).where(services.c.service_id == bindparam("service"))
_AGREEMENTS = (
    select(sharing_agreements.c.definition)
    .where(
        sharing_agreements.c.service_id == bindparam("service"),
        sharing_agreements.c.valid_from <= bindparam("now"),
        or_(
            sharing_agreements.c.valid_until.is_(None),
            sharing_agreements.c.valid_until > bindparam("now"),
        ),
    )
    .order_by(sharing_agreements.c.agreement_id)
)
_WRAPPED_KEY = select(case_keys.c.wrapped_key).where(case_keys.c.case_id == bindparam("case_id"))


async def incident_context(
    conn: AsyncConnection, case_id: str, case: Any | None = None
) -> IncidentContext:
    """What the incident workflow decides on: the service chain, its ownership policy
    (an agreement with the partner first contacted may override it) and service levels.
    ``case``: the case's row when the caller read it already in this transaction."""
    if case is None:
        case = (await execute(conn, CASE_BY_ID, {"case_id": case_id})).one()
    definition = (await execute(conn, _DEFINITION, {"service": case.service_id})).scalar_one()
    now = dt.datetime.now(dt.UTC)
    agreements = [
        admin_pb2.SharingAgreement.FromString(d)
        for d in (
            await execute(conn, _AGREEMENTS, {"service": case.service_id, "now": now})
        ).scalars()
    ]
    service = admin_pb2.Service.FromString(definition)
    first = case.first_contact_partner_id
    policy = service.ownership_policy
    policy_from = "the service"
    for agreement in agreements:
        if agreement.recipient_partner_id == first and agreement.HasField("ownership_override"):
            override = agreement.ownership_override
            merged = admin_pb2.OwnershipPolicy()
            merged.CopyFrom(policy)
            if override.host_partner_id:
                merged.host_partner_id = override.host_partner_id
            if override.min_fault_confidence:
                merged.min_fault_confidence = override.min_fault_confidence
            if override.HasField("acceptance_deadline"):
                merged.acceptance_deadline.CopyFrom(override.acceptance_deadline)
            policy, policy_from = merged, f"agreement {agreement.agreement_id}"
            break
    return IncidentContext(
        case_id=case.case_id,
        service_id=case.service_id,
        first_contact_partner_id=first,
        components=tuple(
            ComponentSpec(
                name=c.name,
                partner_id=c.partner_id,
                diagnosis_deadline_s=_agreed_deadline(agreements, c, first),
            )
            for c in service.components
        ),
        policy=PolicySpec(
            host_partner_id=policy.host_partner_id,
            min_fault_confidence=policy.min_fault_confidence,
            acceptance_deadline_s=policy.acceptance_deadline.ToTimedelta().total_seconds(),
            source=policy_from,
        ),
        service_level=ServiceLevelSpec(
            time_to_owner_s=service.service_level.time_to_owner.ToTimedelta().total_seconds(),
            time_to_resolution_s=(
                service.service_level.time_to_resolution.ToTimedelta().total_seconds()
            ),
            confirmation_window_s=(
                service.service_level.confirmation_window.ToTimedelta().total_seconds()
            ),
        ),
        opened_at_s=case.opened_at.timestamp(),
        erased=(await execute(conn, _WRAPPED_KEY, {"case_id": case_id})).scalar() is None,
    )


def _agreed_deadline(agreements: list[Any], component: Any, first_contact: str) -> float:
    """The component owner's diagnosis deadline: from its agreement with the
    partner first contacted when there is one, else any agreement it has as
    source for this service, else the service's default."""
    agreed = [
        a
        for a in agreements
        if a.source_partner_id == component.partner_id and a.HasField("source_diagnosis_deadline")
    ]
    agreed.sort(key=lambda a: a.recipient_partner_id != first_contact)
    if agreed:
        return float(agreed[0].source_diagnosis_deadline.ToTimedelta().total_seconds())
    return float(component.diagnosis_deadline.ToTimedelta().total_seconds())
