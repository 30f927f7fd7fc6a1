"""Cases: opening an incident, its timeline, and the combined view for one reader.

Every item of the view, and of the live watch, passes the consent decision
point for this reader and purpose at the moment it is read; withheld items are
counted per source partner and category so the advisor knows which consent
to ask for.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from coopgate.v1 import admin_pb2, cases_pb2, common_pb2
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import timestamp_pb2
from sqlalchemy import (
    ARRAY,
    Connection,
    Row,
    String,
    and_,
    any_,
    bindparam,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.admin.registry import load_service
from gateway.audit.log import AuditRecord
from gateway.cases.feed import CaseFeed
from gateway.consent.rules import AccessDecision, ConsentRules, Flow
from gateway.consent.vocabulary import Vocabulary
from gateway.core.caller import Caller, Role
from gateway.core.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from gateway.crypto.pseudonyms import Pseudonyms
from gateway.crypto.sealing import ERASED_TEXT, MISSING, Erased, Missing, Sealer
from gateway.identity.subjects import subject_for
from gateway.store import Store
from gateway.store.batched import BatchedRows
from gateway.store.engine import driver_statement
from gateway.store.idempotency import run_once, run_once_external
from gateway.store.schema import (
    case_events,
    case_keys,
    case_participants,
    cases,
    change_counters,
    services,
    subject_links,
    subjects,
)
from workflows import contracts

MAX_SUMMARY = 4000
MAX_LOCAL_ID = 200
MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 50
FINDINGS_CATEGORY = "diagnostic.findings"
REPORTABLE_FINDINGS = (
    cases_pb2.FINDING_STATUS_OK,
    cases_pb2.FINDING_STATUS_DEGRADED,
    cases_pb2.FINDING_STATUS_FAULTY,
    cases_pb2.FINDING_STATUS_UNKNOWN,
)
WATCH_BATCH = 200
TIMELINE_CACHE_CASES = 512
#: Views kept as served, per case, reader partner and purpose (see `ServedView`).
VIEW_CACHE_ENTRIES = 1024
#: Reader persons whose audit records a kept view keeps (beyond, they are made again).
_KEPT_READERS = 64
WATCH_IDLE_SECONDS = 5.0
#: Category of what the customer told the first-contact partner.
INTERACTION_CATEGORY = "interaction.history"
#: Category of the gateway's own events (status changes), visible to participants.
CASE_STATUS_CATEGORY = "case.status"


# Statements on the read paths, built once (SQLAlchemy construction costs more
# than the query itself on these hot paths).
_VISIBLE_CASE = select(cases).where(
    cases.c.case_id == bindparam("case_id"),
    select(case_participants.c.case_id)
    .where(
        case_participants.c.case_id == bindparam("case_id"),
        case_participants.c.partner_id == bindparam("partner_id"),
    )
    .exists(),
)
_TIMELINE = (
    select(
        case_events.c.sequence,
        case_events.c.source_partner_id,
        case_events.c.category,
        case_events.c.occurred_at,
        case_events.c.item,
    )
    .where(case_events.c.case_id == bindparam("case_id"))
    .order_by(case_events.c.occurred_at, case_events.c.sequence)
)


class Incidents(Protocol):
    """The line to each case's incident workflow (`TemporalIncidents`, in orchestration)."""

    async def ensure_started(
        self, case_id: str, service_id: str, first_contact_partner_id: str
    ) -> None: ...

    async def send_finding(self, case_id: str, finding: contracts.Finding) -> None: ...

    async def accept(self, case_id: str, answer: contracts.OwnershipAnswer) -> str: ...

    async def decline(self, case_id: str, answer: contracts.OwnershipAnswer) -> str: ...

    async def resolve(self, case_id: str, request: contracts.ResolveRequest) -> str: ...

    async def confirm(self, case_id: str, answer: contracts.CustomerAnswer) -> str: ...

    async def reopen(self, case_id: str, answer: contracts.CustomerAnswer) -> str: ...


@dataclass(slots=True, frozen=True)
class TimelineEvent:
    sequence: int
    source_partner_id: str
    category: str
    item: cases_pb2.TimelineItem
    flow: Flow = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "flow", Flow(self.source_partner_id, self.category))


@dataclass(slots=True, frozen=True)
class Participant:
    partner_id: str
    role: int
    person_id: str


@dataclass(slots=True, frozen=True)
class Timeline:
    """A case's events at one version, parsed and encoded once: events are append-only,
    so the last sequence identifies the content. What a reader is served is chosen per
    read from the decisions of that read; nothing here depends on a decision."""

    events: list[TimelineEvent]
    #: The distinct flows, and for each event the index of its flow.
    flows: tuple[Flow, ...]
    flow_index: list[int]
    #: How many events each flow has.
    counts: list[int]
    #: Each event as an encoded ``CaseView.timeline`` field, ready to be joined.
    encoded: list[bytes]
    categories: tuple[str, ...]
    position: int

    @classmethod
    def of(cls, events: list[TimelineEvent]) -> Timeline:
        index: dict[Flow, int] = {}
        flow_index = [index.setdefault(e.flow, len(index)) for e in events]
        counts = [0] * len(index)
        for i in flow_index:
            counts[i] += 1
        return cls(
            events=events,
            flows=tuple(index),
            flow_index=flow_index,
            counts=counts,
            encoded=[_encoded_field(_TIMELINE_FIELD, e.item.SerializeToString()) for e in events],
            categories=tuple(sorted({f.category for f in index})),
            position=max((e.sequence for e in events), default=0),
        )


