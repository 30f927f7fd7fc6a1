"""Consent requests: a partner asks the customer, through the partner that can reach
them, to allow a withheld flow; the request is refused, or fulfilled by a grant."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from coopgate.v1 import consents_pb2, work_pb2
from sqlalchemy import Row, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.log import AuditLog, AuditRecord
from gateway.consent.periods import now as _now
from gateway.consent.vocabulary import Vocabulary
from gateway.core.caller import Caller
from gateway.core.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from gateway.crypto.pki import PARTNER_ID_PATTERN
from gateway.crypto.sealing import Sealer
from gateway.identity.subjects import LocalIds
from gateway.store import Store
from gateway.store.idempotency import run_once
from gateway.store.schema import (
    case_participants,
    cases,
    consent_requests,
    work_items,
)


class ConsentRequests:
    """Requesting consents, and refusing those requests."""

    def __init__(
        self, store: Store, vocabulary: Vocabulary, audit: AuditLog, sealer: Sealer
    ) -> None:
        self.store = store
        self.vocabulary = vocabulary
        self.audit = audit
        self.local_ids = LocalIds(store, sealer)

    async def request(
        self, caller: Caller, request: consents_pb2.RequestConsentRequest
    ) -> consents_pb2.RequestConsentResponse:
        """An advisor asks the customer, through the relationship owner's channel
        (else the partner first contacted), to allow a withheld flow."""
        violations: list[FieldViolation] = []
        if not request.case_id:
            violations.append(FieldViolation("case_id", "is required"))
        if not PARTNER_ID_PATTERN.fullmatch(request.source_partner_id):
            violations.append(FieldViolation("source_partner_id", "must be a partner id"))
        violations += self.vocabulary.category_violations("categories", list(request.categories))
        violations += self.vocabulary.purpose_violations(
            "purposes", list(request.purposes), consent=True
        )
        if violations:
            raise InvalidArgument(violations)

        async def action(conn: AsyncConnection) -> consents_pb2.RequestConsentResponse:
            case = (
                await conn.execute(
                    select(cases).where(
                        cases.c.case_id == request.case_id,
                        cases.c.case_id.in_(
                            select(case_participants.c.case_id).where(
                                case_participants.c.partner_id == caller.partner_id
                            )
                        ),
                    )
                )
            ).first()
            if case is None:
                raise NotFound(f"case {request.case_id!r} not found", reason="CASE_NOT_FOUND")
            relay = case.relationship_owner_id or case.first_contact_partner_id
            local = await self.local_ids.local_id(conn, relay, case.subject_id)
            if not local:
                raise FailedPrecondition(
                    f"partner {relay!r} cannot reach this customer", reason="NO_CHANNEL_TO_CUSTOMER"
                )
            now = _now()
            sealer, subject = self.local_ids.sealer, str(case.subject_id)
            request_id = f"creq-{uuid.uuid4().hex}"
            prompt = work_pb2.ConsentPrompt(
                consent_request_id=request_id,
                case_id=case.case_id,
                customer_local_id=local,
                channel=case.first_contact_channel,
                source_partner_id=request.source_partner_id,
                recipient_partner_id=caller.partner_id,
                categories=sorted(set(request.categories)),
                purposes=sorted(set(request.purposes)),
                reason=request.reason,
            )
            await conn.execute(
                insert(consent_requests).values(
                    request_id=request_id,
                    case_id=case.case_id,
                    subject_id=case.subject_id,
                    requested_by_partner_id=caller.partner_id,
                    relayed_by_partner_id=relay,
                    state=consents_pb2.CONSENT_STATE_REQUESTED,
                    # Kept sealed under the customer's subject key (it names the
                    # relay's own id for them), which erasure destroys.
                    prompt=await sealer.seal_item(
                        conn, request_id, prompt.SerializeToString(deterministic=True), subject
                    ),
                    created_at=now,
                )
            )
            item = work_pb2.WorkItem(work_id=f"work-{uuid.uuid4().hex}", consent_prompt=prompt)
            item.created_at.FromDatetime(now)
            await conn.execute(
                insert(work_items).values(
                    work_id=item.work_id,
                    partner_id=relay,
                    created_at=now,
                    item=await sealer.seal_item(
                        conn, item.work_id, item.SerializeToString(deterministic=True), subject
                    ),
                    deliveries=0,
                    case_id=case.case_id,
                    subject_id=subject,
                )
            )
            await self.audit.record_in(
                conn,
                [
                    AuditRecord(
                        kind="consent",
                        action="consent.requested",
                        actor_partner_id=caller.partner_id,
                        actor_person_id=caller.person_id,
                        subject_id=case.subject_id,
                        case_id=case.case_id,
                        purpose=",".join(prompt.purposes),
                        categories=tuple(prompt.categories),
                        source_partner_id=request.source_partner_id,
                        details=(("request", request_id), ("relayed_by", relay)),
                    )
                ],
            )
            return consents_pb2.RequestConsentResponse(
                consent_request_id=request_id,
                state=consents_pb2.CONSENT_STATE_REQUESTED,
                relayed_by_partner_id=relay,
            )

        response, _ = await run_once(
            self.store,
            caller,
            "RequestConsent",
            request,
            consents_pb2.RequestConsentResponse,
            action,
        )
        return response

    async def refuse_request(
        self, caller: Caller, request: consents_pb2.RefuseConsentRequestRequest
    ) -> consents_pb2.RefuseConsentRequestResponse:
        if not request.consent_request_id:
            raise InvalidArgument.field("consent_request_id", "is required")

        async def action(conn: AsyncConnection) -> consents_pb2.RefuseConsentRequestResponse:
            row = await _open_request(conn, caller, request.consent_request_id)
            now = _now()
            await conn.execute(
                update(consent_requests)
                .where(consent_requests.c.request_id == row.request_id)
                .values(state=consents_pb2.CONSENT_STATE_REFUSED, resolved_at=now)
            )
            await self.audit.record_in(
                conn,
                [
                    AuditRecord(
                        kind="consent",
                        action="consent.refused",
                        actor_partner_id=caller.partner_id,
                        actor_person_id=caller.person_id,
                        subject_id=row.subject_id,
                        case_id=row.case_id,
                        details=(("request", row.request_id),),
                    )
                ],
            )
            return consents_pb2.RefuseConsentRequestResponse(
                state=consents_pb2.CONSENT_STATE_REFUSED
            )

        response, _ = await run_once(
            self.store,
            caller,
            "RefuseConsentRequest",
            request,
            consents_pb2.RefuseConsentRequestResponse,
            action,
        )
        return response


async def fulfil_request(
    conn: AsyncConnection,
    caller: Caller,
    request_id: str,
    subject_id: str,
    consent_id: str,
    now: dt.datetime,
) -> None:
    row = await _open_request(conn, caller, request_id)
    if row.subject_id != subject_id:
        raise InvalidArgument.field("consent_request_id", "was made for another customer")
    await conn.execute(
        update(consent_requests)
        .where(consent_requests.c.request_id == request_id)
        .values(state=consents_pb2.CONSENT_STATE_GIVEN, resolved_at=now, consent_id=consent_id)
    )


async def _open_request(conn: AsyncConnection, caller: Caller, request_id: str) -> Row[Any]:
    row = (
        await conn.execute(
            select(consent_requests).where(consent_requests.c.request_id == request_id)
        )
    ).first()
    if row is None or row.relayed_by_partner_id != caller.partner_id:
        raise NotFound(
            f"consent request {request_id!r} not found", reason="CONSENT_REQUEST_NOT_FOUND"
        )
    if row.state != consents_pb2.CONSENT_STATE_REQUESTED:
        raise FailedPrecondition(
            "the consent request was already answered", reason="REQUEST_ANSWERED"
        )
    return row


__all__ = ["ConsentRequests", "fulfil_request"]
