"""What partners bring to a case: opening it (or reopening the customer's last one),
the interactions they had with the customer, and their findings on their components."""

from __future__ import annotations

import datetime as dt
import uuid

from coopgate.v1 import cases_pb2, common_pb2
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.admin.registry import load_service, require_in_catalogue
from gateway.cases.incidents import Incidents
from gateway.cases.reader import CaseReader
from gateway.cases.rows import (
    INTERACTION_CATEGORY,
    _load_case,
    _now,
    _participating_case,
    _visible_case,
    append_event,
    set_status,
)
from gateway.cases.starts import WorkflowStarts
from gateway.consent.vocabulary import Vocabulary
from gateway.core.caller import Caller
from gateway.core.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
)
from gateway.crypto.sealing import MISSING, Missing, Sealer
from gateway.identity.subjects import LocalIds
from gateway.store import Store
from gateway.store.idempotency import run_once
from gateway.store.schema import case_participants, cases
from gateway.store.statements import execute
from workflows import contracts

MAX_SUMMARY = 4000
MAX_LOCAL_ID = 200
FINDINGS_CATEGORY = "diagnostic.findings"
REPORTABLE_FINDINGS = (
    cases_pb2.FINDING_STATUS_OK,
    cases_pb2.FINDING_STATUS_DEGRADED,
    cases_pb2.FINDING_STATUS_FAULTY,
    cases_pb2.FINDING_STATUS_UNKNOWN,
)

# OpenCase's statements, built once (`statements.execute`).
_RESOLVED_BEFORE = (
    select(cases.c.case_id)
    .where(
        cases.c.subject_id == bindparam("subject_id"),
        cases.c.service_id == bindparam("service_id"),
        cases.c.status == cases_pb2.CASE_STATUS_RESOLVED,
    )
    .order_by(cases.c.opened_at.desc())
    .limit(1)
)
_NEW_CASE = insert(cases)  # every column named
_SUMMARY = (
    update(cases).where(cases.c.case_id == bindparam("id")).values(summary=bindparam("sealed"))
)
_PARTICIPANTS = insert(case_participants)  # every column named


