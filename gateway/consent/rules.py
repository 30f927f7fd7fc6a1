"""Consent: the customer's permission, the partners' agreements, and the one
decision point every read of another partner's data goes through.

A flow of category C from partner A to partner B for purpose P is allowed only
when, at the moment of the read, (1) a sharing agreement A→B covers C and P
for the case's service and (2) the customer's consent, given and not
withdrawn or expired, covers A→B, C and P. Decisions are made from the store at
each call; the case view keeps its last decisions only with the versions of the
consents and agreements they read, which database triggers bump at every change, and
until the next validity period boundary (`Cases.get_view`): a withdrawal takes effect
on the very next read. Every decision is audited.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from coopgate.v1 import admin_pb2, common_pb2, consents_pb2, work_pb2
from sqlalchemy import (
    BindParameter,
    CompoundSelect,
    Connection,
    Row,
    bindparam,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.log import AuditLog, AuditRecord
from gateway.consent.receipts import ReceiptSigner
from gateway.consent.vocabulary import Vocabulary
from gateway.core.caller import Caller, Role
from gateway.core.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from gateway.crypto.pki import PARTNER_ID_PATTERN
from gateway.crypto.pseudonyms import Pseudonyms
from gateway.store import Store
from gateway.store.idempotency import run_once
from gateway.store.schema import (
    UtcDateTime,
    case_participants,
    cases,
    consent_events,
    consent_requests,
    consents,
    partners,
    sharing_agreements,
    subject_links,
    work_items,
)

#: The gateway's own events (status, ownership): every participant may see them.
GATEWAY_SOURCE = ""
STATE_NAMES = {
    consents_pb2.CONSENT_STATE_REQUESTED: "requested",
    consents_pb2.CONSENT_STATE_GIVEN: "given",
    consents_pb2.CONSENT_STATE_REFUSED: "refused",
    consents_pb2.CONSENT_STATE_WITHDRAWN: "withdrawn",
    consents_pb2.CONSENT_STATE_EXPIRED: "expired",
}


@dataclass(slots=True, frozen=True)
class AccessDecision:
    allowed: bool
    #: Why: own-data, gateway-event, consent, no-sharing-agreement, no-consent,
    #: consent-withdrawn, consent-expired, purpose-not-consented, category-not-consented.
    reason: str
    consent_id: str = ""
    agreement_id: str = ""


@dataclass(slots=True, frozen=True)
class Flow:
    """One kind of data a reader wants: whose (source) and what (category)."""

    source_partner_id: str
    category: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _active(valid_from: dt.datetime, valid_until: dt.datetime | None, at: dt.datetime) -> bool:
    return valid_from <= at and (valid_until is None or at < valid_until)


class ConsentRules:
    """The decision point. Reads the store on every call; holds no decision."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        #: Bumped by every consent change made through this process; readers
        #: that share an in-flight read never join one started before a change.
        self.epoch = 0

    async def decide(
        self,
        conn: AsyncConnection,
        *,
        reader: Caller,
        subject_id: str,
        service_id: str,
        purpose: str,
        flows: Iterable[Flow],
        case_id: str = "",
        at: dt.datetime | None = None,
    ) -> dict[Flow, AccessDecision]:
        """Decide every flow for one reader, subject and purpose, inside the caller's
        write transaction, and audit each decision in it: a read that cannot be logged
        does not happen. (A reader outside a write transaction uses `evaluate` and
        records `access_records` once its connection is returned: the group commit
        needs a connection of the pool itself.)"""
        decisions = await self.evaluate(
            conn,
            reader_partner_id=reader.partner_id,
            subject_id=subject_id,
            service_id=service_id,
            purpose=purpose,
            flows=flows,
            at=at,
        )
        records = self.access_records(reader, subject_id, case_id, purpose, decisions)
        if records:
            await self.audit.record_in(conn, records)
        return decisions

    def access_records(
        self,
        reader: Caller,
        subject_id: str,
        case_id: str,
        purpose: str,
        decisions: dict[Flow, AccessDecision],
    ) -> list[AuditRecord]:
        """One audit record per decision about another partner's data."""
        return [
            AuditRecord(
                kind="access",
                action="read",
                actor_partner_id=reader.partner_id,
                actor_person_id=reader.person_id,
                subject_id=subject_id,
                case_id=case_id,
                purpose=purpose,
                categories=(flow.category,),
                source_partner_id=flow.source_partner_id,
                decision="allow" if decision.allowed else "deny",
                consent_id=decision.consent_id,
                agreement_id=decision.agreement_id,
                reason=decision.reason,
            )
            for flow, decision in sorted(
                decisions.items(), key=lambda fd: (fd[0].source_partner_id, fd[0].category)
            )
            if flow.source_partner_id not in (reader.partner_id, GATEWAY_SOURCE)
        ]

    async def evaluate(
        self,
        conn: AsyncConnection,
        *,
        reader_partner_id: str,
        subject_id: str,
        service_id: str,
        purpose: str,
        flows: Iterable[Flow],
        at: dt.datetime | None = None,
    ) -> dict[Flow, AccessDecision]:
        """The decisions alone, without auditing them (callers audit through ``decide``)."""
        decided = await conn.run_sync(
            self.evaluate_until_in,
            reader_partner_id=reader_partner_id,
            subject_id=subject_id,
            service_id=service_id,
            purpose=purpose,
            flows=flows,
            at=at,
        )
        return decided.decisions

    def evaluate_until_in(
        self,
        conn: Connection,
        *,
        reader_partner_id: str,
        subject_id: str,
        service_id: str,
        purpose: str,
        flows: Iterable[Flow],
        at: dt.datetime | None = None,
    ) -> Decisions:
        """`evaluate` on a synchronous connection (inside `Store.run_read`), and until
        when its answer holds if no consent or agreement changes (the next start or end
        of a validity period that took part)."""
        at = at or _now()
        decisions: dict[Flow, AccessDecision] = {}
        foreign: set[Flow] = set()
        for flow in set(flows):
            if flow.source_partner_id == reader_partner_id:
                decisions[flow] = AccessDecision(True, "own-data")
            elif flow.source_partner_id == GATEWAY_SOURCE:
                decisions[flow] = AccessDecision(True, "gateway-event")
            else:
                foreign.add(flow)
        if not foreign:
            return Decisions(decisions, None)
        found = _lookup(
            conn,
            {f.source_partner_id for f in foreign},
            reader_partner_id,
            subject_id,
            service_id,
            at,
        )
        for flow in foreign:
            decisions[flow] = _decide_flow(
                flow, reader_partner_id, purpose, at, found.agreements, found.grants
            )
        return Decisions(decisions, found.holds_until)


