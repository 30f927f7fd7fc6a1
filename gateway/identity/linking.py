"""Identity linking: one customer, known by each partner under its own id.

Two proofs link a partner's customer id to the subject another partner knows:
a one-time link code the customer carries from one channel to another, or a
match on normalised identifiers (kept only as keyed hashes) that the customer
confirms. Partners only ever see pairwise pseudonyms; no partner's customer
id is revealed to another. Linking, merging and unlinking are audited.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass

from coopgate.v1 import identity_pb2
from cryptography.hazmat.primitives import hashes, hmac
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.log import AuditLog, AuditRecord
from gateway.core.caller import Caller
from gateway.core.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from gateway.crypto.pseudonyms import Pseudonyms
from gateway.crypto.sealing import Sealer
from gateway.identity.subjects import LocalIds, require_local_id
from gateway.store import Store
from gateway.store.idempotency import run_once
from gateway.store.schema import (
    cases,
    consent_requests,
    consents,
    idempotency_keys,
    identifier_hashes,
    link_codes,
    match_proposals,
    subject_links,
    subjects,
)

CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
CODE_LENGTH = 10
CODE_LIFETIME = dt.timedelta(minutes=15)
MATCH_LIFETIME = dt.timedelta(hours=24)
MAX_IDENTIFIERS = 10
DEFAULT_COUNTRY_CODE = "33"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
#: What a merge of subjects moves to the subject kept (stored answers too, so that
#: erasing the merged customer reaches those given before the merge), besides the
#: partners' links (`LocalIds.move`: their ids are sealed again under its key).
_FOLLOW_THE_SUBJECT = (
    cases,
    consents,
    consent_requests,
    link_codes,
    match_proposals,
    idempotency_keys,
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def normalise(kind: int, value: str, country_code: str = DEFAULT_COUNTRY_CODE) -> str:
    """The canonical form hashed for matching; raises ValueError when malformed.

    E-mail: trimmed, lower-cased. Phone: E.164 digits with '+'; '00' becomes
    '+', and a national number with one leading 0 takes ``country_code``.
    """
    value = value.strip()
    if kind == identity_pb2.IDENTIFIER_KIND_EMAIL:
        email = value.lower()
        if not _EMAIL.fullmatch(email):
            raise ValueError("not an e-mail address")
        return email
    if kind == identity_pb2.IDENTIFIER_KIND_PHONE:
        digits = re.sub(r"[\s().-]", "", value)
        if digits.startswith("00"):
            digits = "+" + digits[2:]
        elif digits.startswith("0"):
            digits = f"+{country_code}{digits[1:]}"
        if not re.fullmatch(r"\+[1-9]\d{6,14}", digits):
            raise ValueError("not a phone number")
        return digits
    raise ValueError("unknown identifier kind")


@dataclass(slots=True, frozen=True)
class IdentifierHasher:
    """HMAC-SHA-256 under a gateway secret: equal identifiers match, and the
    stored digests reveal nothing without the secret."""

    key: bytes

    def digest(self, kind: int, normalised: str) -> bytes:
        mac = hmac.HMAC(self.key, hashes.SHA256())
        mac.update(f"{kind}:{normalised}".encode())
        return mac.finalize()


class Identity:
    def __init__(
        self,
        store: Store,
        pseudonyms: Pseudonyms,
        hasher: IdentifierHasher,
        audit: AuditLog,
        sealer: Sealer,
    ) -> None:
        self.store = store
        self.pseudonyms = pseudonyms
        self.hasher = hasher
        self.audit = audit
        self.local_ids = LocalIds(store, sealer)

    async def issue_link_code(
        self, caller: Caller, request: identity_pb2.IssueLinkCodeRequest
    ) -> identity_pb2.IssueLinkCodeResponse:
        require_local_id(request.customer_local_id)

        async def action(conn: AsyncConnection) -> identity_pb2.IssueLinkCodeResponse:
            subject = await self.local_ids.subject_for(
                conn, caller.partner_id, request.customer_local_id
            )
            code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            expires = _now() + CODE_LIFETIME
            await conn.execute(
                insert(link_codes).values(
                    code_hash=_code_hash(code),
                    partner_id=caller.partner_id,
                    subject_id=subject,
                    expires_at=expires,
                )
            )
            response = identity_pb2.IssueLinkCodeResponse(link_code=code)
            response.expires_at.FromDatetime(expires)
            return response

        response, _ = await run_once(
            self.store,
            caller,
            "IssueLinkCode",
            request,
            identity_pb2.IssueLinkCodeResponse,
            action,
        )
        return response

    async def redeem_link_code(
        self, caller: Caller, request: identity_pb2.RedeemLinkCodeRequest
    ) -> identity_pb2.RedeemLinkCodeResponse:
        require_local_id(request.customer_local_id)
        code = request.link_code.strip().upper().replace("-", "").replace(" ", "")
        if len(code) != CODE_LENGTH or any(c not in CODE_ALPHABET for c in code):
            raise InvalidArgument.field("link_code", f"{CODE_LENGTH} characters of [0-9A-Z]")

        async def action(conn: AsyncConnection) -> identity_pb2.RedeemLinkCodeResponse:
            row = (
                await conn.execute(
                    select(link_codes).where(link_codes.c.code_hash == _code_hash(code))
                )
            ).first()
            if row is None or row.used_at is not None or row.expires_at <= _now():
                raise FailedPrecondition(
                    "the link code is unknown, used or expired", reason="LINK_CODE_INVALID"
                )
            if row.partner_id == caller.partner_id:
                raise InvalidArgument.field(
                    "link_code", "was issued by your own partner: redeem it at another one"
                )
            await conn.execute(
                update(link_codes)
                .where(link_codes.c.code_hash == row.code_hash)
                .values(used_at=_now())
            )
            subject = await _link(
                conn,
                self.local_ids,
                self.audit,
                caller,
                self.local_ids.digest(caller.partner_id, request.customer_local_id),
                row.subject_id,
                method="link-code",
                local_id=request.customer_local_id,
            )
            return identity_pb2.RedeemLinkCodeResponse(
                subject_id=self.pseudonyms.for_partner(caller.partner_id, subject)
            )

        response, _ = await run_once(
            self.store,
            caller,
            "RedeemLinkCode",
            request,
            identity_pb2.RedeemLinkCodeResponse,
            action,
        )
        return response

    async def register_identifiers(
        self, caller: Caller, request: identity_pb2.RegisterIdentifiersRequest
    ) -> identity_pb2.RegisterIdentifiersResponse:
        require_local_id(request.customer_local_id)
        if not request.identifiers or len(request.identifiers) > MAX_IDENTIFIERS:
            raise InvalidArgument.field("identifiers", f"1 to {MAX_IDENTIFIERS} identifiers")
        digests: list[tuple[int, bytes]] = []
        violations = []
        for i, identifier in enumerate(request.identifiers):
            try:
                normalised = normalise(identifier.kind, identifier.value)
            except ValueError as exc:
                violations.append(FieldViolation(f"identifiers[{i}]", str(exc)))
                continue
            digests.append((identifier.kind, self.hasher.digest(identifier.kind, normalised)))
        if violations:
            raise InvalidArgument(violations)

        async def action(conn: AsyncConnection) -> identity_pb2.RegisterIdentifiersResponse:
            own = await self.local_ids.subject_for(
                conn, caller.partner_id, request.customer_local_id
            )
            local_hash = self.local_ids.digest(caller.partner_id, request.customer_local_id)
            for kind, digest in digests:
                exists = (
                    await conn.execute(
                        select(identifier_hashes.c.digest).where(
                            identifier_hashes.c.partner_id == caller.partner_id,
                            identifier_hashes.c.local_hash == local_hash,
                            identifier_hashes.c.kind == kind,
                            identifier_hashes.c.digest == digest,
                        )
                    )
                ).first()
                if exists is None:
                    await conn.execute(
                        insert(identifier_hashes).values(
                            partner_id=caller.partner_id,
                            local_hash=local_hash,
                            kind=kind,
                            digest=digest,
                        )
                    )
            matches = (
                await conn.execute(
                    select(identifier_hashes.c.kind, subject_links.c.subject_id)
                    .join(
                        subject_links,
                        (subject_links.c.partner_id == identifier_hashes.c.partner_id)
                        & (subject_links.c.local_hash == identifier_hashes.c.local_hash),
                    )
                    .where(
                        identifier_hashes.c.digest.in_([d for _, d in digests]),
                        identifier_hashes.c.partner_id != caller.partner_id,
                        subject_links.c.subject_id != own,
                    )
                )
            ).all()
            by_subject: dict[str, set[int]] = {}
            for kind, subject in matches:
                by_subject.setdefault(subject, set()).add(kind)
            response = identity_pb2.RegisterIdentifiersResponse()
            expires = _now() + MATCH_LIFETIME
            for subject, kinds in sorted(by_subject.items()):
                match_id = f"match-{uuid.uuid4().hex}"
                await conn.execute(
                    insert(match_proposals).values(
                        match_id=match_id,
                        partner_id=caller.partner_id,
                        local_hash=local_hash,
                        subject_id=subject,
                        matched_on=",".join(str(k) for k in sorted(kinds)),
                        expires_at=expires,
                    )
                )
                proposal = response.proposals.add(match_id=match_id, matched_on=sorted(kinds))
                proposal.expires_at.FromDatetime(expires)
            return response

        response, _ = await run_once(
            self.store,
            caller,
            "RegisterIdentifiers",
            request,
            identity_pb2.RegisterIdentifiersResponse,
            action,
        )
        return response

    async def confirm_match(
        self, caller: Caller, request: identity_pb2.ConfirmMatchRequest
    ) -> identity_pb2.ConfirmMatchResponse:
        if not request.match_id:
            raise InvalidArgument.field("match_id", "is required")

        async def action(conn: AsyncConnection) -> identity_pb2.ConfirmMatchResponse:
            row = (
                await conn.execute(
                    select(match_proposals).where(match_proposals.c.match_id == request.match_id)
                )
            ).first()
            if row is None or row.partner_id != caller.partner_id:
                raise NotFound(f"match {request.match_id!r} not found", reason="MATCH_NOT_FOUND")
            if row.confirmed_at is not None or row.expires_at <= _now():
                raise FailedPrecondition(
                    "the match was already confirmed or has expired", reason="MATCH_CLOSED"
                )
            await conn.execute(
                update(match_proposals)
                .where(match_proposals.c.match_id == row.match_id)
                .values(confirmed_at=_now())
            )
            subject = await _link(
                conn,
                self.local_ids,
                self.audit,
                caller,
                bytes(row.local_hash),
                row.subject_id,
                method="identifier-match",
            )
            return identity_pb2.ConfirmMatchResponse(
                subject_id=self.pseudonyms.for_partner(caller.partner_id, subject)
            )

        response, _ = await run_once(
            self.store, caller, "ConfirmMatch", request, identity_pb2.ConfirmMatchResponse, action
        )
        return response

    async def unlink(
        self, caller: Caller, request: identity_pb2.UnlinkRequest
    ) -> identity_pb2.UnlinkResponse:
        """Detach the caller's customer id from the shared subject: from now on
        it is a subject of its own. Past cases keep their history."""
        require_local_id(request.customer_local_id)

        async def action(conn: AsyncConnection) -> identity_pb2.UnlinkResponse:
            current = await self.local_ids.linked_subject(
                conn, caller.partner_id, request.customer_local_id
            )
            if current is None:
                raise NotFound("no such customer of yours", reason="UNKNOWN_CUSTOMER")
            fresh = await self.local_ids.new_subject(conn)
            await self.local_ids.move(
                conn,
                current,
                fresh,
                partner_id=caller.partner_id,
                local_id=request.customer_local_id,
            )
            await self.audit.record_in(
                conn,
                [
                    AuditRecord(
                        kind="identity",
                        action="identity.unlinked",
                        actor_partner_id=caller.partner_id,
                        actor_person_id=caller.person_id,
                        subject_id=current,
                        details=(("new_subject", fresh),),
                    )
                ],
            )
            return identity_pb2.UnlinkResponse()

        response, _ = await run_once(
            self.store, caller, "Unlink", request, identity_pb2.UnlinkResponse, action
        )
        return response

    async def resolve_subject(
        self, caller: Caller, request: identity_pb2.ResolveSubjectRequest
    ) -> identity_pb2.ResolveSubjectResponse:
        require_local_id(request.customer_local_id)
        async with self.store.read() as conn:
            subject = await self.local_ids.linked_subject(
                conn, caller.partner_id, request.customer_local_id
            )
        if subject is None:
            raise NotFound("no such customer of yours", reason="UNKNOWN_CUSTOMER")
        return identity_pb2.ResolveSubjectResponse(
            subject_id=self.pseudonyms.for_partner(caller.partner_id, subject)
        )


async def _link(
    conn: AsyncConnection,
    local_ids: LocalIds,
    audit: AuditLog,
    caller: Caller,
    local_hash: bytes,
    target: str,
    *,
    method: str,
    local_id: str | None = None,
) -> str:
    """Join the caller's customer id (found by its hash; ``local_id`` when it may be
    new) to ``target``; if it had a subject of its own, merge that subject (its
    cases, consents and other links) into it."""
    current = await local_ids.subject_by_hash(conn, caller.partner_id, local_hash)
    merged = ""
    if current is None:
        if local_id is None:
            # A match proposal's customer was linked when it was proposed.
            raise FailedPrecondition(
                "the customer of this match is no longer known", reason="MATCH_CLOSED"
            )
        await local_ids.link(conn, caller.partner_id, local_id, target)
    elif current != target:
        merged = current
        await local_ids.move(conn, current, target)
        for table in _FOLLOW_THE_SUBJECT:
            await conn.execute(
                update(table).where(table.c.subject_id == current).values(subject_id=target)
            )
        await conn.execute(delete(subjects).where(subjects.c.subject_id == current))
    await audit.record_in(
        conn,
        [
            AuditRecord(
                kind="identity",
                action="identity.linked",
                actor_partner_id=caller.partner_id,
                actor_person_id=caller.person_id,
                subject_id=target,
                reason=method,
                details=(("merged_subject", merged),) if merged else (),
            )
        ],
    )
    return target


def _code_hash(code: str) -> bytes:
    return hashlib.sha256(code.encode()).digest()
