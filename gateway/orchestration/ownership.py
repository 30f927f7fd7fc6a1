"""Activities that record the ownership decision, offer ownership and assign the owner."""

from __future__ import annotations

from typing import Any

from coopgate.v1 import cases_pb2, work_pb2
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import AsyncConnection
from temporalio import activity

from gateway.audit.log import AuditLog, AuditRecord
from gateway.cases.derived import CitedFinding, redacted_explanation, stored_explanation
from gateway.cases.rows import CASE_BY_ID, CASE_STATUS_CATEGORY, append_event, set_status
from gateway.cases.service import Cases
from gateway.consent.rules import ConsentRules
from gateway.core.caller import Caller, Role
from gateway.orchestration.diagnosis import DIAGNOSIS_PURPOSE
from gateway.orchestration.lifecycle import incident_context
from gateway.orchestration.shared import now, tell, ts
from gateway.store import Store
from gateway.store.schema import case_events, case_participants, cases
from gateway.store.statements import execute
from gateway.work.delivery import enqueue
from workflows.contracts import (
    ASSIGN_OWNER,
    OFFER_OWNERSHIP,
    RECORD_OWNERSHIP_DECISION,
    AssignOwnerInput,
    IncidentContext,
    OfferInput,
    OwnershipDecision,
    RecordDecisionInput,
)
from workflows.ownership import decide_ownership, owner_reason

#: The purpose under which a partner offered ownership is shown the decision's findings.
OFFER_PURPOSE = DIAGNOSIS_PURPOSE


# Statements built once (`assign_owner` runs in every incident).
_PARTNERS_IN_ROLE = select(case_participants.c.partner_id).where(
    case_participants.c.case_id == bindparam("case_id"),
    case_participants.c.role == bindparam("role"),
)
_SET_OWNER = (
    update(cases)
    .where(cases.c.case_id == bindparam("case"))
    .values(relationship_owner_id=bindparam("owner"))
)
_DROP_OWNERS = delete(case_participants).where(
    case_participants.c.case_id == bindparam("case_id"),
    case_participants.c.role.in_(
        [cases_pb2.PARTICIPANT_ROLE_RESOLVER, cases_pb2.PARTICIPANT_ROLE_RELATIONSHIP_OWNER]
    ),
)
_ADD_PARTICIPANTS = insert(case_participants)
#: The recorded decision's event (`_explained_to`, in every offer).
_DECISION_EVENT = select(case_events).where(
    case_events.c.case_id == bindparam("case"),
    case_events.c.dedup_key == bindparam("dedup"),
)


def _decision_proto(
    decision: OwnershipDecision, explanation: str, owner: str = ""
) -> cases_pb2.OwnershipDecision:
    proto = cases_pb2.OwnershipDecision(
        decision_id=decision.decision_id,
        relationship_owner_id=owner or decision.owner_candidates[0],
        resolver_ids=list(decision.resolver_ids),
        rule=decision.rule,
        explanation=explanation,
    )
    proto.decided_at.FromDatetime(now())
    return proto


def _structured(request: RecordDecisionInput, context: IncidentContext | None) -> str:
    """The decision as stored: structured, so that each reader is told only the findings
    it may see (`gateway.cases.derived`). The policy's terms (threshold, why the owner)
    come from the incident's context as it is now, kept only when the workflow's
    decision made from it again is the one recorded (else the policy has changed since,
    and they are left out)."""
    decision = request.decision
    threshold: float | None = None
    reason = ""
    components: tuple[str, ...] = ()
    if context is not None:
        again = decide_ownership(context, request.findings, decision.decision_id)
        if again.explanation == decision.explanation:
            threshold = context.policy.min_fault_confidence
            reason = owner_reason(context)
            components = tuple(c.name for c in context.components)
    return stored_explanation(
        decision.explanation,
        (
            CitedFinding(f.partner_id, f.component, f.status, f.confidence, f.fault_code)
            for f in request.findings
        ),
        threshold=threshold,
        owner_reason=reason,
        components=components,
    )