class CaseIntake:
    """Opening a case (or reopening the customer's last one), and what partners add to it."""

    def __init__(
        self,
        store: Store,
        incidents: Incidents,
        vocabulary: Vocabulary,
        sealer: Sealer,
        reader: CaseReader,
        starts: WorkflowStarts,
    ) -> None:
        self.store = store
        self.incidents = incidents
        self.starts = starts
        self.vocabulary = vocabulary
        self.sealer = sealer
        self.local_ids = LocalIds(store, sealer)
        self.reader = reader

    async def open_case(
        self, caller: Caller, request: cases_pb2.OpenCaseRequest
    ) -> cases_pb2.OpenCaseResponse:
        _validate_open(request)

        async def action(conn: AsyncConnection) -> cases_pb2.OpenCaseResponse:
            service = await load_service(conn, request.service_id, field="service_id")
            require_in_catalogue(service)
            chain = [c.partner_id for c in service.components]
            if caller.partner_id not in chain:
                raise PermissionDenied(
                    f"partner {caller.partner_id!r} is not in the chain of service "
                    f"{service.service_id!r}",
                    reason="NOT_IN_SERVICE_CHAIN",
                )
            subject_id = await self.local_ids.subject_for(
                conn, caller.partner_id, request.customer_local_id
            )
            now = _now()
            recent = (
                await execute(
                    conn,
                    _RESOLVED_BEFORE,
                    {"subject_id": subject_id, "service_id": service.service_id},
                )
            ).scalar()
            if recent is not None:
                # The same customer reports the same service again while the last
                # case waits for confirmation: reopen it instead of duplicating.
                await _append_contact(conn, self.sealer, recent, caller, request, now)
                row = await _load_case(conn, recent)
                return cases_pb2.OpenCaseResponse(
                    case_id=recent,
                    header=await self.reader.header(conn, caller, row, local_id=""),
                    reopened_existing=True,
                )
            case_id = f"case-{uuid.uuid4().hex}"
            await execute(
                conn,
                _NEW_CASE,
                {
                    "case_id": case_id,
                    "service_id": service.service_id,
                    "service_version": service.version,
                    "subject_id": subject_id,
                    "first_contact_partner_id": caller.partner_id,
                    "first_contact_channel": request.channel,
                    "status": cases_pb2.CASE_STATUS_RECEIVED,
                    "summary": "",
                    "relationship_owner_id": None,
                    "opened_at": now,
                    "updated_at": now,
                    "last_sequence": 0,
                },
            )
            key = await self.sealer.create_key(conn, case_id)
            await execute(
                conn,
                _SUMMARY,
                {
                    "id": case_id,
                    "sealed": self.sealer.seal_text(key, request.summary, f"{case_id}/summary"),
                },
            )
            participants = [
                {
                    "case_id": case_id,
                    "partner_id": caller.partner_id,
                    "role": cases_pb2.PARTICIPANT_ROLE_FIRST_CONTACT,
                    "person_id": caller.person_id,
                }
            ]
            participants += [
                {
                    "case_id": case_id,
                    "partner_id": partner,
                    "role": cases_pb2.PARTICIPANT_ROLE_DIAGNOSER,
                    "person_id": "",
                }
                for partner in dict.fromkeys(chain)
            ]
            await execute(conn, _PARTICIPANTS, participants)
            await self.starts.record(conn, case_id, now)
            # The case's key, just made, is at hand: not read back for each use.
            await set_status(
                conn, self.sealer, case_id, cases_pb2.CASE_STATUS_RECEIVED, now, key=key
            )
            await _append_contact(conn, self.sealer, case_id, caller, request, now, key)
            row = await _load_case(conn, case_id)
            return cases_pb2.OpenCaseResponse(
                case_id=case_id,
                header=await self.reader.header(conn, caller, row, key=key, local_id=""),
            )

        response, _replayed = await run_once(
            self.store, caller, "OpenCase", request, cases_pb2.OpenCaseResponse, action
        )
        if response.reopened_existing:
            if not _replayed:
                await self.incidents.reopen(
                    response.case_id,
                    # Ids only: the customer's words stay in the sealed timeline, out of
                    # the workflow's history, which erasure cannot reach.
                    contracts.CustomerAnswer(partner_id=caller.partner_id),
                )
            return response
        # Also on a replay: a crash between the commit and the start must not
        # leave a case without its workflow (nor a caller that never retries: the
        # start recorded with the case is swept, `WorkflowStarts`).
        await self.incidents.ensure_started(response.case_id, request.service_id, caller.partner_id)
        self.starts.started(response.case_id)
        return response

    async def append_interaction(
        self, caller: Caller, request: cases_pb2.AppendInteractionRequest
    ) -> cases_pb2.AppendInteractionResponse:
        """A participating partner adds what the customer said or was told, on any channel."""
        given = request.interaction
        violations: list[FieldViolation] = []
        if not request.case_id:
            violations.append(FieldViolation("case_id", "is required"))
        if given.channel == common_pb2.CHANNEL_UNSPECIFIED or given.channel not in (
            common_pb2.Channel.values()
        ):
            violations.append(FieldViolation("interaction.channel", "must be set"))
        if not given.summary.strip():
            violations.append(FieldViolation("interaction.summary", "is required"))
        elif len(given.summary) > MAX_SUMMARY:
            violations.append(
                FieldViolation("interaction.summary", f"at most {MAX_SUMMARY} characters")
            )
        if given.author_kind not in cases_pb2.AuthorKind.values():
            violations.append(FieldViolation("interaction.author_kind", "unknown value"))
        category = given.category or INTERACTION_CATEGORY
        if category not in self.vocabulary.categories:
            violations.append(
                FieldViolation("interaction.category", f"unknown data category {category!r}")
            )
        if len(given.attachment_refs) > 20 or any(len(r) > 500 for r in given.attachment_refs):
            violations.append(
                FieldViolation("interaction.attachment_refs", "at most 20 refs of 500 chars")
            )
        if violations:
            raise InvalidArgument(violations)

        async def action(conn: AsyncConnection) -> cases_pb2.AppendInteractionResponse:
            row = await _visible_case(conn, caller, request.case_id)
            if row.status == cases_pb2.CASE_STATUS_CLOSED:
                raise FailedPrecondition("the case is closed", reason="CASE_CLOSED")
            now = _now()
            interaction = cases_pb2.Interaction()
            interaction.CopyFrom(given)
            interaction.interaction_id = f"int-{uuid.uuid4().hex[:16]}"
            interaction.partner_id = caller.partner_id
            interaction.category = category
            interaction.author_kind = given.author_kind or cases_pb2.AUTHOR_KIND_ADVISOR
            interaction.author_id = given.author_id or caller.person_id
            if not given.HasField("occurred_at"):
                interaction.occurred_at.FromDatetime(now)
            item = cases_pb2.TimelineItem(interaction=interaction)
            item.occurred_at.CopyFrom(interaction.occurred_at)
            sequence = await append_event(
                conn,
                self.sealer,
                row.case_id,
                item,
                source_partner_id=caller.partner_id,
                category=category,
            )
            return cases_pb2.AppendInteractionResponse(
                interaction=interaction, sequence=sequence or 0
            )

        response, _ = await run_once(
            self.store,
            caller,
            "AppendInteraction",
            request,
            cases_pb2.AppendInteractionResponse,
            action,
        )
        return response

    async def submit_finding(
        self, caller: Caller, request: cases_pb2.SubmitFindingRequest
    ) -> cases_pb2.SubmitFindingResponse:
        """A chain partner's diagnosis of its component; late findings still count."""
        given = request.finding
        violations: list[FieldViolation] = []
        if not request.case_id:
            violations.append(FieldViolation("case_id", "is required"))
        if not given.component:
            violations.append(FieldViolation("finding.component", "is required"))
        if given.status not in REPORTABLE_FINDINGS:
            violations.append(
                FieldViolation("finding.status", "must be OK, DEGRADED, FAULTY or UNKNOWN")
            )
        if not 0.0 <= given.confidence <= 1.0:
            violations.append(FieldViolation("finding.confidence", "must be in [0, 1]"))
        if len(given.fault_code) > 100:
            violations.append(FieldViolation("finding.fault_code", "at most 100 characters"))
        if len(given.evidence_ref) > 500:
            violations.append(FieldViolation("finding.evidence_ref", "at most 500 characters"))
        if violations:
            raise InvalidArgument(violations)

        async def action(conn: AsyncConnection) -> cases_pb2.SubmitFindingResponse:
            row = await _participating_case(conn, caller, request.case_id)
            service = await load_service(conn, row.service_id, field="case_id")
            owner = next(
                (c.partner_id for c in service.components if c.name == given.component), None
            )
            if owner is None:
                raise InvalidArgument.field(
                    "finding.component", f"service {row.service_id!r} has no such component"
                )
            if owner != caller.partner_id:
                raise PermissionDenied(
                    f"component {given.component!r} belongs to {owner!r}",
                    reason="NOT_YOUR_COMPONENT",
                )
            finding = cases_pb2.Finding()
            finding.CopyFrom(given)
            finding.finding_id = f"fnd-{uuid.uuid4().hex[:16]}"
            finding.partner_id = caller.partner_id
            finding.category = FINDINGS_CATEGORY
            finding.reported_at.FromDatetime(_now())
            item = cases_pb2.TimelineItem(finding=finding)
            item.occurred_at.CopyFrom(finding.reported_at)
            await append_event(
                conn,
                self.sealer,
                row.case_id,
                item,
                source_partner_id=caller.partner_id,
                category=FINDINGS_CATEGORY,
            )
            return cases_pb2.SubmitFindingResponse(finding=finding)

        response, _ = await run_once(
            self.store, caller, "SubmitFinding", request, cases_pb2.SubmitFindingResponse, action
        )
        finding = response.finding
        await self.incidents.send_finding(
            request.case_id,
            contracts.Finding(
                partner_id=finding.partner_id,
                component=finding.component,
                status=cases_pb2.FindingStatus.Name(finding.status).removeprefix("FINDING_STATUS_"),
                confidence=finding.confidence,
                fault_code=finding.fault_code,
            ),
        )
        return response


