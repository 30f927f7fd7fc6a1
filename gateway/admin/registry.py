"""Administration: partners and services with their component chains (sharing
agreements are in ``gateway.admin.agreements``).

Mutations need the admin role; reads are open to every authenticated caller
(the catalogue of services is not customer data).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Literal

from coopgate.v1 import admin_pb2
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from sqlalchemy import bindparam, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.log import AuditLog, AuditRecord
from gateway.consent.vocabulary import Vocabulary
from gateway.core.caller import Caller
from gateway.core.errors import FailedPrecondition, FieldViolation, InvalidArgument
from gateway.crypto.pki import PARTNER_ID_PATTERN
from gateway.store import Store
from gateway.store.idempotency import run_once
from gateway.store.schema import partners, service_components, services, sharing_agreements
from gateway.store.statements import execute

SERVICE_ID_PATTERN = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9.-]{0,99}$")

DEFAULT_DIAGNOSIS_DEADLINE = dt.timedelta(seconds=30)
DEFAULT_ACCEPTANCE_DEADLINE = dt.timedelta(minutes=15)
DEFAULT_MIN_FAULT_CONFIDENCE = 0.7
DEFAULT_TIME_TO_OWNER = dt.timedelta(hours=1)
DEFAULT_TIME_TO_RESOLUTION = dt.timedelta(hours=24)
DEFAULT_CONFIRMATION_WINDOW = dt.timedelta(days=7)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def definition_digest(message: Message) -> str:
    """SHA-256 of a definition's deterministic encoding: the audit entry pins exactly what
    was defined without holding it."""
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()


def _duration(value: dt.timedelta) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(value)
    return d


class Admin:
    """Every change is audited in the transaction that makes it."""

    def __init__(self, store: Store, vocabulary: Vocabulary, audit: AuditLog) -> None:
        self.store = store
        self.vocabulary = vocabulary
        self.audit = audit
        #: Partners known to be registered (a partner is never removed): asked of the
        #: store only for one not known yet.
        self._registered: set[str] = set()

    async def is_registered(self, partner_id: str) -> bool:
        """Whether ``partner_id`` is a registered partner (its certificate may act for it)."""
        if partner_id in self._registered:
            return True
        async with self.store.read() as conn:
            found = (
                await conn.execute(
                    select(partners.c.partner_id).where(partners.c.partner_id == partner_id)
                )
            ).first()
        if found is not None:
            self._registered.add(partner_id)
        return found is not None

    # -- partners ---------------------------------------------------------

    async def register_partner(
        self, caller: Caller, request: admin_pb2.RegisterPartnerRequest
    ) -> admin_pb2.RegisterPartnerResponse:
        violations = []
        if not PARTNER_ID_PATTERN.fullmatch(request.partner_id):
            violations.append(FieldViolation("partner_id", "must match [a-z][a-z0-9-]{1,62}"))
        if not request.display_name.strip() or len(request.display_name) > 200:
            violations.append(FieldViolation("display_name", "must be 1-200 characters"))
        if request.kind == admin_pb2.PARTNER_KIND_UNSPECIFIED:
            violations.append(FieldViolation("kind", "must be set"))
        elif request.kind not in admin_pb2.PartnerKind.values():
            violations.append(FieldViolation("kind", f"unknown value {request.kind}"))
        if violations:
            raise InvalidArgument(violations)

        async def action(conn: AsyncConnection) -> admin_pb2.RegisterPartnerResponse:
            now = _now()
            existing = (
                await conn.execute(
                    select(partners.c.created_at).where(partners.c.partner_id == request.partner_id)
                )
            ).first()
            if existing is None:
                await conn.execute(
                    insert(partners).values(
                        partner_id=request.partner_id,
                        display_name=request.display_name,
                        kind=request.kind,
                        created_at=now,
                    )
                )
                created_at = now
            else:
                await conn.execute(
                    update(partners)
                    .where(partners.c.partner_id == request.partner_id)
                    .values(display_name=request.display_name, kind=request.kind)
                )
                created_at = existing.created_at
            partner = admin_pb2.Partner(
                partner_id=request.partner_id,
                display_name=request.display_name,
                kind=request.kind,
            )
            partner.created_at.FromDatetime(created_at)
            await self.audit.record_in(
                conn,
                [
                    AuditRecord(
                        kind="admin",
                        action="admin.partner-registered"
                        if existing is None
                        else "admin.partner-updated",
                        actor_partner_id=caller.partner_id,
                        actor_person_id=caller.person_id,
                        details=(
                            ("partner", partner.partner_id),
                            ("kind", admin_pb2.PartnerKind.Name(partner.kind)),
                            ("definition_sha256", definition_digest(partner)),
                        ),
                    )
                ],
            )
            return admin_pb2.RegisterPartnerResponse(partner=partner)

        response, _ = await run_once(
            self.store,
            caller,
            "RegisterPartner",
            request,
            admin_pb2.RegisterPartnerResponse,
            action,
        )
        return response

    async def list_partners(self, caller: Caller) -> admin_pb2.ListPartnersResponse:
        async with self.store.read() as conn:
            rows = (await conn.execute(select(partners).order_by(partners.c.partner_id))).all()
        result = admin_pb2.ListPartnersResponse()
        for row in rows:
            p = result.partners.add(
                partner_id=row.partner_id, display_name=row.display_name, kind=row.kind
            )
            p.created_at.FromDatetime(row.created_at)
        return result

    # -- services ---------------------------------------------------------

    async def define_service(
        self, caller: Caller, request: admin_pb2.DefineServiceRequest
    ) -> admin_pb2.DefineServiceResponse:
        service = _normalised_service(request.service)

        async def action(conn: AsyncConnection) -> admin_pb2.DefineServiceResponse:
            owners = {c.partner_id for c in service.components}
            known = set(
                (
                    await conn.execute(
                        select(partners.c.partner_id).where(partners.c.partner_id.in_(owners))
                    )
                ).scalars()
            )
            violations = [
                FieldViolation(
                    f"service.components[{i}].partner_id",
                    f"partner {c.partner_id!r} is not registered",
                )
                for i, c in enumerate(service.components)
                if c.partner_id not in known
            ]
            if violations:
                raise InvalidArgument(violations)
            current = (
                await conn.execute(
                    select(services.c.version).where(services.c.service_id == service.service_id)
                )
            ).scalar()
            service.version = (current or 0) + 1
            values = {
                "version": service.version,
                "definition": service.SerializeToString(deterministic=True),
                "updated_at": _now(),
            }
            if current is None:
                await conn.execute(insert(services).values(service_id=service.service_id, **values))
            else:
                await conn.execute(
                    update(services)
                    .where(services.c.service_id == service.service_id)
                    .values(**values)
                )
                await conn.execute(
                    delete(service_components).where(
                        service_components.c.service_id == service.service_id
                    )
                )
            await conn.execute(
                insert(service_components),
                [
                    {
                        "service_id": service.service_id,
                        "name": c.name,
                        "partner_id": c.partner_id,
                        "position": i,
                    }
                    for i, c in enumerate(service.components)
                ],
            )
            await self.audit.record_in(
                conn,
                [
                    AuditRecord(
                        kind="admin",
                        action="admin.service-defined",
                        actor_partner_id=caller.partner_id,
                        actor_person_id=caller.person_id,
                        details=(
                            ("service", service.service_id),
                            ("version", str(service.version)),
                            (
                                "chain",
                                ",".join(f"{c.name}={c.partner_id}" for c in service.components),
                            ),
                            ("definition_sha256", definition_digest(service)),
                        ),
                    )
                ],
            )
            return admin_pb2.DefineServiceResponse(service=service)

        response, _ = await run_once(
            self.store, caller, "DefineService", request, admin_pb2.DefineServiceResponse, action
        )
        return response

    async def get_service(self, service_id: str) -> admin_pb2.Service:
        async with self.store.read() as conn:
            return await load_service(conn, service_id, field="service_id")

    async def list_services(
        self, request: admin_pb2.ListServicesRequest | None = None
    ) -> admin_pb2.ListServicesResponse:
        """The catalogue: the services in it (those retired too, if asked)."""
        include_retired = request is not None and request.include_retired
        async with self.store.read() as conn:
            rows = (
                await conn.execute(select(services.c.definition).order_by(services.c.service_id))
            ).scalars()
            found = [admin_pb2.Service.FromString(d) for d in rows]
        return admin_pb2.ListServicesResponse(
            services=[s for s in found if include_retired or not s.HasField("retired_at")]
        )

    async def retire_service(
        self, caller: Caller, request: admin_pb2.RetireServiceRequest
    ) -> admin_pb2.RetireServiceResponse:
        """Take a service out of the catalogue (a drill's copy, a discontinued offer): no
        longer listed, no new case on it, its sharing agreements ended now; its cases
        and their history stay. Retiring a retired service changes nothing."""
        if not SERVICE_ID_PATTERN.fullmatch(request.service_id):
            raise InvalidArgument.field("service_id", "must match [a-z][a-z0-9-]{1,62}")

        async def action(conn: AsyncConnection) -> admin_pb2.RetireServiceResponse:
            service = await load_service(conn, request.service_id, field="service_id")
            if service.HasField("retired_at"):
                return admin_pb2.RetireServiceResponse(service=service)
            now = _now()
            service.version += 1
            service.retired_at.FromDatetime(now)
            await conn.execute(
                update(services)
                .where(services.c.service_id == service.service_id)
                .values(
                    version=service.version,
                    definition=service.SerializeToString(deterministic=True),
                    updated_at=now,
                )
            )
            ended = await end_agreements(conn, service.service_id, now)
            await self.audit.record_in(
                conn,
                [
                    AuditRecord(
                        kind="admin",
                        action="admin.service-retired",
                        actor_partner_id=caller.partner_id,
                        actor_person_id=caller.person_id,
                        details=(
                            ("service", service.service_id),
                            ("version", str(service.version)),
                            ("agreements_ended", ",".join(ended)),
                            ("definition_sha256", definition_digest(service)),
                        ),
                    )
                ],
            )
            return admin_pb2.RetireServiceResponse(service=service, ended_agreement_ids=ended)

        response, _ = await run_once(
            self.store, caller, "RetireService", request, admin_pb2.RetireServiceResponse, action
        )
        return response


async def end_agreements(conn: AsyncConnection, service_id: str, at: dt.datetime) -> list[str]:
    """End every sharing agreement of the service still in force at ``at`` (its
    ``valid_until`` set to ``at``, in its row and its definition); their ids."""
    rows = (
        await conn.execute(
            select(sharing_agreements.c.agreement_id, sharing_agreements.c.definition)
            .where(
                sharing_agreements.c.service_id == service_id,
                or_(
                    sharing_agreements.c.valid_until.is_(None),
                    sharing_agreements.c.valid_until > at,
                ),
            )
            .order_by(sharing_agreements.c.agreement_id)
        )
    ).all()
    for agreement_id, definition in rows:
        agreement = admin_pb2.SharingAgreement.FromString(definition)
        agreement.valid_until.FromDatetime(at)
        await conn.execute(
            update(sharing_agreements)
            .where(sharing_agreements.c.agreement_id == agreement_id)
            .values(valid_until=at, definition=agreement.SerializeToString(deterministic=True))
        )
    return [str(agreement_id) for agreement_id, _ in rows]


#: A service's current definition by id (built once: read by every case opened).
_DEFINITION = select(services.c.definition).where(services.c.service_id == bindparam("service_id"))


async def load_service(conn: AsyncConnection, service_id: str, *, field: str) -> admin_pb2.Service:
    """The current definition of a service; an unknown id is bad input naming ``field``."""
    if not service_id:
        raise InvalidArgument.field(field, "is required")
    definition = (await execute(conn, _DEFINITION, {"service_id": service_id})).scalar()
    if definition is None:
        raise InvalidArgument.field(
            field, f"unknown service {service_id!r}", reason="UNKNOWN_SERVICE"
        )
    return admin_pb2.Service.FromString(definition)


def require_in_catalogue(service: admin_pb2.Service) -> None:
    """A retired service takes no new case (FAILED_PRECONDITION ``SERVICE_RETIRED``)."""
    if service.HasField("retired_at"):
        raise FailedPrecondition(
            f"service {service.service_id!r} is retired (no new case is opened on it)",
            reason="SERVICE_RETIRED",
        )


def _normalised_service(given: admin_pb2.Service) -> admin_pb2.Service:
    """Validate a service definition and fill in the documented defaults."""
    service = admin_pb2.Service()
    service.CopyFrom(given)
    violations: list[FieldViolation] = []
    if not SERVICE_ID_PATTERN.fullmatch(service.service_id):
        violations.append(FieldViolation("service.service_id", "must match [a-z][a-z0-9-]{1,62}"))
    if not service.display_name.strip():
        service.display_name = service.service_id
    if not service.components:
        violations.append(FieldViolation("service.components", "at least one component is needed"))
    seen: set[str] = set()
    for i, c in enumerate(service.components):
        where = f"service.components[{i}]"
        if not NAME_PATTERN.fullmatch(c.name):
            violations.append(FieldViolation(f"{where}.name", "must match [a-z][a-z0-9.-]{0,99}"))
        elif c.name in seen:
            violations.append(FieldViolation(f"{where}.name", f"duplicate component {c.name!r}"))
        seen.add(c.name)
        if not PARTNER_ID_PATTERN.fullmatch(c.partner_id):
            violations.append(FieldViolation(f"{where}.partner_id", "must be a partner id"))
        if not c.HasField("diagnosis_deadline"):
            c.diagnosis_deadline.CopyFrom(_duration(DEFAULT_DIAGNOSIS_DEADLINE))
        elif c.diagnosis_deadline.ToTimedelta() <= dt.timedelta(0):
            violations.append(FieldViolation(f"{where}.diagnosis_deadline", "must be positive"))
    policy = service.ownership_policy
    owners = {c.partner_id for c in service.components}
    if policy.host_partner_id and policy.host_partner_id not in owners:
        violations.append(
            FieldViolation(
                "service.ownership_policy.host_partner_id",
                "the host must own a component of the service",
            )
        )
    if policy.min_fault_confidence == 0:
        policy.min_fault_confidence = DEFAULT_MIN_FAULT_CONFIDENCE
    elif not 0 < policy.min_fault_confidence <= 1:
        violations.append(
            FieldViolation("service.ownership_policy.min_fault_confidence", "must be in (0, 1]")
        )
    levels = service.service_level
    level_defaults: tuple[
        tuple[Literal["time_to_owner", "time_to_resolution", "confirmation_window"], dt.timedelta],
        ...,
    ] = (
        ("time_to_owner", DEFAULT_TIME_TO_OWNER),
        ("time_to_resolution", DEFAULT_TIME_TO_RESOLUTION),
        ("confirmation_window", DEFAULT_CONFIRMATION_WINDOW),
    )
    for name, default in level_defaults:
        value = getattr(levels, name)
        if not levels.HasField(name):
            value.CopyFrom(_duration(default))
        elif value.ToTimedelta() <= dt.timedelta(0):
            violations.append(FieldViolation(f"service.service_level.{name}", "must be positive"))
    if not policy.HasField("acceptance_deadline"):
        policy.acceptance_deadline.CopyFrom(_duration(DEFAULT_ACCEPTANCE_DEADLINE))
    elif policy.acceptance_deadline.ToTimedelta() <= dt.timedelta(0):
        violations.append(
            FieldViolation("service.ownership_policy.acceptance_deadline", "must be positive")
        )
    if violations:
        raise InvalidArgument(violations)
    service.version = 0
    service.ClearField("retired_at")  # defining a service puts it in the catalogue
    return service