@dataclass(slots=True, frozen=True)
class WatchBatch:
    row: CaseRow
    header: cases_pb2.CaseHeader
    events: list[TimelineEvent]
    decisions: dict[Flow, AccessDecision]


@dataclass(slots=True, frozen=True)
class ServedView:
    """A view as served to one reader partner for one purpose, kept with everything it
    was made from: the rows of the case statement (the case, its key, its participants,
    the subject's consents version and the agreements version, both bumped by database
    triggers at every change, and its service's current version) and the first moment
    a validity period that took part in its decisions starts or ends. A later read that
    finds the same rows before that moment would make the same view, so it is served
    again; its audit records are written for each read all the same."""

    rows: Sequence[tuple[Any, ...]]
    holds_until: dt.datetime | None
    row: CaseRow
    decisions: dict[Flow, AccessDecision]
    categories: tuple[str, ...]
    served: int
    withheld: int
    #: The `GetCaseViewResponse`, encoded once: served as these bytes (see `Encoded`).
    encoded: bytes
    #: The audit records of one reading, per reader person (all else is the view's):
    #: the same records are appended at every reading, with its own time.
    read_records: dict[str, list[AuditRecord]] = field(default_factory=dict)

    def holds(self, rows: Sequence[tuple[Any, ...]], at: dt.datetime) -> bool:
        return (self.holds_until is None or at < self.holds_until) and rows == self.rows


@dataclass(slots=True, frozen=True)
class CaseRow:
    case_id: str
    service_id: str
    service_version: int
    subject_id: str
    first_contact_partner_id: str
    first_contact_channel: int
    status: int
    summary: str
    relationship_owner_id: str | None
    opened_at: dt.datetime
    last_sequence: int


_CASE_ROW_FIELDS = tuple(CaseRow.__dataclass_fields__)
#: The case, its key and every participant, in one statement: one row per participant.
_VIEW_CASE_SELECT = (
    select(
        *(cases.c[name] for name in _CASE_ROW_FIELDS),
        case_keys.c.wrapped_key,
        case_participants.c.partner_id.label("participant_id"),
        case_participants.c.role.label("participant_role"),
        case_participants.c.person_id.label("participant_person_id"),
        # What the consent decision read depends on, versioned by the database.
        subjects.c.consents_version,
        select(change_counters.c.value)
        .where(change_counters.c.name == "sharing_agreements")
        .scalar_subquery()
        .label("agreements_version"),
        # The header's service levels come from the service's definition.
        services.c.version.label("current_service_version"),
    )
    .select_from(
        cases.join(case_participants, case_participants.c.case_id == cases.c.case_id)
        .join(subjects, subjects.c.subject_id == cases.c.subject_id)
        .join(services, services.c.service_id == cases.c.service_id)
        .outerjoin(case_keys, case_keys.c.case_id == cases.c.case_id)
    )
    .order_by(case_participants.c.role, case_participants.c.partner_id)
)
_VIEW_CASE = _VIEW_CASE_SELECT.where(cases.c.case_id == bindparam("case_id"))
#: The same rows for several cases, each case's in the same order (PostgreSQL).
_VIEW_CASES = _VIEW_CASE_SELECT.where(
    cases.c.case_id == any_(bindparam("keys", type_=ARRAY(String)))
)
_VIEW_CASE_KEY = len(_CASE_ROW_FIELDS)
_VIEW_CASE_PARTICIPANT = _VIEW_CASE_KEY + 1


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def append_event(
    conn: AsyncConnection,
    sealer: Sealer,
    case_id: str,
    item: cases_pb2.TimelineItem,
    *,
    source_partner_id: str,
    category: str,
    dedup_key: str | None = None,
) -> int | None:
    """Append one timeline item to a case; returns its sequence number.

    With a ``dedup_key`` the append happens once: a retry returns None.
    """
    if dedup_key is not None:
        seen = (
            await conn.execute(
                select(case_events.c.sequence).where(
                    case_events.c.case_id == case_id, case_events.c.dedup_key == dedup_key
                )
            )
        ).first()
        if seen is not None:
            return None
    sequence = (
        await conn.execute(
            update(cases)
            .where(cases.c.case_id == case_id)
            .values(last_sequence=cases.c.last_sequence + 1, updated_at=_now())
            .returning(cases.c.last_sequence)
        )
    ).scalar_one()
    item.sequence = sequence
    key = await sealer.key(conn, case_id)
    await conn.execute(
        insert(case_events).values(
            case_id=case_id,
            sequence=sequence,
            occurred_at=item.occurred_at.ToDatetime(dt.UTC),
            source_partner_id=source_partner_id,
            category=category,
            item=sealer.seal(
                key, item.SerializeToString(deterministic=True), f"{case_id}/{sequence}"
            ),
            dedup_key=dedup_key,
        )
    )
    return int(sequence)


async def set_status(
    conn: AsyncConnection, sealer: Sealer, case_id: str, status: cases_pb2.CaseStatus.ValueType
) -> None:
    """Move the case projection to ``status`` and record the change on the timeline."""
    result = await conn.execute(
        update(cases).where(cases.c.case_id == case_id).values(status=status, updated_at=_now())
    )
    if result.rowcount == 0:
        raise NotFound(f"case {case_id!r} does not exist")
    item = cases_pb2.TimelineItem(status_change=cases_pb2.StatusChange(status=status))
    item.occurred_at.GetCurrentTime()
    item.status_change.changed_at.CopyFrom(item.occurred_at)
    await append_event(
        conn, sealer, case_id, item, source_partner_id="", category=CASE_STATUS_CATEGORY
    )