class OwnershipActivities:
    def __init__(self, store: Store, cases: Cases, rules: ConsentRules, audit: AuditLog) -> None:
        self._store = store
        self._cases = cases
        self._rules = rules
        self._audit = audit

    @activity.defn(name=RECORD_OWNERSHIP_DECISION)
    async def record_ownership_decision(self, request: RecordDecisionInput) -> None:
        decision = request.decision
        async with self._store.write() as conn:
            case = (await execute(conn, CASE_BY_ID, {"case_id": request.case_id})).one()
            try:
                context: IncidentContext | None = await incident_context(conn, case.case_id, case)
            except NoResultFound:  # the service is gone: the policy's terms are left out
                context = None
            item = cases_pb2.TimelineItem(
                ownership_decision=_decision_proto(decision, _structured(request, context))
            )
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
                            # The components it was made from, not their findings: the log
                            # is read by every partner's compliance officers, and a finding's
                            # status, confidence and code are its source partner's data,
                            # shown only under consent (the timeline's decision item).
                            ("findings", ",".join(f.component for f in request.findings)),
                        ),
                    )
                ],
            )

    @activity.defn(name=OFFER_OWNERSHIP)
    async def offer_ownership(self, request: OfferInput) -> None:
        """Offer ownership to a candidate, the decision explained as it may see it."""
        async with self._store.write() as conn:
            case = (await execute(conn, CASE_BY_ID, {"case_id": request.case_id})).one()
            explanation = await self._explained_to(conn, case, request)
            offer = work_pb2.OwnershipOffer(
                offer_id=request.offer_id,
                case_id=request.case_id,
                decision=_decision_proto(request.decision, explanation, request.partner_id),
            )
            offer.deadline.FromDatetime(ts(request.deadline_s))
            offer.service_id = case.service_id
            await enqueue(
                conn,
                f"{request.offer_id}:offer",
                request.partner_id,
                work_pb2.WorkItem(ownership_offer=offer),
            )

    async def _explained_to(self, conn: AsyncConnection, case: Any, request: OfferInput) -> str:
        """The recorded decision's explanation as the candidate may see it: each finding
        it cites decided (and audited) by the consent rules for the offer's purpose."""
        decision = request.decision
        row = (
            await execute(
                conn, _DECISION_EVENT, {"case": case.case_id, "dedup": decision.decision_id}
            )
        ).first()
        derived = None
        if row is not None:
            (event,) = await self._cases.reader.open_events(conn, case.case_id, [row])
            derived = event.derived
        if derived is None:
            return redacted_explanation(
                decision.rule, decision.owner_candidates[0], decision.resolver_ids
            )
        decided = await self._rules.decide(
            conn,
            reader=Caller(partner_id=request.partner_id, role=Role.PARTNER, person_id=""),
            subject_id=case.subject_id,
            service_id=case.service_id,
            purpose=OFFER_PURPOSE,
            flows=derived.cites,
            case_id=case.case_id,
        )
        return derived.explanation([decided[flow].allowed for flow in derived.cites])

    @activity.defn(name=ASSIGN_OWNER)
    async def assign_owner(self, request: AssignOwnerInput) -> None:
        async with self._store.write() as conn:
            case = (await execute(conn, CASE_BY_ID, {"case_id": request.case_id})).one()
            resolver_role = cases_pb2.PARTICIPANT_ROLE_RESOLVER
            owner_role = cases_pb2.PARTICIPANT_ROLE_RELATIONSHIP_OWNER
            current_resolvers = set(
                (
                    await conn.execute(
                        _PARTNERS_IN_ROLE, {"case_id": case.case_id, "role": resolver_role}
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
            await execute(conn, _SET_OWNER, {"case": case.case_id, "owner": request.owner_id})
            await execute(conn, _DROP_OWNERS, {"case_id": case.case_id})
            await execute(
                conn,
                _ADD_PARTICIPANTS,
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
            await tell(
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
