"""Consent records, shaped after ISO/IEC TS 27560: the customer's consents, granted,
withdrawn and listed through the partners, each change an event of the record with a
signed receipt; the requests for consent are `ConsentRequests`'s."""

from __future__ import annotations

import datetime as dt
import uuid

from coopgate.v1 import common_pb2, consents_pb2
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.log import AuditLog, AuditRecord
from gateway.consent.checks import (
    involves,
    knows_subject,
    own_customer,
    require_agreements,
    require_partners,
    validate_grant,
)
from gateway.consent.periods import active as _active
from gateway.consent.periods import now as _now
from gateway.consent.receipts import ReceiptSigner
from gateway.consent.requests import ConsentRequests, fulfil_request
from gateway.consent.rules import ConsentRules
from gateway.consent.vocabulary import Vocabulary
from gateway.core.caller import Caller, Role
from gateway.core.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from gateway.crypto.pseudonyms import Pseudonyms
from gateway.crypto.sealing import Sealer
from gateway.store import Store
from gateway.store.changes import CONSENT, announce, consent_key
from gateway.store.idempotency import run_once
from gateway.store.schema import consent_events, consents

STATE_NAMES = {
    consents_pb2.CONSENT_STATE_REQUESTED: "requested",
    consents_pb2.CONSENT_STATE_GIVEN: "given",
    consents_pb2.CONSENT_STATE_REFUSED: "refused",
    consents_pb2.CONSENT_STATE_WITHDRAWN: "withdrawn",
    consents_pb2.CONSENT_STATE_EXPIRED: "expired",
}