class Cases:
    def __init__(
        self,
        store: Store,
        pseudonyms: Pseudonyms,
        incidents: Incidents,
        rules: ConsentRules,
        vocabulary: Vocabulary,
        feed: CaseFeed,
        sealer: Sealer,
    ) -> None:
        self.store = store
        self.pseudonyms = pseudonyms
        self.incidents = incidents
        self.rules = rules
        self.vocabulary = vocabulary
        self.feed = feed
        self.sealer = sealer
        self._timelines: OrderedDict[str, tuple[int, Timeline]] = OrderedDict()
        self._views: OrderedDict[tuple[str, str, str], ServedView] = OrderedDict()
        self._levels: dict[tuple[str, int], admin_pb2.ServiceLevel] = {}
        self._inflight: dict[tuple[str, str, str, int, int], asyncio.Future[WatchBatch]] = {}
        #: The view's currency check, read for all the requests that come together.
        self._view_rows = BatchedRows(store, _VIEW_CASE, _VIEW_CASES, "case_id", 0)
        #: Views being made, per key, with the rows their maker had read.
        self._making: dict[
            tuple[str, str, str], tuple[Sequence[tuple[Any, ...]], asyncio.Future[ServedView]]
        ] = {}

    async def open_case(
        self, caller: Caller, request: cases_pb2.OpenCaseRequest
    ) -> cases_pb2.OpenCaseResponse:
        caller.require(Role.PARTNER, Role.ADVISOR)
        _validate_open(request)

        async def action(conn: AsyncConnection) -> cases_pb2.OpenCaseResponse:
            service = await load_service(conn, request.service_id, field="service_id")
            chain = [c.partner_id for c in service.components]
            if caller.partner_id not in chain:
                raise PermissionDenied(
                    f"partner {caller.partner_id!r} is not in the chain of service "
                    f"{service.service_id!r}",
                    reason="NOT_IN_SERVICE_CHAIN",
                )
            subject_id = await subject_for(conn, caller.partner_id, request.customer_local_id)
            now = _now()
            recent = (
                await conn.execute(
                    select(cases.c.case_id)
                    .where(
                        cases.c.subject_id == subject_id,
                        cases.c.service_id == service.service_id,
                        cases.c.status == cases_pb2.CASE_STATUS_RESOLVED,
                    )
                    .order_by(cases.c.opened_at.desc())
                    .limit(1)
                )
            ).scalar()
            if recent is not None:
                # The same customer reports the same service again while the last
                # case waits for confirmation: reopen it instead of duplicating.
                await _append_contact(conn, self.sealer, recent, caller, request, now)
                row = await _load_case(conn, recent)
                return cases_pb2.OpenCaseResponse(
                    case_id=recent,
                    header=await self._header(conn, caller, row),
                    reopened_existing=True,
                )
            case_id = f"case-{uuid.uuid4().hex}"
            await conn.execute(
                insert(cases).values(
                    case_id=case_id,
                    service_id=service.service_id,
                    service_version=service.version,
                    subject_id=subject_id,
                    first_contact_partner_id=caller.partner_id,
                    first_contact_channel=request.channel,
                    status=cases_pb2.CASE_STATUS_RECEIVED,
                    summary="",
                    relationship_owner_id=None,
                    opened_at=now,
                    updated_at=now,
                    last_sequence=0,
                )
            )
            key = await self.sealer.create_key(conn, case_id)
            await conn.execute(
                update(cases)
                .where(cases.c.case_id == case_id)
                .values(summary=self.sealer.seal_text(key, request.summary, f"{case_id}/summary"))
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
            await conn.execute(insert(case_participants), participants)
            await set_status(conn, self.sealer, case_id, cases_pb2.CASE_STATUS_RECEIVED)
            await _append_contact(conn, self.sealer, case_id, caller, request, now)
            row = await _load_case(conn, case_id)
            return cases_pb2.OpenCaseResponse(
                case_id=case_id, header=await self._header(conn, caller, row)
            )

        response, _replayed = await run_once(
            self.store, caller, "OpenCase", request, cases_pb2.OpenCaseResponse, action
        )
        if response.reopened_existing:
            if not _replayed:
                await self.incidents.reopen(
                    response.case_id,
                    contracts.CustomerAnswer(partner_id=caller.partner_id, reason=request.summary),
                )
            return response
        # Also on a replay: a crash between the commit and the start must not
        # leave a case without its workflow.
        await self.incidents.ensure_started(response.case_id, request.service_id, caller.partner_id)
        return response

    async def append_interaction(
        self, caller: Caller, request: cases_pb2.AppendInteractionRequest
    ) -> cases_pb2.AppendInteractionResponse:
        """A participating partner adds what the customer said or was told, on any channel."""
        caller.require(Role.PARTNER, Role.ADVISOR)
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
            row = await self._visible_case(conn, caller, request.case_id)
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
        caller.require(Role.PARTNER, Role.ADVISOR)
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
            row = await self._participating_case(conn, caller, request.case_id)
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

    async def answer_offer(
        self,
        caller: Caller,
        request: cases_pb2.AcceptOwnershipRequest | cases_pb2.DeclineOwnershipRequest,
    ) -> cases_pb2.AcceptOwnershipResponse | cases_pb2.DeclineOwnershipResponse:
        caller.require(Role.PARTNER, Role.ADVISOR)
        accept = isinstance(request, cases_pb2.AcceptOwnershipRequest)
        self._require_ids(request.case_id, request.offer_id, "offer_id")
        async with self.store.read() as conn:
            await self._participating_case(conn, caller, request.case_id)
        reason = "" if accept else request.reason  # type: ignore[union-attr]
        answer = contracts.OwnershipAnswer(
            offer_id=request.offer_id, partner_id=caller.partner_id, reason=reason
        )

        async def effect() -> Any:
            if accept:
                await self.incidents.accept(request.case_id, answer)
                async with self.store.read() as conn:
                    row = await _load_case(conn, request.case_id)
                    header = await self._header(conn, caller, row)
                header.relationship_owner_id = caller.partner_id
                return cases_pb2.AcceptOwnershipResponse(header=header)
            await self.incidents.decline(request.case_id, answer)
            return cases_pb2.DeclineOwnershipResponse()

        response_type: Any = (
            cases_pb2.AcceptOwnershipResponse if accept else cases_pb2.DeclineOwnershipResponse
        )
        method = "AcceptOwnership" if accept else "DeclineOwnership"
        result: Any = await run_once_external(
            self.store, caller, method, request, response_type, effect
        )
        return result  # type: ignore[no-any-return]

    async def resolve(
        self, caller: Caller, request: cases_pb2.ResolveCaseRequest
    ) -> cases_pb2.ResolveCaseResponse:
        caller.require(Role.PARTNER, Role.ADVISOR)
        self._require_ids(request.case_id, "x", "")
        if not request.resolution.strip():
            raise InvalidArgument.field("resolution", "say what was done")
        async with self.store.read() as conn:
            await self._participating_case(conn, caller, request.case_id)

        async def effect() -> cases_pb2.ResolveCaseResponse:
            await self.incidents.resolve(
                request.case_id,
                contracts.ResolveRequest(
                    partner_id=caller.partner_id, resolution=request.resolution
                ),
            )
            return cases_pb2.ResolveCaseResponse(
                header=await self._current_header(caller, request.case_id)
            )

        return await run_once_external(
            self.store, caller, "ResolveCase", request, cases_pb2.ResolveCaseResponse, effect
        )

    async def customer_answer(
        self,
        caller: Caller,
        request: cases_pb2.ConfirmResolutionRequest | cases_pb2.ReopenCaseRequest,
    ) -> cases_pb2.ConfirmResolutionResponse | cases_pb2.ReopenCaseResponse:
        """The customer confirms the fix or reopens, relayed by a partner."""
        caller.require(Role.PARTNER, Role.ADVISOR)
        self._require_ids(request.case_id, "x", "")
        confirm = isinstance(request, cases_pb2.ConfirmResolutionRequest)
        async with self.store.read() as conn:
            await self._participating_case(conn, caller, request.case_id)
        answer = contracts.CustomerAnswer(
            partner_id=caller.partner_id,
            reason="" if confirm else request.reason,  # type: ignore[union-attr]
        )

        async def effect() -> Any:
            if confirm:
                await self.incidents.confirm(request.case_id, answer)
                return cases_pb2.ConfirmResolutionResponse(
                    header=await self._current_header(caller, request.case_id)
                )
            await self.incidents.reopen(request.case_id, answer)
            return cases_pb2.ReopenCaseResponse(
                header=await self._current_header(caller, request.case_id)
            )

        response_type: Any = (
            cases_pb2.ConfirmResolutionResponse if confirm else cases_pb2.ReopenCaseResponse
        )
        result: Any = await run_once_external(
            self.store,
            caller,
            "ConfirmResolution" if confirm else "ReopenCase",
            request,
            response_type,
            effect,
        )
        return result  # type: ignore[no-any-return]

    async def _current_header(self, caller: Caller, case_id: str) -> cases_pb2.CaseHeader:
        async with self.store.read() as conn:
            return await self._header(conn, caller, await _load_case(conn, case_id))

    @staticmethod
    def _require_ids(case_id: str, other: str, other_field: str) -> None:
        violations = []
        if not case_id:
            violations.append(FieldViolation("case_id", "is required"))
        if other_field and not other:
            violations.append(FieldViolation(other_field, "is required"))
        if violations:
            raise InvalidArgument(violations)

    async def _participating_case(
        self, conn: AsyncConnection, caller: Caller, case_id: str
    ) -> CaseRow:
        """The case for an action: NOT_FOUND if it does not exist, PERMISSION_DENIED
        if the caller takes no part in it, FAILED_PRECONDITION if it is closed."""
        row = await _load_case(conn, case_id)
        takes_part = (
            await conn.execute(
                select(case_participants.c.partner_id)
                .where(
                    case_participants.c.case_id == case_id,
                    case_participants.c.partner_id == caller.partner_id,
                )
                .limit(1)
            )
        ).first()
        if takes_part is None:
            raise PermissionDenied(
                f"partner {caller.partner_id!r} takes no part in this case",
                reason="NOT_A_PARTICIPANT",
            )
        if row.status == cases_pb2.CASE_STATUS_CLOSED:
            raise FailedPrecondition("the case is closed", reason="CASE_CLOSED")
        return row

    async def get_view(
        self, caller: Caller, request: cases_pb2.GetCaseViewRequest
    ) -> cases_pb2.GetCaseViewResponse:
        """The view for one reader and purpose (see `serve_view`)."""
        served = await self.serve_view(caller, request)
        return cases_pb2.GetCaseViewResponse.FromString(served.encoded)

    async def serve_view(self, caller: Caller, request: cases_pb2.GetCaseViewRequest) -> ServedView:
        """The view for one reader and purpose, its reading audited: kept and served
        again while what it was made from is current (`ServedView`), made anew
        otherwise. The service sends its `encoded` response as it is."""
        caller.require(Role.PARTNER, Role.ADVISOR)
        if not request.case_id:
            raise InvalidArgument.field("case_id", "is required")
        self._check_purpose(request.purpose)
        rows = await self._view_rows.rows(request.case_id)
        _require_participant(rows, caller, request.case_id)
        key = (request.case_id, caller.partner_id, request.purpose)
        view = self._views.get(key)
        if view is not None and view.holds(rows, _now()):
            self._views.move_to_end(key)
        else:
            view = await self._make_once(key, rows, caller)
        records = view.read_records.get(caller.person_id)
        if records is None:
            if len(view.read_records) >= _KEPT_READERS:
                view.read_records.clear()
            records = view.read_records[caller.person_id] = self._read_records(
                caller,
                view.row,
                request.purpose,
                view.decisions,
                view.categories,
                view.served,
                view.withheld,
            )
        # Durable before anything is served: a read that cannot be logged does not happen.
        await self.rules.audit.record(records)
        return view

    async def _make_once(
        self, key: tuple[str, str, str], rows: Sequence[tuple[Any, ...]], caller: Caller
    ) -> ServedView:
        """The view made anew, once for all the readers that find it out of date at the
        same time: after a change to a case that many advisors watch, the first makes
        it and those that read the same rows meanwhile wait for that one (made from
        rows at least as recent as theirs) instead of each making their own. Should
        that making fail, each waiter makes its own."""
        making = self._making.get(key)
        if making is not None and making[0] == rows:
            try:
                return await asyncio.shield(making[1])
            except asyncio.CancelledError:
                if not making[1].cancelled():
                    raise  # this reader went away
            except Exception:  # the maker's error: this reader makes its own
                pass
        future: asyncio.Future[ServedView] = asyncio.get_running_loop().create_future()
        entry = self._making[key] = (rows, future)
        try:
            view = await self.store.run_read(self._make_view, caller, key[0], key[2])
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: waiters, if any, read it too
            raise
        except BaseException:  # this maker went away: its waiters make their own
            future.cancel()
            raise
        finally:
            if self._making.get(key) is entry:
                del self._making[key]
        future.set_result(view)
        self._views[key] = view
        self._views.move_to_end(key)
        while len(self._views) > VIEW_CACHE_ENTRIES:
            self._views.popitem(last=False)
        return view

    def _make_view(
        self, conn: Connection, caller: Caller, case_id: str, purpose: str
    ) -> ServedView:
        """The view for one reader and purpose, made in one read transaction (see
        `Store.run_read`); kept with the case statement's rows as the driver returned
        them, which later reads compare theirs with (`ServedView`)."""
        at = _now()
        raw = driver_statement(_VIEW_CASE, conn.dialect).rows(conn, {"case_id": case_id})
        _require_participant(raw, caller, case_id)
        rows = conn.execute(_VIEW_CASE, {"case_id": case_id}).all()
        first = rows[0]
        row = CaseRow(*first[: len(_CASE_ROW_FIELDS)])
        participants = [
            Participant(*r[_VIEW_CASE_PARTICIPANT : _VIEW_CASE_PARTICIPANT + 3]) for r in rows
        ]
        key = self.sealer.unwrap(row.case_id, first[_VIEW_CASE_KEY])
        header = self._header_in(conn, caller, row, participants, key)
        timeline = self._timeline_in(conn, row, key)
        decided = self.rules.evaluate_until_in(
            conn,
            reader_partner_id=caller.partner_id,
            subject_id=row.subject_id,
            service_id=row.service_id,
            purpose=purpose,
            flows=timeline.flows,
            at=at,
        )
        decisions = decided.decisions
        shown = [decisions[flow].allowed for flow in timeline.flows]
        served = sum(n for n, ok in zip(timeline.counts, shown, strict=True) if ok)
        view = cases_pb2.CaseView(header=header, position=timeline.position)
        for p in participants:
            view.participants.add(partner_id=p.partner_id, role=p.role, person_id=p.person_id)
        withheld = sorted(
            (flow.source_partner_id, flow.category, count)
            for flow, count, ok in zip(timeline.flows, timeline.counts, shown, strict=True)
            if not ok
        )
        for source, category, count in withheld:
            view.withheld.add(source_partner_id=source, category=category, count=count)
        # The items are joined already encoded (a repeated field's encoding is the
        # concatenation of its elements'), and the response stays encoded: a parsed
        # message would be encoded again at every read (measured: 9% of the gateway's
        # time serving a kept 31 KB view).
        items = b"".join(
            encoded
            for encoded, i in zip(timeline.encoded, timeline.flow_index, strict=True)
            if shown[i]
        )
        return ServedView(
            rows=raw,
            holds_until=decided.holds_until,
            row=row,
            decisions=decisions,
            categories=timeline.categories,
            served=served,
            withheld=len(timeline.events) - served,
            encoded=_encoded_field(_VIEW_FIELD, view.SerializeToString() + items),
        )

    async def summary(
        self, conn: AsyncConnection, row: CaseRow, key: AESGCM | Missing | None = MISSING
    ) -> str:
        """The customer's own words as first reported (unless erased)."""
        return await conn.run_sync(self.summary_in, row, key)

    def summary_in(
        self, conn: Connection, row: CaseRow, key: AESGCM | Missing | None = MISSING
    ) -> str:
        if isinstance(key, Missing):
            key = self.sealer.key_in(conn, row.case_id)
        return self.sealer.open_text(key, row.summary, f"{row.case_id}/summary")

    async def open_events(
        self,
        conn: AsyncConnection,
        case_id: str,
        rows: Sequence[Row[Any]],
        key: AESGCM | Missing | None = MISSING,
    ) -> list[TimelineEvent]:
        """Unseal stored events; those of an erased case keep only their place."""
        return await conn.run_sync(self.open_events_in, case_id, rows, key)

    def open_events_in(
        self,
        conn: Connection,
        case_id: str,
        rows: Sequence[Row[Any]],
        key: AESGCM | Missing | None = MISSING,
    ) -> list[TimelineEvent]:
        if isinstance(key, Missing):
            key = self.sealer.key_in(conn, case_id)
        events = []
        for r in rows:
            try:
                item = cases_pb2.TimelineItem.FromString(
                    self.sealer.open(key, r.item, f"{case_id}/{r.sequence}")
                )
            except Erased:
                item = cases_pb2.TimelineItem(
                    sequence=r.sequence,
                    interaction=cases_pb2.Interaction(
                        partner_id=r.source_partner_id, summary=ERASED_TEXT, category=r.category
                    ),
                )
                item.occurred_at.FromDatetime(r.occurred_at)
            events.append(TimelineEvent(r.sequence, r.source_partner_id, r.category, item))
        return events

    def _timeline_in(self, conn: Connection, row: CaseRow, key: AESGCM | None) -> Timeline:
        """The case's events in time order, parsed once per version of the case."""
        cached = self._timelines.get(row.case_id)
        if cached is not None and cached[0] == row.last_sequence and key is not None:
            self._timelines.move_to_end(row.case_id)
            return cached[1]
        rows = conn.execute(_TIMELINE, {"case_id": row.case_id}).all()
        timeline = Timeline.of(self.open_events_in(conn, row.case_id, rows, key))
        if timeline.events and timeline.position == row.last_sequence and key is not None:
            self._timelines[row.case_id] = (row.last_sequence, timeline)
            while len(self._timelines) > TIMELINE_CACHE_CASES:
                self._timelines.popitem(last=False)
        return timeline

    async def watch(
        self,
        caller: Caller,
        request: cases_pb2.WatchCaseRequest,
        on_slow: Callable[[int], Coroutine[Any, Any, None]] | None = None,
    ) -> AsyncGenerator[cases_pb2.WatchCaseResponse]:
        """Every change after ``after_sequence``, each decided at the moment it is sent.

        Ends when the case is closed and every event was sent. Changes made by
        any replica or worker reach every watcher (``CaseFeed``). A watcher that
        stops reading is dropped through ``on_slow(last sequence it was sent)``.
        """
        caller.require(Role.PARTNER, Role.ADVISOR)
        if not request.case_id:
            raise InvalidArgument.field("case_id", "is required")
        if request.after_sequence < 0:
            raise InvalidArgument.field("after_sequence", "must be 0 or a sequence from the view")
        self._check_purpose(request.purpose)
        position = request.after_sequence
        watcher = self.feed.watch(request.case_id, position, on_slow)
        loop = asyncio.get_running_loop()
        try:
            while True:
                batch = await self._watch_batch(caller, request.case_id, request.purpose, position)
                row, header, events = batch.row, batch.header, batch.events
                allowed = [e.item for e in events if batch.decisions[e.flow].allowed]
                if events:
                    await self.rules.audit.record(
                        self._read_records(
                            caller,
                            row,
                            request.purpose,
                            batch.decisions,
                            sorted({e.category for e in events}),
                            len(allowed),
                            len(events) - len(allowed),
                        )
                    )
                for item in allowed:
                    watcher.writing_since = loop.time()
                    yield cases_pb2.WatchCaseResponse(item=item, header=header)
                    watcher.writing_since = None
                    watcher.delivered = item.sequence
                if events:
                    position = watcher.position = events[-1].sequence
                    continue
                if row.status == cases_pb2.CASE_STATUS_CLOSED:
                    return
                await self.feed.wait(watcher, WATCH_IDLE_SECONDS)
        finally:
            self.feed.forget(watcher)

    async def _watch_batch(
        self, caller: Caller, case_id: str, purpose: str, position: int
    ) -> WatchBatch:
        """The events after ``position`` and their decisions for one partner and
        purpose. Watchers of the same partner waiting at the same position share
        one in-flight read (a thousand watchers wake with a few queries); a read
        started before a consent change here is never joined after it."""
        key = (case_id, caller.partner_id, purpose, position, self.rules.epoch)
        shared = self._inflight.get(key)
        if shared is None:
            shared = asyncio.ensure_future(self._read_batch(caller, case_id, purpose, position))
            self._inflight[key] = shared
            shared.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(shared)

    async def _read_batch(
        self, caller: Caller, case_id: str, purpose: str, position: int
    ) -> WatchBatch:
        async with self.store.read() as conn:
            row = await self._visible_case(conn, caller, case_id)
            events = await self.open_events(
                conn,
                row.case_id,
                (
                    await conn.execute(
                        select(case_events)
                        .where(
                            case_events.c.case_id == row.case_id, case_events.c.sequence > position
                        )
                        .order_by(case_events.c.sequence)
                        .limit(WATCH_BATCH)
                    )
                ).all(),
            )
            header = await self._header(conn, caller, row)
            decisions = await self.rules.evaluate(
                conn,
                reader_partner_id=caller.partner_id,
                subject_id=row.subject_id,
                service_id=row.service_id,
                purpose=purpose,
                flows={e.flow for e in events},
            )
        return WatchBatch(row, header, events, decisions)

    def _read_records(
        self,
        caller: Caller,
        row: CaseRow,
        purpose: str,
        decisions: dict[Flow, AccessDecision],
        categories: Sequence[str],
        served: int,
        withheld: int,
    ) -> list[AuditRecord]:
        """The audit records of one read: each decision, and the read itself."""
        records = self.rules.access_records(caller, row.subject_id, row.case_id, purpose, decisions)
        records.append(
            AuditRecord(
                kind="access",
                action="case.read",
                actor_partner_id=caller.partner_id,
                actor_person_id=caller.person_id,
                subject_id=row.subject_id,
                case_id=row.case_id,
                purpose=purpose,
                categories=tuple(categories),
                decision="allow",
                reason=f"{served} items served, {withheld} withheld",
            )
        )
        return records

    def _check_purpose(self, purpose: str) -> None:
        violation = self.vocabulary.check_purpose("purpose", purpose)
        if violation is not None:
            raise InvalidArgument([violation])

    async def list_cases(
        self, caller: Caller, request: cases_pb2.ListCasesRequest
    ) -> cases_pb2.ListCasesResponse:
        """Cases the caller takes part in. With a customer (subject or local id)
        and a purpose, the customer's history across partners: other partners'
        cases of this customer appear where the consent rules let the caller
        see that partner's interaction history, each decision audited."""
        caller.require(Role.PARTNER, Role.ADVISOR)
        if request.purpose:
            self._check_purpose(request.purpose)
        size = request.page.page_size or DEFAULT_PAGE_SIZE
        if not 0 < size <= MAX_PAGE_SIZE:
            raise InvalidArgument.field("page.page_size", f"must be in 1..{MAX_PAGE_SIZE}")
        history = bool(request.purpose and (request.subject_id or request.customer_local_id))
        mine = select(case_participants.c.case_id).where(
            case_participants.c.partner_id == caller.partner_id
        )
        query = select(cases)
        if not history:
            query = query.where(cases.c.case_id.in_(mine))
        if request.service_id:
            query = query.where(cases.c.service_id == request.service_id)
        if request.status:
            query = query.where(cases.c.status == request.status)
        if request.subject_id:
            subject = self.pseudonyms.resolve(caller.partner_id, request.subject_id)
            query = query.where(cases.c.subject_id == subject)
        if request.customer_local_id:
            linked = select(subject_links.c.subject_id).where(
                subject_links.c.partner_id == caller.partner_id,
                subject_links.c.local_id == request.customer_local_id,
            )
            query = query.where(cases.c.subject_id.in_(linked))
        if request.page.page_token:
            opened_at, case_id = _decode_token(request.page.page_token)
            query = query.where(
                or_(
                    cases.c.opened_at < opened_at,
                    and_(cases.c.opened_at == opened_at, cases.c.case_id < case_id),
                )
            )
        query = query.order_by(cases.c.opened_at.desc(), cases.c.case_id.desc()).limit(size + 1)
        response = cases_pb2.ListCasesResponse()
        records: list[AuditRecord] = []
        async with self.store.read() as conn:
            rows = [_case_row(r) for r in (await conn.execute(query)).all()]
            taking_part = set(
                (
                    await conn.execute(
                        mine.where(case_participants.c.case_id.in_([r.case_id for r in rows]))
                    )
                ).scalars()
            )
            for row in rows[:size]:
                header = await self._header(conn, caller, row)
                if row.case_id not in taking_part:
                    flow = Flow(row.first_contact_partner_id, INTERACTION_CATEGORY)
                    decided = await self.rules.evaluate(
                        conn,
                        reader_partner_id=caller.partner_id,
                        subject_id=row.subject_id,
                        service_id=row.service_id,
                        purpose=request.purpose,
                        flows=[flow],
                    )
                    records += self.rules.access_records(
                        caller, row.subject_id, row.case_id, request.purpose, decided
                    )
                    if not decided[flow].allowed:
                        continue
                    header.summary = await self.summary(conn, row)
                response.cases.append(header)
        # Durable before anything is served; recorded once the connection is returned
        # (the group commit needs one of the pool's connections itself).
        await self.rules.audit.record(records)
        if len(rows) > size:
            last = rows[size - 1]
            response.next_page_token = _encode_token(last.opened_at, last.case_id)
        return response

    async def record_status(self, case_id: str, status_name: str) -> None:
        """Activity body: move the projection to a ``CaseStatus`` by short name."""
        status = cases_pb2.CaseStatus.Value(f"CASE_STATUS_{status_name}")
        async with self.store.write() as conn:
            current = (
                await conn.execute(select(cases.c.status).where(cases.c.case_id == case_id))
            ).scalar()
            if current is None:
                raise NotFound(f"case {case_id!r} does not exist")
            if current != status:  # activities may be retried: record each change once
                await set_status(conn, self.sealer, case_id, status)

    async def _visible_case(self, conn: AsyncConnection, caller: Caller, case_id: str) -> CaseRow:
        """The case if the caller's partner takes part in it; NOT_FOUND otherwise,
        so that a case's existence is not revealed to outsiders."""
        row = (
            await conn.execute(_VISIBLE_CASE, {"case_id": case_id, "partner_id": caller.partner_id})
        ).first()
        if row is None:
            raise NotFound(f"case {case_id!r} not found", reason="CASE_NOT_FOUND")
        return _case_row(row)

    async def _header(
        self,
        conn: AsyncConnection,
        caller: Caller,
        row: CaseRow,
        participants: Sequence[Participant | Row[Any]] | None = None,
        key: AESGCM | Missing | None = MISSING,
    ) -> cases_pb2.CaseHeader:
        return await conn.run_sync(self._header_in, caller, row, participants, key)

    def _header_in(
        self,
        conn: Connection,
        caller: Caller,
        row: CaseRow,
        participants: Sequence[Participant | Row[Any]] | None = None,
        key: AESGCM | Missing | None = MISSING,
    ) -> cases_pb2.CaseHeader:
        header = cases_pb2.CaseHeader(
            case_id=row.case_id,
            service_id=row.service_id,
            status=row.status,  # type: ignore[arg-type]
            subject_id=self.pseudonyms.for_partner(caller.partner_id, row.subject_id),
            first_contact_partner_id=row.first_contact_partner_id,
            first_contact_channel=row.first_contact_channel,  # type: ignore[arg-type]
            relationship_owner_id=row.relationship_owner_id or "",
            summary=(
                self.summary_in(conn, row, key)
                if caller.partner_id == row.first_contact_partner_id
                else ""
            ),
        )
        _set_time(header.opened_at, row.opened_at)
        levels = self._service_levels_in(conn, row)
        if levels is not None:
            _set_time(header.owner_due_at, row.opened_at + levels.time_to_owner.ToTimedelta())
            _set_time(
                header.resolution_due_at, row.opened_at + levels.time_to_resolution.ToTimedelta()
            )
        if participants is None:
            participants = conn.execute(
                select(case_participants).where(case_participants.c.case_id == row.case_id)
            ).all()
        header.resolver_ids.extend(
            sorted(
                p.partner_id for p in participants if p.role == cases_pb2.PARTICIPANT_ROLE_RESOLVER
            )
        )
        return header

    def _service_levels_in(self, conn: Connection, row: CaseRow) -> admin_pb2.ServiceLevel | None:
        """The service levels the case was opened under (cached per service version)."""
        key = (row.service_id, row.service_version)
        if key not in self._levels:
            found = conn.execute(
                select(services.c.version, services.c.definition).where(
                    services.c.service_id == row.service_id
                )
            ).first()
            if found is None:
                return None
            levels = admin_pb2.Service.FromString(found.definition).service_level
            if found.version != row.service_version:
                return levels  # the service changed since: use the current levels, uncached
            self._levels[key] = levels
        return self._levels[key]


async def _append_contact(
    conn: AsyncConnection,
    sealer: Sealer,
    case_id: str,
    caller: Caller,
    request: cases_pb2.OpenCaseRequest,
    now: dt.datetime,
) -> None:
    """The customer's report, as the partner they contacted took it."""
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


async def _load_case(conn: AsyncConnection, case_id: str) -> CaseRow:
    row = (await conn.execute(select(cases).where(cases.c.case_id == case_id))).first()
    if row is None:
        raise NotFound(f"case {case_id!r} not found", reason="CASE_NOT_FOUND")
    return _case_row(row)


def _require_participant(rows: Sequence[tuple[Any, ...]], caller: Caller, case_id: str) -> None:
    """Rows of `_VIEW_CASE`: absent and not ours look the same (a case's existence is not
    revealed to outsiders)."""
    if not any(r[_VIEW_CASE_PARTICIPANT] == caller.partner_id for r in rows):
        raise NotFound(f"case {case_id!r} not found", reason="CASE_NOT_FOUND")


def _case_row(row: object) -> CaseRow:
    return CaseRow(**{f: getattr(row, f) for f in CaseRow.__dataclass_fields__})


def _encode_token(opened_at: dt.datetime, case_id: str) -> str:
    raw = json.dumps([opened_at.isoformat(), case_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_token(token: str) -> tuple[dt.datetime, str]:
    try:
        opened_at, case_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return dt.datetime.fromisoformat(opened_at), str(case_id)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument.field("page.page_token", "is not a token from this listing") from exc


_VIEW_FIELD = 1  # GetCaseViewResponse.view
_TIMELINE_FIELD = 3  # CaseView.timeline


def _encoded_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field: key, varint length, payload."""
    header = bytearray([number << 3 | 2])
    size = len(payload)
    while size > 0x7F:
        header.append(size & 0x7F | 0x80)
        size >>= 7
    header.append(size)
    return bytes(header) + payload


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _set_time(stamp: timestamp_pb2.Timestamp, at: dt.datetime) -> None:
    """``stamp.FromDatetime(at)`` for an aware datetime, without its generic conversions
    (three of them were a tenth of a header's cost)."""
    delta = at - _EPOCH
    stamp.seconds = delta.days * 86_400 + delta.seconds
    stamp.nanos = delta.microseconds * 1_000
