"""Consent: the customer's permission, the partners' agreements, and the one
decision point every read of another partner's data goes through.

A flow of category C from partner A to partner B for purpose P is allowed only
when, at the moment of the read, (1) a sharing agreement A→B covers C and P
for the case's service and (2) the customer's consent, given and not
withdrawn or expired, covers A→B, C and P. Decisions are made from the store at
each call; the case view keeps its last decisions only with the versions of the
consents and agreements they read, which database triggers bump at every change, and
until the next validity period boundary (`CaseViews.get_view`): a withdrawal takes effect
on the very next read. Every decision is audited.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from coopgate.v1 import admin_pb2, consents_pb2
from sqlalchemy import (
    BindParameter,
    CompoundSelect,
    Connection,
    bindparam,
    literal,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.log import AuditLog, AuditRecord
from gateway.consent.periods import active as _active
from gateway.consent.periods import now as _now
from gateway.core.caller import Caller
from gateway.store.schema import (
    UtcDateTime,
    consents,
    sharing_agreements,
)
from gateway.store.statements import execute_in

#: The gateway's own events (status, ownership): every participant may see them.
GATEWAY_SOURCE = ""


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
    for row in execute_in(conn, _lookup_statement(len(ordered)), params).all():
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


__all__ = ["AccessDecision", "ConsentRules", "Flow"]