async def _append_contact(
    conn: AsyncConnection,
    sealer: Sealer,
    case_id: str,
    caller: Caller,
    request: cases_pb2.OpenCaseRequest,
    now: dt.datetime,
    key: AESGCM | Missing | None = MISSING,
) -> None:
    """The customer's report, as the partner they contacted took it (sealed under the
    case's ``key``, read when not given)."""
    contact = cases_pb2.TimelineItem(
        interaction=cases_pb2.Interaction(
            interaction_id=f"int-{uuid.uuid4().hex[:16]}",
            partner_id=caller.partner_id,
            channel=request.channel,
            author_kind=cases_pb2.AUTHOR_KIND_ADVISOR,
            author_id=request.author_id or caller.person_id,
            summary=request.summary,
            category=INTERACTION_CATEGORY,
        )
    )
    contact.occurred_at.FromDatetime(now)
    contact.interaction.occurred_at.FromDatetime(now)
    await append_event(
        conn,
        sealer,
        case_id,
        contact,
        source_partner_id=caller.partner_id,
        category=INTERACTION_CATEGORY,
        key=key,
    )


def _validate_open(request: cases_pb2.OpenCaseRequest) -> None:
    violations: list[FieldViolation] = []
    if not request.service_id:
        violations.append(FieldViolation("service_id", "is required"))
    if not request.customer_local_id:
        violations.append(FieldViolation("customer_local_id", "is required"))
    elif len(request.customer_local_id) > MAX_LOCAL_ID:
        violations.append(
            FieldViolation("customer_local_id", f"must be at most {MAX_LOCAL_ID} characters")
        )
    if request.channel == common_pb2.CHANNEL_UNSPECIFIED:
        violations.append(FieldViolation("channel", "must be set"))
    elif request.channel not in common_pb2.Channel.values():
        violations.append(FieldViolation("channel", f"unknown channel {request.channel}"))
    if not request.summary.strip():
        violations.append(FieldViolation("summary", "describe the problem"))
    elif len(request.summary) > MAX_SUMMARY:
        violations.append(FieldViolation("summary", f"must be at most {MAX_SUMMARY} characters"))
    if violations:
        raise InvalidArgument(violations)