@dataclass(slots=True, frozen=True)
class Decisions:
    decisions: dict[Flow, AccessDecision]
    #: The first moment a validity period read for them starts or ends (None: never).
    holds_until: dt.datetime | None


@dataclass(slots=True, frozen=True)
class _Found:
    agreements: list[admin_pb2.SharingAgreement]
    grants: list[Grant]
    holds_until: dt.datetime | None


def _lookup(
    conn: Connection,
    sources: set[str],
    recipient: str,
    subject_id: str,
    service_id: str,
    at: dt.datetime,
) -> _Found:
    """The agreements in force and the subject's consents, in one round trip; and the
    first moment after ``at`` at which one of their validity periods starts or ends."""
    agreements: list[admin_pb2.SharingAgreement] = []
    grants: list[Grant] = []
    changes: list[dt.datetime] = []
    params: dict[str, object] = {
        "subject": subject_id,
        "recipient": recipient,
        "service": service_id,
        "at": at,
    }
    ordered = sorted(sources)
    params.update((f"source{n}", source) for n, source in enumerate(ordered))
    for row in conn.execute(_lookup_statement(len(ordered)), params):
        valid_from, valid_until = row.valid_from, row.valid_until
        if valid_from > at:
            changes.append(valid_from)
        if valid_until is not None and valid_until > at:
            changes.append(valid_until)
        if row.kind == "a":
            if valid_from <= at:
                agreements.append(_parse_agreement(bytes(row.definition)))
        else:
            grants.append(
                Grant(
                    row.consent_id,
                    row.state,
                    valid_from,
                    valid_until,
                    _parse_consent(bytes(row.definition)),
                )
            )
    return _Found(agreements, grants, min(changes, default=None))


