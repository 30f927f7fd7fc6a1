"""What the consent records check before they act: a grant's fields and the sharing
agreements it needs, the partners it names, and the customer a partner speaks of."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from coopgate.v1 import admin_pb2, common_pb2, consents_pb2
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.consent.vocabulary import Vocabulary
from gateway.core.caller import Caller
from gateway.core.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from gateway.crypto.pki import PARTNER_ID_PATTERN
from gateway.store.localids import LocalIdIndex
from gateway.store.schema import consents, partners, sharing_agreements, subject_links


def validate_grant(vocabulary: Vocabulary, request: consents_pb2.GrantConsentRequest) -> None:
    violations: list[FieldViolation] = []
    if not request.customer_local_id:
        violations.append(FieldViolation("customer_local_id", "is required"))
    if not PARTNER_ID_PATTERN.fullmatch(request.source_partner_id):
        violations.append(FieldViolation("source_partner_id", "must be a partner id"))
    if not request.recipient_partner_ids:
        violations.append(FieldViolation("recipient_partner_ids", "at least one recipient"))
    for i, r in enumerate(request.recipient_partner_ids):
        if not PARTNER_ID_PATTERN.fullmatch(r):
            violations.append(FieldViolation(f"recipient_partner_ids[{i}]", "must be a partner id"))
        elif r == request.source_partner_id:
            violations.append(
                FieldViolation(f"recipient_partner_ids[{i}]", "the source already holds its data")
            )
    violations += vocabulary.category_violations("categories", list(request.categories))
    violations += vocabulary.purpose_violations("purposes", list(request.purposes), consent=True)
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


async def require_agreements(
    conn: AsyncConnection, request: consents_pb2.GrantConsentRequest, at: dt.datetime
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
                if not any(category in a.categories and purpose in a.purposes for a in agreements):
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


def involves(definition: bytes, partner_id: str) -> bool:
    consent = consents_pb2.Consent.FromString(definition)
    return partner_id in (
        consent.source_partner_id,
        consent.collected_by_partner_id,
        *consent.recipient_partner_ids,
    )


async def next_boundary(
    conn: AsyncConnection, subject_id: str, recipient_id: str, now: dt.datetime
) -> dt.datetime | None:
    """The next moment after ``now`` at which a given consent of this customer naming
    ``recipient_id`` as a recipient starts or ends: what that recipient may see changes
    then with nothing written (a watch tells of it as of a grant or a withdrawal)."""
    rows = await conn.execute(
        select(consents.c.valid_from, consents.c.valid_until, consents.c.definition).where(
            consents.c.subject_id == subject_id,
            consents.c.state == consents_pb2.CONSENT_STATE_GIVEN,
            or_(consents.c.valid_from > now, consents.c.valid_until > now),
        )
    )
    moments = [
        moment
        for valid_from, valid_until, definition in rows
        if recipient_id in consents_pb2.Consent.FromString(bytes(definition)).recipient_partner_ids
        for moment in (valid_from, valid_until)
        if moment is not None and moment > now
    ]
    return min(moments, default=None)


async def own_customer(
    conn: AsyncConnection, index: LocalIdIndex, caller: Caller, local_id: str
) -> str:
    """The subject behind one of the caller's own customer ids."""
    subject = (
        await conn.execute(
            select(subject_links.c.subject_id).where(
                subject_links.c.partner_id == caller.partner_id,
                subject_links.c.local_hash == index.digest(caller.partner_id, local_id),
            )
        )
    ).scalar()
    if subject is None:
        raise NotFound(
            f"partner {caller.partner_id!r} has no customer {local_id!r} at the gateway",
            reason="UNKNOWN_CUSTOMER",
        )
    return str(subject)


async def knows_subject(conn: AsyncConnection, partner_id: str, subject_id: str) -> bool:
    return (
        await conn.execute(
            select(subject_links.c.partner_id)
            .where(
                subject_links.c.partner_id == partner_id, subject_links.c.subject_id == subject_id
            )
            .limit(1)
        )
    ).first() is not None


async def require_partners(conn: AsyncConnection, partner_ids: Sequence[str]) -> None:
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


__all__ = [
    "involves",
    "knows_subject",
    "own_customer",
    "require_agreements",
    "require_partners",
    "validate_grant",
]
