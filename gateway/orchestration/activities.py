"""Activity implementations of the contracts declared in ``workflows.contracts``.

The workflow never touches the store: these activities update the case
projection and hand work to partners. Each is idempotent, keyed by ids the
workflow derives deterministically, so a retried activity or a restarted
worker never records or sends anything twice.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from coopgate.v1 import admin_pb2, cases_pb2, work_pb2
from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from temporalio import activity

from gateway.audit.log import AuditLog, AuditRecord
from gateway.cases.rows import (
    CASE_STATUS_CATEGORY,
    INTERACTION_CATEGORY,
    append_event,
    set_status,
)
from gateway.cases.service import Cases
from gateway.consent.rules import ConsentRules, Flow
from gateway.core.caller import Caller, Role
from gateway.crypto.pseudonyms import Pseudonyms
from gateway.store import Store
from gateway.store.schema import (
    case_events,
    case_kpis,
    case_participants,
    cases,
    services,
    sharing_agreements,
    subject_links,
)
from gateway.work.delivery import enqueue
from workflows.contracts import (
    ASSIGN_OWNER,
    ESCALATE,
    LOAD_INCIDENT,
    NOTIFY_CUSTOMER,
    OFFER_OWNERSHIP,
    RECORD_CASE_STATUS,
    RECORD_KPIS,
    RECORD_OWNERSHIP_DECISION,
    RECORD_UNRESPONSIVE,
    REQUEST_DIAGNOSIS,
    AssignOwnerInput,
    ComponentSpec,
    DiagnosisRequestInput,
    EscalateInput,
    IncidentContext,
    KpiInput,
    LoadIncidentInput,
    NotifyInput,
    OfferInput,
    OwnershipDecision,
    PolicySpec,
    RecordCaseStatusInput,
    RecordDecisionInput,
    ServiceLevelSpec,
    UnresponsiveInput,
)

FINDINGS_CATEGORY = "diagnostic.findings"
DIAGNOSIS_PURPOSE = "incident-diagnosis"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ts(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def _decision_proto(decision: OwnershipDecision, owner: str = "") -> cases_pb2.OwnershipDecision:
    proto = cases_pb2.OwnershipDecision(
        decision_id=decision.decision_id,
        relationship_owner_id=owner or decision.owner_candidates[0],
        resolver_ids=list(decision.resolver_ids),
        rule=decision.rule,
        explanation=decision.explanation,
    )
    proto.decided_at.FromDatetime(_now())
    return proto


class IncidentActivities:
    def __init__(
        self,
        store: Store,
        cases: Cases,
        rules: ConsentRules,
        audit: AuditLog,
        pseudonyms: Pseudonyms,
    ) -> None:
        self._store = store
        self._cases = cases
        self._rules = rules
        self._audit = audit
        self._pseudonyms = pseudonyms

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.load_incident,
            self.record_case_status,
            self.request_diagnosis,
            self.record_unresponsive,
            self.record_ownership_decision,
            self.offer_ownership,
            self.assign_owner,
            self.notify_customer,
            self.escalate,
            self.record_kpis,
        ]

    @activity.defn(name=LOAD_INCIDENT)
    async def load_incident(self, request: LoadIncidentInput) -> IncidentContext:
        async with self._store.read() as conn:
            case = (
                await conn.execute(select(cases).where(cases.c.case_id == request.case_id))
            ).one()
            definition = (
                await conn.execute(
                    select(services.c.definition).where(services.c.service_id == case.service_id)
                )
            ).scalar_one()
            now = dt.datetime.now(dt.UTC)
            agreements = [
                admin_pb2.SharingAgreement.FromString(d)
                for d in (
                    await conn.execute(
                        select(sharing_agreements.c.definition)
                        .where(
                            sharing_agreements.c.service_id == case.service_id,
                            sharing_agreements.c.valid_from <= now,
                            or_(
                                sharing_agreements.c.valid_until.is_(None),
                                sharing_agreements.c.valid_until > now,
                            ),
                        )
                        .order_by(sharing_agreements.c.agreement_id)
                    )
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
        )

    @activity.defn(name=RECORD_CASE_STATUS)
    async def record_case_status(self, request: RecordCaseStatusInput) -> None:
        await self._cases.progress.record_status(request.case_id, request.status)
        if request.status == "CLOSED":
            await self._tell_participants_closed(request.case_id)

    async def _tell_participants_closed(self, case_id: str) -> None:
        async with self._store.write() as conn:
            case = (await conn.execute(select(cases).where(cases.c.case_id == case_id))).one()
            rows = (
                await conn.execute(
                    select(case_participants.c.partner_id, case_participants.c.role).where(
                        case_participants.c.case_id == case_id
                    )
                )
            ).all()
            resolvers = sorted(p for p, role in rows if role == cases_pb2.PARTICIPANT_ROLE_RESOLVER)
            await _tell(
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

    @activity.defn(name=REQUEST_DIAGNOSIS)
    async def request_diagnosis(self, request: DiagnosisRequestInput) -> None:
        """Send the partner a diagnosis request carrying only what consent lets it see."""
        async with self._store.write() as conn:
            case = (
                await conn.execute(select(cases).where(cases.c.case_id == request.case_id))
            ).one()
            reader = Caller(partner_id=request.partner_id, role=Role.PARTNER, person_id="")
            local = await _local_id(conn, request.partner_id, case.subject_id)
            diagnosis = work_pb2.DiagnosisRequest(
                request_id=request.request_id,
                case_id=case.case_id,
                service_id=case.service_id,
                component=request.component,
                customer_local_id=local,
                subject_id=self._pseudonyms.for_partner(request.partner_id, case.subject_id),
            )
            diagnosis.deadline.FromDatetime(_ts(request.deadline_s))
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

    @activity.defn(name=RECORD_OWNERSHIP_DECISION)
    async def record_ownership_decision(self, request: RecordDecisionInput) -> None:
        decision = request.decision
        async with self._store.write() as conn:
            case = (
                await conn.execute(select(cases).where(cases.c.case_id == request.case_id))
            ).one()
            item = cases_pb2.TimelineItem(ownership_decision=_decision_proto(decision))
            item.occurred_at.CopyFrom(item.ownership_decision.decided_at)
            if not await append_event(
                conn,
                self._cases.reader.sealer,
                request.case_id,
                item,
                source_partner_id="",
                category=CASE_STATUS_CATEGORY,
                dedup_key=decision.decision_id,
            ):
                return
            await self._audit.record_in(
                conn,
                [
                    AuditRecord(
                        kind="ownership",
                        action="ownership.decided",
                        actor_partner_id="coopgate",
                        subject_id=case.subject_id,
                        case_id=case.case_id,
                        reason=decision.rule,
                        details=(
                            ("decision", decision.decision_id),
                            ("candidates", ",".join(decision.owner_candidates)),
                            ("resolvers", ",".join(decision.resolver_ids)),
                            (
                                "findings",
                                ";".join(
                                    f"{f.component}={f.status}@{f.confidence:.2f}"
                                    for f in request.findings
                                ),
                            ),
                        ),
                    )
                ],
            )

    @activity.defn(name=OFFER_OWNERSHIP)
    async def offer_ownership(self, request: OfferInput) -> None:
        offer = work_pb2.OwnershipOffer(
            offer_id=request.offer_id,
            case_id=request.case_id,
            decision=_decision_proto(request.decision, request.partner_id),
        )
        offer.deadline.FromDatetime(_ts(request.deadline_s))
        async with self._store.write() as conn:
            case = (
                await conn.execute(
                    select(cases.c.service_id).where(cases.c.case_id == request.case_id)
                )
            ).one()
            offer.service_id = case.service_id
            await enqueue(
                conn,
                f"{request.offer_id}:offer",
                request.partner_id,
                work_pb2.WorkItem(ownership_offer=offer),
            )

    @activity.defn(name=ASSIGN_OWNER)
    async def assign_owner(self, request: AssignOwnerInput) -> None:
        async with self._store.write() as conn:
            case = (
                await conn.execute(select(cases).where(cases.c.case_id == request.case_id))
            ).one()
            resolver_role = cases_pb2.PARTICIPANT_ROLE_RESOLVER
            owner_role = cases_pb2.PARTICIPANT_ROLE_RELATIONSHIP_OWNER
            current_resolvers = set(
                (
                    await conn.execute(
                        select(case_participants.c.partner_id).where(
                            case_participants.c.case_id == case.case_id,
                            case_participants.c.role == resolver_role,
                        )
                    )
                ).scalars()
            )
            if case.relationship_owner_id == request.owner_id and current_resolvers == set(
                request.resolver_ids
            ):
                if case.status != cases_pb2.CASE_STATUS_OWNED and case.status in (
                    cases_pb2.CASE_STATUS_AWAITING_OWNER,
                ):
                    await set_status(
                        conn, self._cases.reader.sealer, case.case_id, cases_pb2.CASE_STATUS_OWNED
                    )
                return  # a retry: already recorded
            await conn.execute(
                update(cases)
                .where(cases.c.case_id == case.case_id)
                .values(relationship_owner_id=request.owner_id)
            )
            await conn.execute(
                delete(case_participants).where(
                    case_participants.c.case_id == case.case_id,
                    case_participants.c.role.in_([resolver_role, owner_role]),
                )
            )
            await conn.execute(
                insert(case_participants),
                [
                    {
                        "case_id": case.case_id,
                        "partner_id": request.owner_id,
                        "role": owner_role,
                        "person_id": "",
                    }
                ]
                + [
                    {
                        "case_id": case.case_id,
                        "partner_id": r,
                        "role": resolver_role,
                        "person_id": "",
                    }
                    for r in request.resolver_ids
                ],
            )
            if case.status in (
                cases_pb2.CASE_STATUS_AWAITING_OWNER,
                cases_pb2.CASE_STATUS_DIAGNOSING,
            ):
                await set_status(
                    conn, self._cases.reader.sealer, case.case_id, cases_pb2.CASE_STATUS_OWNED
                )
            await self._audit.record_in(
                conn,
                [
                    AuditRecord(
                        kind="ownership",
                        action="ownership.assigned",
                        actor_partner_id=request.owner_id,
                        subject_id=case.subject_id,
                        case_id=case.case_id,
                        reason=request.reason,
                        details=(
                            ("accepted", str(request.accepted).lower()),
                            ("resolvers", ",".join(request.resolver_ids)),
                        ),
                    )
                ],
            )
            await _tell(
                conn,
                {request.owner_id, *request.resolver_ids},
                work_pb2.CaseNotice(
                    notice_id=(
                        f"{case.case_id}:owner:{request.owner_id}:{','.join(request.resolver_ids)}"
                    ),
                    case_id=case.case_id,
                    kind="ownership",
                    relationship_owner_id=request.owner_id,
                    resolver_ids=list(request.resolver_ids),
                    message=(
                        f"{request.owner_id} owns the relationship; resolvers: "
                        f"{', '.join(request.resolver_ids) or 'none'} ({request.reason})"
                    ),
                ),
            )

    @activity.defn(name=NOTIFY_CUSTOMER)
    async def notify_customer(self, request: NotifyInput) -> None:
        """Tell the customer through the partner and channel they last used."""
        async with self._store.write() as conn:
            case = (
                await conn.execute(select(cases).where(cases.c.case_id == request.case_id))
            ).one()
            partner, channel = await _last_contact(conn, self._cases, case)
            notification = cases_pb2.Notification(
                notification_id=request.notification_id,
                partner_id=partner,
                channel=channel,  # type: ignore[arg-type]
                milestone=request.milestone,
                message=request.message,
            )
            notification.sent_at.GetCurrentTime()
            item = cases_pb2.TimelineItem(notification=notification)
            item.occurred_at.CopyFrom(notification.sent_at)
            if not await append_event(
                conn,
                self._cases.reader.sealer,
                case.case_id,
                item,
                source_partner_id="",
                category=CASE_STATUS_CATEGORY,
                dedup_key=request.notification_id,
            ):
                return
            await enqueue(
                conn,
                f"{request.notification_id}:notify",
                partner,
                work_pb2.WorkItem(
                    customer_notification=work_pb2.CustomerNotification(
                        notification_id=request.notification_id,
                        case_id=case.case_id,
                        customer_local_id=await _local_id(conn, partner, case.subject_id),
                        channel=channel,  # type: ignore[arg-type]
                        milestone=request.milestone,
                        message=request.message,
                    )
                ),
            )

    @activity.defn(name=ESCALATE)
    async def escalate(self, request: EscalateInput) -> None:
        """Escalate to a level-2 expert of the owner and tell every participant."""
        async with self._store.write() as conn:
            escalation = cases_pb2.Escalation(
                escalation_id=request.escalation_id,
                reason=request.reason,
                expert_partner_id=request.expert_partner_id,
            )
            escalation.escalated_at.GetCurrentTime()
            item = cases_pb2.TimelineItem(escalation=escalation)
            item.occurred_at.CopyFrom(escalation.escalated_at)
            if not await append_event(
                conn,
                self._cases.reader.sealer,
                request.case_id,
                item,
                source_partner_id="",
                category=CASE_STATUS_CATEGORY,
                dedup_key=request.escalation_id,
            ):
                return
            exists = (
                await conn.execute(
                    select(case_participants.c.partner_id).where(
                        case_participants.c.case_id == request.case_id,
                        case_participants.c.partner_id == request.expert_partner_id,
                        case_participants.c.role == cases_pb2.PARTICIPANT_ROLE_EXPERT,
                    )
                )
            ).first()
            if exists is None:
                await conn.execute(
                    insert(case_participants).values(
                        case_id=request.case_id,
                        partner_id=request.expert_partner_id,
                        role=cases_pb2.PARTICIPANT_ROLE_EXPERT,
                        person_id="level-2",
                    )
                )
            partners = sorted(
                set(
                    (
                        await conn.execute(
                            select(case_participants.c.partner_id).where(
                                case_participants.c.case_id == request.case_id
                            )
                        )
                    ).scalars()
                )
            )
            await _tell(
                conn,
                set(partners),
                work_pb2.CaseNotice(
                    notice_id=request.escalation_id,
                    case_id=request.case_id,
                    kind="escalation",
                    message=f"escalated to a level-2 expert of {request.expert_partner_id}: "
                    f"{request.reason}",
                ),
            )

    @activity.defn(name=RECORD_KPIS)
    async def record_kpis(self, request: KpiInput) -> None:
        async with self._store.write() as conn:
            service_id = (
                await conn.execute(
                    select(cases.c.service_id).where(cases.c.case_id == request.case_id)
                )
            ).scalar_one()
            await conn.execute(delete(case_kpis).where(case_kpis.c.case_id == request.case_id))
            await conn.execute(
                insert(case_kpis).values(
                    case_id=request.case_id,
                    service_id=service_id,
                    time_to_owner_s=request.time_to_owner_s,
                    time_to_resolution_s=request.time_to_resolution_s,
                    first_contact_resolution=request.first_contact_resolution,
                    sla_breaches=len(request.sla_breaches),
                    reopens=request.reopens,
                    details=json.dumps(
                        {
                            "sla_breaches": list(request.sla_breaches),
                            "partner_response_s": request.partner_response_s,
                            "unresponsive": list(request.unresponsive_partners),
                        },
                        sort_keys=True,
                    ),
                    recorded_at=_now(),
                )
            )


async def _tell(conn: AsyncConnection, partners: set[str], notice: work_pb2.CaseNotice) -> None:
    """Queue one case notice to each partner, once (work id = notice id + partner)."""
    for partner in sorted(partners):
        item = work_pb2.WorkItem()
        item.case_notice.CopyFrom(notice)
        await enqueue(conn, f"{notice.notice_id}:{partner}", partner, item)


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


async def _local_id(conn: AsyncConnection, partner_id: str, subject_id: str) -> str:
    """The partner's own id for this customer, if it has one (never another's)."""
    found = (
        await conn.execute(
            select(subject_links.c.local_id)
            .where(
                subject_links.c.partner_id == partner_id, subject_links.c.subject_id == subject_id
            )
            .order_by(subject_links.c.linked_at)
            .limit(1)
        )
    ).scalar()
    return str(found) if found is not None else ""


async def _last_contact(conn: AsyncConnection, domain: Cases, case: Any) -> tuple[str, int]:
    """The partner and channel of the customer's latest contact on this case."""
    rows = (
        await conn.execute(
            select(case_events)
            .where(
                case_events.c.case_id == case.case_id,
                case_events.c.category == INTERACTION_CATEGORY,
            )
            .order_by(case_events.c.sequence.desc())
            .limit(20)
        )
    ).all()
    for event in await domain.reader.open_events(conn, case.case_id, rows):
        interaction = event.item.interaction
        if await _local_id(conn, interaction.partner_id, case.subject_id):
            return interaction.partner_id, interaction.channel
    return case.first_contact_partner_id, case.first_contact_channel