@functools.lru_cache(maxsize=64)
def _lookup_statement(sources: int) -> CompoundSelect[Any]:
    """The subject's consents from the given sources and the agreements not yet ended
    for the reader and service, in one statement; one per number of sources, built and
    compiled once (an expanding IN list is re-rendered at every execution)."""
    names: list[BindParameter[str]] = [bindparam(f"source{n}") for n in range(sources)]
    return union_all(
        select(
            literal("c").label("kind"),
            consents.c.consent_id,
            consents.c.state,
            consents.c.valid_from,
            consents.c.valid_until,
            consents.c.definition,
        ).where(
            consents.c.subject_id == bindparam("subject"),
            consents.c.source_partner_id.in_(names),
        ),
        select(
            literal("a"),
            sharing_agreements.c.agreement_id,
            null(),
            # Those yet to start come too: when they start, the decision may change.
            sharing_agreements.c.valid_from,
            sharing_agreements.c.valid_until,
            sharing_agreements.c.definition,
        ).where(
            sharing_agreements.c.source_partner_id.in_(names),
            sharing_agreements.c.recipient_partner_id == bindparam("recipient"),
            sharing_agreements.c.service_id == bindparam("service"),
            or_(
                sharing_agreements.c.valid_until.is_(None),
                sharing_agreements.c.valid_until > bindparam("at", type_=UtcDateTime()),
            ),
        ),
    )


#: Parsed consent and agreement definitions kept, by their stored bytes: the bytes are
#: read at every decision, only their parsing is kept. Callers never modify them.
PARSED_CACHE = 16384
_parse_agreement = functools.lru_cache(maxsize=PARSED_CACHE)(admin_pb2.SharingAgreement.FromString)
_parse_consent = functools.lru_cache(maxsize=PARSED_CACHE)(consents_pb2.Consent.FromString)


@dataclass(slots=True, frozen=True)
class Grant:
    consent_id: str
    state: int
    valid_from: dt.datetime
    valid_until: dt.datetime | None
    consent: consents_pb2.Consent


def _decide_flow(
    flow: Flow,
    reader: str,
    purpose: str,
    at: dt.datetime,
    agreements: Sequence[admin_pb2.SharingAgreement],
    grants: Sequence[Grant],
) -> AccessDecision:
    agreement = next(
        (
            a
            for a in agreements
            if a.source_partner_id == flow.source_partner_id
            and flow.category in a.categories
            and purpose in a.purposes
        ),
        None,
    )
    if agreement is None:
        return AccessDecision(False, "no-sharing-agreement")
    best = "no-consent"
    for grant in grants:
        consent_id, state, consent = grant.consent_id, grant.state, grant.consent
        valid_from, valid_until = grant.valid_from, grant.valid_until
        if consent.source_partner_id != flow.source_partner_id:
            continue
        if reader not in consent.recipient_partner_ids:
            continue
        if flow.category not in consent.categories:
            best = _worse(best, "category-not-consented")
            continue
        if purpose not in consent.purposes:
            best = _worse(best, "purpose-not-consented")
            continue
        if state == consents_pb2.CONSENT_STATE_WITHDRAWN:
            best = _worse(best, "consent-withdrawn")
            continue
        if state != consents_pb2.CONSENT_STATE_GIVEN or not _active(valid_from, valid_until, at):
            best = _worse(best, "consent-expired")
            continue
        return AccessDecision(True, "consent", consent_id, agreement.agreement_id)
    return AccessDecision(False, best, agreement_id=agreement.agreement_id)


