"""Activities that follow the case up: notifying the customer, escalating to an
expert and recording the case's KPIs."""

from __future__ import annotations

import json
from typing import Any

from coopgate.v1 import cases_pb2, work_pb2
from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection
from temporalio import activity

from gateway.cases.resolutions import open_resolution
from gateway.cases.rows import CASE_BY_ID, CASE_STATUS_CATEGORY, INTERACTION_CATEGORY, append_event
from gateway.cases.service import Cases
from gateway.orchestration.notices import compose
from gateway.orchestration.shared import now, tell
from gateway.store import Store
from gateway.store.schema import case_events, case_kpis, case_participants, cases
from gateway.store.statements import execute
from gateway.telemetry import annotate, instruments
from gateway.work.delivery import enqueue
from workflows.contracts import (
    ESCALATE,
    NOTIFY_CUSTOMER,
    RECORD_KPIS,
    TELL_CUSTOMER,
    EscalateInput,
    KpiInput,
    MilestoneInput,
    NotifyInput,
)


class FollowUpActivities:
    def __init__(self, store: Store, cases: Cases) -> None:
        self._store = store
        self._cases = cases

    @activity.defn(name=TELL_CUSTOMER)
    async def tell_customer(self, request: MilestoneInput) -> None:
        """Tell the customer of a milestone through the partner and channel they last
        used, in words composed here (the workflow sends ids and references only)."""
        async with self._store.write() as conn:
            resolution = ""
            if request.milestone == "resolved":
                resolution = await open_resolution(
                    conn, self._cases.reader.sealer, request.case_id, request.resolution_id
                )
            message = compose(request.milestone, owner=request.owner_id, resolution=resolution)
            await self._deliver(
                conn, request.case_id, request.notification_id, request.milestone, message
            )

    @activity.defn(name=NOTIFY_CUSTOMER)
    async def notify_customer(self, request: NotifyInput) -> None:
        """`tell_customer` for runs recorded before the workflow sent references only:
        their text as the workflow composed it (a "resolved" one without text: the
        case's latest resolution, as the gateway now sends resolutions by reference)."""
        async with self._store.write() as conn:
            message = request.message
            if not message.strip():
                resolution = await open_resolution(conn, self._cases.reader.sealer, request.case_id)
                message = compose(request.milestone, resolution=resolution)
            await self._deliver(
                conn, request.case_id, request.notification_id, request.milestone, message.strip()
            )

    async def _deliver(
        self,
        conn: AsyncConnection,
        case_id: str,
        notification_id: str,
        milestone: str,
        message: str,
    ) -> None:
        """The notification on the case's timeline (sealed) and on the partner's work
        stream, once per ``notification_id``; nothing for an erased case."""
        case = (await execute(conn, CASE_BY_ID, {"case_id": case_id})).one()
        partner, channel, local_id = await _last_contact(conn, self._cases, case)
        notification = cases_pb2.Notification(
            notification_id=notification_id,
            partner_id=partner,
            channel=channel,  # type: ignore[arg-type]
            milestone=milestone,
            message=message,
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
            dedup_key=notification_id,
        ):
            return
        await enqueue(
            conn,
            f"{notification_id}:notify",
            partner,
            work_pb2.WorkItem(
                customer_notification=work_pb2.CustomerNotification(
                    notification_id=notification_id,
                    case_id=case.case_id,
                    customer_local_id=(
                        local_id
                        if local_id is not None
                        else await self._cases.local_ids.local_id(conn, partner, case.subject_id)
                    ),
                    channel=channel,  # type: ignore[arg-type]
                    milestone=milestone,
                    message=message,
                )
            ),
            sealed_for=(self._cases.reader.sealer, case.subject_id),
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
            await tell(
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
            service_id, owner_id = (
                await conn.execute(
                    select(cases.c.service_id, cases.c.relationship_owner_id).where(
                        cases.c.case_id == request.case_id
                    )
                )
            ).one()
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
                    recorded_at=now(),
                )
            )
        instruments.case_closed(
            service_id=service_id,
            owner_id=owner_id or "",
            time_to_owner_s=request.time_to_owner_s,
            time_to_resolution_s=request.time_to_resolution_s,
            first_contact_resolution=request.first_contact_resolution,
            breaches=request.sla_breaches,
            reopen_count=request.reopens,
            partner_response_s=request.partner_response_s,
            unresponsive=request.unresponsive_partners,
        )
        annotate(service=service_id, outcome="closed")


#: The case's latest interactions (``case_id``), built once (every notification reads them).
_LATEST_INTERACTIONS = (
    select(case_events)
    .where(
        case_events.c.case_id == bindparam("case_id"),
        case_events.c.category == INTERACTION_CATEGORY,
    )
    .order_by(case_events.c.sequence.desc())
    .limit(20)
)


async def _last_contact(
    conn: AsyncConnection, domain: Cases, case: Any
) -> tuple[str, int, str | None]:
    """The partner and channel of the customer's latest contact on this case, and that
    partner's id for the customer when it was read to find them (else None)."""
    rows = (await execute(conn, _LATEST_INTERACTIONS, {"case_id": case.case_id})).all()
    for event in await domain.reader.open_events(conn, case.case_id, rows):
        interaction = event.item.interaction
        local_id = await domain.local_ids.local_id(conn, interaction.partner_id, case.subject_id)
        if local_id:
            return interaction.partner_id, interaction.channel, local_id
    return case.first_contact_partner_id, case.first_contact_channel, None
