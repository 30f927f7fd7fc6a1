"""Sharing agreements: what one partner of a service shares with another, for
which purposes, and how it changes the ownership policy and diagnosis deadlines.

Mutations need the admin role; reads are open to every authenticated caller.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid

from coopgate.v1 import admin_pb2
from sqlalchemy import insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.admin.registry import definition_digest, load_service
from gateway.audit.log import AuditLog, AuditRecord
from gateway.consent.vocabulary import Vocabulary
from gateway.core.caller import Caller
from gateway.core.errors import FieldViolation, InvalidArgument
from gateway.crypto.pki import PARTNER_ID_PATTERN
from gateway.store import Store
from gateway.store.idempotency import run_once
from gateway.store.schema import sharing_agreements


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class SharingAgreements:
    """Every change is audited in the transaction that makes it."""

    def __init__(self, store: Store, vocabulary: Vocabulary, audit: AuditLog) -> None:
        self.store = store
        self.vocabulary = vocabulary
        self.audit = audit

    async def define_sharing_agreement(
        self, caller: Caller, request: admin_pb2.DefineSharingAgreementRequest
    ) -> admin_pb2.DefineSharingAgreementResponse:
        agreement = admin_pb2.SharingAgreement()
        agreement.CopyFrom(request.agreement)
        violations = _agreement_violations(agreement)
        violations += self.vocabulary.category_violations(
            "agreement.categories", list(agreement.categories)
        )
        violations += self.vocabulary.purpose_violations(
            "agreement.purposes", list(agreement.purposes)
        )
        if violations:
            raise InvalidArgument(violations)

        async def action(conn: AsyncConnection) -> admin_pb2.DefineSharingAgreementResponse:
            service = await load_service(conn, agreement.service_id, field="agreement.service_id")
            chain = {c.partner_id for c in service.components}
            override = agreement.ownership_override
            if override.host_partner_id and override.host_partner_id not in chain:
                raise InvalidArgument.field(
                    "agreement.ownership_override.host_partner_id",
                    "the host must own a component of the service",
                )
            for field in ("source_partner_id", "recipient_partner_id"):
                if getattr(agreement, field) not in chain:
                    raise InvalidArgument.field(
                        f"agreement.{field}",
                        f"partner is not in the chain of service {service.service_id!r}",
                    )
            if not agreement.agreement_id:
                agreement.agreement_id = f"agr-{uuid.uuid4().hex[:16]}"
            if not agreement.HasField("valid_from"):
                agreement.valid_from.FromDatetime(_now())
            valid_until = (
                agreement.valid_until.ToDatetime(dt.UTC)
                if agreement.HasField("valid_until")
                else None
            )
            values = {
                "source_partner_id": agreement.source_partner_id,
                "recipient_partner_id": agreement.recipient_partner_id,
                "service_id": agreement.service_id,
                "definition": agreement.SerializeToString(deterministic=True),
                "valid_from": agreement.valid_from.ToDatetime(dt.UTC),
                "valid_until": valid_until,
            }
            exists = (
                await conn.execute(
                    select(sharing_agreements.c.agreement_id).where(
                        sharing_agreements.c.agreement_id == agreement.agreement_id
                    )
                )
            ).first()
            if exists:
                await conn.execute(
                    update(sharing_agreements)
                    .where(sharing_agreements.c.agreement_id == agreement.agreement_id)
                    .values(**values)
                )
            else:
                await conn.execute(
                    insert(sharing_agreements).values(agreement_id=agreement.agreement_id, **values)
                )
            await self.audit.record_in(
                conn,
                [
                    AuditRecord(
                        kind="admin",
                        action="admin.agreement-redefined" if exists else "admin.agreement-defined",
                        actor_partner_id=caller.partner_id,
                        actor_person_id=caller.person_id,
                        source_partner_id=agreement.source_partner_id,
                        agreement_id=agreement.agreement_id,
                        categories=tuple(agreement.categories),
                        purpose=",".join(agreement.purposes),
                        details=(
                            ("recipient", agreement.recipient_partner_id),
                            ("service", agreement.service_id),
                            ("valid_until", valid_until.isoformat() if valid_until else ""),
                            ("definition_sha256", definition_digest(agreement)),
                        ),
                    )
                ],
            )
            return admin_pb2.DefineSharingAgreementResponse(agreement=agreement)

        response, _ = await run_once(
            self.store,
            caller,
            "DefineSharingAgreement",
            request,
            admin_pb2.DefineSharingAgreementResponse,
            action,
        )
        return response

    async def list_sharing_agreements(
        self, request: admin_pb2.ListSharingAgreementsRequest
    ) -> admin_pb2.ListSharingAgreementsResponse:
        query = select(sharing_agreements.c.definition).order_by(sharing_agreements.c.agreement_id)
        if request.partner_id:
            query = query.where(
                or_(
                    sharing_agreements.c.source_partner_id == request.partner_id,
                    sharing_agreements.c.recipient_partner_id == request.partner_id,
                )
            )
        if request.service_id:
            query = query.where(sharing_agreements.c.service_id == request.service_id)
        async with self.store.read() as conn:
            rows = (await conn.execute(query)).scalars()
            return admin_pb2.ListSharingAgreementsResponse(
                agreements=[admin_pb2.SharingAgreement.FromString(d) for d in rows]
            )


def _agreement_violations(agreement: admin_pb2.SharingAgreement) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    for field in ("source_partner_id", "recipient_partner_id"):
        if not PARTNER_ID_PATTERN.fullmatch(getattr(agreement, field)):
            violations.append(FieldViolation(f"agreement.{field}", "must be a partner id"))
    if agreement.source_partner_id == agreement.recipient_partner_id:
        violations.append(
            FieldViolation("agreement.recipient_partner_id", "must differ from the source")
        )
    if (
        agreement.HasField("valid_from")
        and agreement.HasField("valid_until")
        and agreement.valid_until.ToDatetime() <= agreement.valid_from.ToDatetime()
    ):
        violations.append(FieldViolation("agreement.valid_until", "must be after valid_from"))
    if agreement.HasField("source_diagnosis_deadline") and (
        agreement.source_diagnosis_deadline.ToTimedelta() <= dt.timedelta(0)
    ):
        violations.append(FieldViolation("agreement.source_diagnosis_deadline", "must be positive"))
    override = agreement.ownership_override
    if not 0 <= override.min_fault_confidence <= 1:
        violations.append(
            FieldViolation("agreement.ownership_override.min_fault_confidence", "must be in (0, 1]")
        )
    if override.HasField("acceptance_deadline") and (
        override.acceptance_deadline.ToTimedelta() <= dt.timedelta(0)
    ):
        violations.append(
            FieldViolation("agreement.ownership_override.acceptance_deadline", "must be positive")
        )
    if agreement.agreement_id and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", agreement.agreement_id):
        violations.append(FieldViolation("agreement.agreement_id", "must be 1-64 [A-Za-z0-9_.-]"))
    return violations