_SPECIFICITY = [
    "no-consent",
    "category-not-consented",
    "purpose-not-consented",
    "consent-expired",
    "consent-withdrawn",
]


def _worse(current: str, candidate: str) -> str:
    """Keep the most specific reason a reader can act on."""
    return max(current, candidate, key=_SPECIFICITY.index)


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
    ) -> None:
        self.rules = rules
        self.store = store
        self.vocabulary = vocabulary
        self.pseudonyms = pseudonyms
        self.signer = signer
        self.audit = audit

    async def grant(
        self, caller: Caller, request: consents_pb2.GrantConsentRequest
    ) -> consents_pb2.GrantConsentResponse:
        caller.require(Role.PARTNER, Role.ADVISOR)
        self._validate_grant(request)

        async def action(conn: AsyncConnection) -> consents_pb2.GrantConsentResponse:
            now = _now()
            subject_id = await _own_customer(conn, caller, request.customer_local_id)
            await _require_partners(
                conn, [request.source_partner_id, *request.recipient_partner_ids]
            )
            valid_until = (
                request.valid_until.ToDatetime(dt.UTC) if request.HasField("valid_until") else None
            )
            if valid_until is not None and valid_until <= now:
                raise InvalidArgument.field("valid_until", "the period ends before it starts")
            await self._require_agreements(conn, request, now)
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
                await self._fulfil_request(
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
        caller.require(Role.PARTNER, Role.ADVISOR)
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
            if not await _knows_subject(conn, caller.partner_id, row.subject_id):
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
        caller.require(Role.PARTNER, Role.ADVISOR, Role.COMPLIANCE)
        size = request.page.page_size or 100
        if not 0 < size <= 500:
            raise InvalidArgument.field("page.page_size", "must be in 1..500")
        query = select(consents.c.consent_id, consents.c.subject_id, consents.c.definition)
        async with self.store.read() as conn:
            if request.customer_local_id:
                subject_id = await _own_customer(conn, caller, request.customer_local_id)
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
                rows = [r for r in rows if _involves(r.definition, caller.partner_id)]
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
        """An advisor asks the customer, through the relationship owner's channel
        (else the partner first contacted), to allow a withheld flow."""
        caller.require(Role.PARTNER, Role.ADVISOR)
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
            local = (
                await conn.execute(
                    select(subject_links.c.local_id).where(
                        subject_links.c.partner_id == relay,
                        subject_links.c.subject_id == case.subject_id,
                    )
                )
            ).scalar()
            if local is None:
                raise FailedPrecondition(
                    f"partner {relay!r} cannot reach this customer", reason="NO_CHANNEL_TO_CUSTOMER"
                )
            now = _now()
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
                    prompt=prompt.SerializeToString(deterministic=True),
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
                    item=item.SerializeToString(deterministic=True),
                    deliveries=0,
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
        caller.require(Role.PARTNER, Role.ADVISOR)
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

    def receipt_key(self) -> consents_pb2.GetReceiptKeyResponse:
        return consents_pb2.GetReceiptKeyResponse(
            key_id=self.signer.key_id, public_key=self.signer.public_key_bytes
        )

    # -- internals ---------------------------------------------------------

    def _validate_grant(self, request: consents_pb2.GrantConsentRequest) -> None:
        violations: list[FieldViolation] = []
        if not request.customer_local_id:
            violations.append(FieldViolation("customer_local_id", "is required"))
        if not PARTNER_ID_PATTERN.fullmatch(request.source_partner_id):
            violations.append(FieldViolation("source_partner_id", "must be a partner id"))
        if not request.recipient_partner_ids:
            violations.append(FieldViolation("recipient_partner_ids", "at least one recipient"))
        for i, r in enumerate(request.recipient_partner_ids):
            if not PARTNER_ID_PATTERN.fullmatch(r):
                violations.append(
                    FieldViolation(f"recipient_partner_ids[{i}]", "must be a partner id")
                )
            elif r == request.source_partner_id:
                violations.append(
                    FieldViolation(
                        f"recipient_partner_ids[{i}]", "the source already holds its data"
                    )
                )
        violations += self.vocabulary.category_violations("categories", list(request.categories))
        violations += self.vocabulary.purpose_violations(
            "purposes", list(request.purposes), consent=True
        )
        if (
            request.channel == common_pb2.CHANNEL_UNSPECIFIED
            or request.channel not in common_pb2.Channel.values()
        ):
            violations.append(FieldViolation("channel", "must name the channel the customer used"))
        if request.legal_basis not in consents_pb2.LegalBasis.values():
            violations.append(FieldViolation("legal_basis", f"unknown value {request.legal_basis}"))
        if not request.notice_version:
            violations.append(FieldViolation("notice_version", "the notice shown to the customer"))
        if violations:
            raise InvalidArgument(violations)

    async def _require_agreements(
        self, conn: AsyncConnection, request: consents_pb2.GrantConsentRequest, at: dt.datetime
    ) -> None:
        """Without a sharing agreement, no consent can open a flow."""
        for recipient in sorted(set(request.recipient_partner_ids)):
            rows = await conn.execute(
                select(sharing_agreements.c.definition).where(
                    sharing_agreements.c.source_partner_id == request.source_partner_id,
                    sharing_agreements.c.recipient_partner_id == recipient,
                    or_(
                        sharing_agreements.c.valid_until.is_(None),
                        sharing_agreements.c.valid_until > at,
                    ),
                )
            )
            agreements = [admin_pb2.SharingAgreement.FromString(d) for d in rows.scalars()]
            for category in request.categories:
                for purpose in request.purposes:
                    if not any(
                        category in a.categories and purpose in a.purposes for a in agreements
                    ):
                        raise FailedPrecondition(
                            f"no sharing agreement lets {request.source_partner_id!r} share "
                            f"{category!r} with {recipient!r} for {purpose!r}",
                            reason="NO_SHARING_AGREEMENT",
                            metadata={
                                "source": request.source_partner_id,
                                "recipient": recipient,
                                "category": category,
                                "purpose": purpose,
                            },
                        )

    async def _fulfil_request(
        self,
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


def _involves(definition: bytes, partner_id: str) -> bool:
    consent = consents_pb2.Consent.FromString(definition)
    return partner_id in (
        consent.source_partner_id,
        consent.collected_by_partner_id,
        *consent.recipient_partner_ids,
    )


async def _own_customer(conn: AsyncConnection, caller: Caller, local_id: str) -> str:
    """The subject behind one of the caller's own customer ids."""
    subject = (
        await conn.execute(
            select(subject_links.c.subject_id).where(
                subject_links.c.partner_id == caller.partner_id,
                subject_links.c.local_id == local_id,
            )
        )
    ).scalar()
    if subject is None:
        raise NotFound(
            f"partner {caller.partner_id!r} has no customer {local_id!r} at the gateway",
            reason="UNKNOWN_CUSTOMER",
        )
    return str(subject)


async def _knows_subject(conn: AsyncConnection, partner_id: str, subject_id: str) -> bool:
    return (
        await conn.execute(
            select(subject_links.c.local_id)
            .where(
                subject_links.c.partner_id == partner_id, subject_links.c.subject_id == subject_id
            )
            .limit(1)
        )
    ).first() is not None


async def _require_partners(conn: AsyncConnection, partner_ids: Sequence[str]) -> None:
    known = set(
        (
            await conn.execute(
                select(partners.c.partner_id).where(partners.c.partner_id.in_(set(partner_ids)))
            )
        ).scalars()
    )
    missing = [p for p in partner_ids if p not in known]
    if missing:
        raise InvalidArgument.field(
            "recipient_partner_ids" if missing[0] != partner_ids[0] else "source_partner_id",
            f"unknown partner {missing[0]!r}",
            reason="UNKNOWN_PARTNER",
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


__all__ = ["AccessDecision", "ConsentRules", "Consents", "Flow"]