class Consents:
    """Granting, withdrawing, listing and requesting consents."""

    def __init__(
        self,
        store: Store,
        vocabulary: Vocabulary,
        pseudonyms: Pseudonyms,
        signer: ReceiptSigner,
        audit: AuditLog,
        rules: ConsentRules,
        sealer: Sealer,
    ) -> None:
        self.rules = rules
        self.store = store
        self.vocabulary = vocabulary
        self.pseudonyms = pseudonyms
        self.signer = signer
        self.audit = audit
        self.requests = ConsentRequests(store, vocabulary, audit, sealer)

    async def grant(
        self, caller: Caller, request: consents_pb2.GrantConsentRequest
    ) -> consents_pb2.GrantConsentResponse:
        validate_grant(self.vocabulary, request)

        async def action(conn: AsyncConnection) -> consents_pb2.GrantConsentResponse:
            now = _now()
            subject_id = await own_customer(
                conn, self.store.local_ids, caller, request.customer_local_id
            )
            await require_partners(
                conn, [request.source_partner_id, *request.recipient_partner_ids]
            )
            valid_until = (
                request.valid_until.ToDatetime(dt.UTC) if request.HasField("valid_until") else None
            )
            if valid_until is not None and valid_until <= now:
                raise InvalidArgument.field("valid_until", "the period ends before it starts")
            await require_agreements(conn, request, now)
            consent = consents_pb2.Consent(
                consent_id=f"cns-{uuid.uuid4().hex}",
                source_partner_id=request.source_partner_id,
                recipient_partner_ids=sorted(set(request.recipient_partner_ids)),
                categories=sorted(set(request.categories)),
                purposes=sorted(set(request.purposes)),
                legal_basis=request.legal_basis or consents_pb2.LEGAL_BASIS_CONSENT,
                collected_by_partner_id=caller.partner_id,
                channel=request.channel,
                notice_version=request.notice_version,
                state=consents_pb2.CONSENT_STATE_GIVEN,
            )
            consent.valid_from.FromDatetime(now)
            if valid_until is not None:
                consent.valid_until.FromDatetime(valid_until)
            await conn.execute(
                insert(consents).values(
                    consent_id=consent.consent_id,
                    subject_id=subject_id,
                    source_partner_id=consent.source_partner_id,
                    collected_by_partner_id=caller.partner_id,
                    state=consent.state,
                    valid_from=now,
                    valid_until=valid_until,
                    definition=consent.SerializeToString(deterministic=True),
                    created_at=now,
                    updated_at=now,
                )
            )
            if request.consent_request_id:
                await fulfil_request(
                    conn, caller, request.consent_request_id, subject_id, consent.consent_id, now
                )
            await self._event(
                conn,
                caller,
                consent,
                subject_id,
                consents_pb2.CONSENT_STATE_GIVEN,
                request.channel,
                now,
            )
            return await self._response(conn, caller, consent.consent_id, subject_id, "given")

        response, _ = await run_once(
            self.store, caller, "GrantConsent", request, consents_pb2.GrantConsentResponse, action
        )
        self.rules.epoch += 1  # after the commit too: no shared read started before it is joined
        return response

    async def revoke(
        self, caller: Caller, request: consents_pb2.RevokeConsentRequest
    ) -> consents_pb2.RevokeConsentResponse:
        if not request.consent_id:
            raise InvalidArgument.field("consent_id", "is required")
        if (
            request.channel == common_pb2.CHANNEL_UNSPECIFIED
            or request.channel not in common_pb2.Channel.values()
        ):
            raise InvalidArgument.field("channel", "must name the channel the customer used")

        async def action(conn: AsyncConnection) -> consents_pb2.RevokeConsentResponse:
            row = (
                await conn.execute(
                    select(consents).where(consents.c.consent_id == request.consent_id)
                )
            ).first()
            if row is None:
                raise NotFound(
                    f"consent {request.consent_id!r} not found", reason="CONSENT_NOT_FOUND"
                )
            if not await knows_subject(conn, caller.partner_id, row.subject_id):
                raise PermissionDenied(
                    "only a partner the customer is a customer of may record their withdrawal",
                    reason="NOT_YOUR_CUSTOMER",
                )
            if row.state == consents_pb2.CONSENT_STATE_WITHDRAWN:
                raise FailedPrecondition(
                    "the consent is already withdrawn", reason="CONSENT_WITHDRAWN"
                )
            now = _now()
            await conn.execute(
                update(consents)
                .where(consents.c.consent_id == row.consent_id)
                .values(state=consents_pb2.CONSENT_STATE_WITHDRAWN, updated_at=now)
            )
            consent = consents_pb2.Consent.FromString(row.definition)
            consent.consent_id = row.consent_id
            await self._event(
                conn,
                caller,
                consent,
                row.subject_id,
                consents_pb2.CONSENT_STATE_WITHDRAWN,
                request.channel,
                now,
            )
            granted = await self._response(
                conn, caller, row.consent_id, row.subject_id, "withdrawn"
            )
            return consents_pb2.RevokeConsentResponse(
                consent=granted.consent, receipt=granted.receipt
            )

        response, _ = await run_once(
            self.store, caller, "RevokeConsent", request, consents_pb2.RevokeConsentResponse, action
        )
        self.rules.epoch += 1  # after the commit too: no shared read started before it is joined
        return response

    async def list(
        self, caller: Caller, request: consents_pb2.ListConsentsRequest
    ) -> consents_pb2.ListConsentsResponse:
        """A partner lists one of its customers' consents that involve it (as
        source, recipient or collector); a compliance officer lists them all."""
        size = request.page.page_size or 100
        if not 0 < size <= 500:
            raise InvalidArgument.field("page.page_size", "must be in 1..500")
        query = select(consents.c.consent_id, consents.c.subject_id, consents.c.definition)
        async with self.store.read() as conn:
            if request.customer_local_id:
                subject_id = await own_customer(
                    conn, self.store.local_ids, caller, request.customer_local_id
                )
                query = query.where(consents.c.subject_id == subject_id)
            elif request.subject_id:
                subject_id = self.pseudonyms.resolve(caller.partner_id, request.subject_id)
                query = query.where(consents.c.subject_id == subject_id)
            elif caller.role != Role.COMPLIANCE:
                raise InvalidArgument.field(
                    "customer_local_id", "name the customer (or subject_id) whose consents to list"
                )
            if request.state:
                query = query.where(consents.c.state == request.state)
            if request.page.page_token:
                query = query.where(consents.c.consent_id > request.page.page_token)
            rows = (await conn.execute(query.order_by(consents.c.consent_id))).all()
            if caller.role != Role.COMPLIANCE:
                rows = [r for r in rows if involves(r.definition, caller.partner_id)]
            response = consents_pb2.ListConsentsResponse()
            for row in rows[:size]:
                response.consents.append(
                    await self._load(conn, caller, row.consent_id, row.subject_id)
                )
        if len(rows) > size:
            response.next_page_token = rows[size - 1].consent_id
        return response

    async def request(
        self, caller: Caller, request: consents_pb2.RequestConsentRequest
    ) -> consents_pb2.RequestConsentResponse:
        """See `ConsentRequests.request`."""
        return await self.requests.request(caller, request)

    async def refuse_request(
        self, caller: Caller, request: consents_pb2.RefuseConsentRequestRequest
    ) -> consents_pb2.RefuseConsentRequestResponse:
        """See `ConsentRequests.refuse_request`."""
        return await self.requests.refuse_request(caller, request)

    def receipt_key(self) -> consents_pb2.GetReceiptKeyResponse:
        return consents_pb2.GetReceiptKeyResponse(
            key_id=self.signer.key_id, public_key=self.signer.public_key_bytes, jwk=self.signer.jwk
        )

    # -- internals ---------------------------------------------------------

    async def _event(
        self,
        conn: AsyncConnection,
        caller: Caller,
        consent: consents_pb2.Consent,
        subject_id: str,
        state: consents_pb2.ConsentState.ValueType,
        channel: int,
        now: dt.datetime,
    ) -> None:
        self.rules.epoch += 1
        for recipient in consent.recipient_partner_ids:  # their case watches read again
            announce(conn, CONSENT, consent_key(subject_id, recipient))
        sequence = (
            await conn.execute(
                select(func.count())
                .select_from(consent_events)
                .where(consent_events.c.consent_id == consent.consent_id)
            )
        ).scalar_one()
        await conn.execute(
            insert(consent_events).values(
                consent_id=consent.consent_id,
                sequence=sequence + 1,
                state=state,
                at=now,
                partner_id=caller.partner_id,
                channel=channel,
            )
        )
        await self.audit.record_in(
            conn,
            [
                AuditRecord(
                    kind="consent",
                    action=f"consent.{STATE_NAMES[state]}",
                    actor_partner_id=caller.partner_id,
                    actor_person_id=caller.person_id,
                    subject_id=subject_id,
                    purpose=",".join(consent.purposes),
                    categories=tuple(consent.categories),
                    source_partner_id=consent.source_partner_id,
                    consent_id=consent.consent_id,
                    details=(("recipients", ",".join(consent.recipient_partner_ids)),),
                )
            ],
        )

    async def _load(
        self, conn: AsyncConnection, caller: Caller, consent_id: str, subject_id: str
    ) -> consents_pb2.Consent:
        row = (
            await conn.execute(select(consents).where(consents.c.consent_id == consent_id))
        ).one()
        consent = consents_pb2.Consent.FromString(row.definition)
        consent.consent_id = consent_id
        consent.subject_id = self.pseudonyms.for_partner(caller.partner_id, subject_id)
        consent.state = row.state
        if row.state == consents_pb2.CONSENT_STATE_GIVEN and not _active(
            row.valid_from, row.valid_until, _now()
        ):
            consent.state = consents_pb2.CONSENT_STATE_EXPIRED
        for event in (
            await conn.execute(
                select(consent_events)
                .where(consent_events.c.consent_id == consent_id)
                .order_by(consent_events.c.sequence)
            )
        ).all():
            e = consent.events.add(
                state=event.state, partner_id=event.partner_id, channel=event.channel
            )
            e.at.FromDatetime(event.at)
        return consent

    async def _response(
        self, conn: AsyncConnection, caller: Caller, consent_id: str, subject_id: str, event: str
    ) -> consents_pb2.GrantConsentResponse:
        consent = await self._load(conn, caller, consent_id, subject_id)
        return consents_pb2.GrantConsentResponse(
            consent=consent, receipt=self.signer.receipt(consent, event)
        )


__all__ = ["STATE_NAMES", "Consents"]
