"""The AuditService: compliance queries over the log, signed checkpoints and Merkle
proofs for anyone who wants to verify, and the GDPR art. 15 subject access report.

Checkpoints and proofs are open to every authenticated caller (they reveal hashes
only); queries need a compliance or admin certificate; the subject access report is
for a partner about its own customer, or for compliance about any subject.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import Any

import grpc
from coopgate.v1 import audit_pb2, audit_pb2_grpc, common_pb2
from sqlalchemy import Select, and_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit import merkle
from gateway.audit.checkpoints import Checkpointer
from gateway.audit.erasures import erasures_of
from gateway.audit.kinds import DECISION_NAMES, DECISIONS, KIND_NAMES, KINDS
from gateway.audit.log import AuditLog, AuditRecord
from gateway.audit.store_tree import (
    LogTooShort,
    Node,
    StoredTree,
    consistency_nodes,
    inclusion_nodes,
    load_tree,
    log_size,
    statement_reads,
)
from gateway.core.caller import Caller, Role, current_caller
from gateway.core.errors import FieldViolation, InvalidArgument, NotFound
from gateway.crypto.pki import PARTNER_ID_PATTERN
from gateway.crypto.pseudonyms import Pseudonyms
from gateway.store import Store
from gateway.store.schema import audit_entries, audit_nodes, subject_links

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
SUBJECT_ID = re.compile(r"[0-9a-f]{1,64}")
_TOKEN_PREFIX = "after:"


def _listing_record(caller: Caller, request: audit_pb2.QueryAuditRequest) -> AuditRecord:
    filters = {
        "subject_id": request.subject_id,
        "partner_id": request.partner_id,
        "case_id": request.case_id,
        "purpose": request.purpose,
        "decision": DECISION_NAMES.get(request.decision, ""),
        "kind": KIND_NAMES.get(request.kind, ""),
    }
    if request.HasField("time_range"):
        filters["time_range"] = json.dumps(
            [request.time_range.start.ToJsonString(), request.time_range.end.ToJsonString()]
        )
    return AuditRecord(
        kind="access",
        action="audit.query",
        actor_partner_id=caller.partner_id,
        actor_person_id=caller.person_id,
        decision="allow",
        details=tuple(sorted((k, v) for k, v in filters.items() if v)),
    )


def _entry_body(canonical: bytes) -> dict[str, Any]:
    """The canonical JSON as a dict; an entry that does not parse still lists (with its
    indexed columns), so a damaged log can be inspected rather than hidden."""
    try:
        body = json.loads(canonical)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _strings(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _details(body: Mapping[str, Any]) -> Mapping[str, Any]:
    details = body.get("details")
    return details if isinstance(details, dict) else {}


def _encode_token(index: int) -> str:
    return base64.urlsafe_b64encode(f"{_TOKEN_PREFIX}{index}".encode()).decode()


def _decode_token(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        if text.startswith(_TOKEN_PREFIX):
            index = int(text.removeprefix(_TOKEN_PREFIX))
            if 0 <= index < 2**63:
                return index
    except (ValueError, binascii.Error):
        pass
    raise InvalidArgument.field("page.page_token", "is not a token from this listing")


def _time_violations(time_range: common_pb2.TimeRange) -> list[FieldViolation]:
    if (
        time_range.HasField("start")
        and time_range.HasField("end")
        and time_range.end.ToDatetime() <= time_range.start.ToDatetime()
    ):
        return [FieldViolation("time_range.end", "must be after time_range.start")]
    return []


def _in_time_range(query: Select[Any], time_range: common_pb2.TimeRange) -> Select[Any]:
    if time_range.HasField("start"):
        query = query.where(audit_entries.c.recorded_at >= time_range.start.ToDatetime(dt.UTC))
    if time_range.HasField("end"):
        query = query.where(audit_entries.c.recorded_at < time_range.end.ToDatetime(dt.UTC))
    return query


class Audit:
    """What AuditService does; who may do it is checked here, the servicer only passes on."""

    def __init__(
        self, store: Store, checkpointer: Checkpointer, pseudonyms: Pseudonyms, log: AuditLog
    ) -> None:
        self.store = store
        self.checkpointer = checkpointer
        self.pseudonyms = pseudonyms
        self.log = log

    async def query(
        self, caller: Caller, request: audit_pb2.QueryAuditRequest
    ) -> audit_pb2.QueryAuditResponse:
        """Entries matching every given filter, in log order, one keyset page at a time."""
        size = request.page.page_size or DEFAULT_PAGE_SIZE
        violations: list[FieldViolation] = []
        if not 0 < size <= MAX_PAGE_SIZE:
            violations.append(FieldViolation("page.page_size", f"must be in 1..{MAX_PAGE_SIZE}"))
        if request.subject_id and not SUBJECT_ID.fullmatch(request.subject_id):
            violations.append(FieldViolation("subject_id", "must be an internal subject id (hex)"))
        if request.partner_id and not PARTNER_ID_PATTERN.fullmatch(request.partner_id):
            violations.append(FieldViolation("partner_id", "must be a partner id"))
        if request.decision and request.decision not in DECISION_NAMES:
            violations.append(FieldViolation("decision", f"unknown value {request.decision}"))
        if request.kind and request.kind not in KIND_NAMES:
            violations.append(FieldViolation("kind", f"unknown value {request.kind}"))
        violations += _time_violations(request.time_range)
        if violations:
            raise InvalidArgument(violations)
        after = _decode_token(request.page.page_token) if request.page.page_token else -1

        # An outer join, so an entry whose leaf went missing still lists (and fails to verify).
        query = select(audit_entries, audit_nodes.c.hash.label("leaf_hash")).join(
            audit_nodes,
            and_(audit_nodes.c.level == 0, audit_nodes.c.idx == audit_entries.c.idx),
            isouter=True,
        )
        for column, value in (
            (audit_entries.c.subject_id, request.subject_id),
            (audit_entries.c.actor_partner_id, request.partner_id),
            (audit_entries.c.case_id, request.case_id),
            (audit_entries.c.purpose, request.purpose),
            (audit_entries.c.decision, DECISION_NAMES.get(request.decision, "")),
            (audit_entries.c.kind, KIND_NAMES.get(request.kind, "")),
        ):
            if value:
                query = query.where(column == value)
        query = _in_time_range(query, request.time_range)
        query = query.where(audit_entries.c.idx > after).order_by(audit_entries.c.idx)
        # A filter no index serves can scan the whole log: off the loop (`run_scan`).
        page = query.limit(size + 1)
        rows = await self.store.run_scan(lambda conn: conn.execute(page).all())
        if not request.page.page_token:
            # Reading the log is itself logged, once per listing (its first page): who
            # looked, for what. The filters go in the details, so that the record does
            # not join the subject's or the case's own trail.
            await self.log.record([_listing_record(caller, request)])
        response = audit_pb2.QueryAuditResponse()
        for row in rows[:size]:
            body = _entry_body(row.canonical)
            entry = response.entries.add(
                index=row.idx,
                kind=KINDS.get(row.kind, audit_pb2.AUDIT_KIND_UNSPECIFIED),
                actor_partner_id=row.actor_partner_id,
                actor_person_id=str(body.get("actor_person_id", "")),
                subject_id=row.subject_id,
                case_id=row.case_id,
                purpose=row.purpose,
                categories=_strings(body.get("categories")),
                decision=DECISIONS.get(row.decision, audit_pb2.DECISION_UNSPECIFIED),
                consent_id=str(body.get("consent_id", "")),
                agreement_id=str(body.get("agreement_id", "")),
                reason=str(body.get("reason", "")),
                canonical=row.canonical,
                leaf_hash=row.leaf_hash or b"",
            )
            entry.recorded_at.FromDatetime(row.recorded_at)
        if len(rows) > size:
            response.next_page_token = _encode_token(rows[size - 1].idx)
        return response

    async def checkpoint(self) -> audit_pb2.GetCheckpointResponse:
        """The latest signed checkpoint, signing a fresh one first if the log grew."""
        signed = await self.checkpointer.publish()
        return audit_pb2.GetCheckpointResponse(
            signed_note=signed.note,
            tree_size=signed.checkpoint.size,
            root_hash=signed.checkpoint.root_hash,
            verifier_key=self.checkpointer.verifier.to_key(),
        )

    async def inclusion_proof(
        self, request: audit_pb2.GetInclusionProofRequest
    ) -> audit_pb2.GetInclusionProofResponse:
        if request.tree_size <= 0:
            raise InvalidArgument.field("tree_size", "must be positive")
        if request.index < 0:
            raise InvalidArgument.field("index", "must not be negative")
        if request.index >= request.tree_size:
            raise InvalidArgument.field("index", f"must be below tree_size {request.tree_size}")
        tree = await self._tree(
            request.tree_size, inclusion_nodes(request.index, request.tree_size), "tree_size"
        )
        return audit_pb2.GetInclusionProofResponse(
            index=request.index,
            tree_size=request.tree_size,
            leaf_hash=tree.subtree_hash(0, request.index),
            proof=merkle.inclusion_proof(tree, request.index, request.tree_size),
        )

    async def consistency_proof(
        self, request: audit_pb2.GetConsistencyProofRequest
    ) -> audit_pb2.GetConsistencyProofResponse:
        size1, size2 = request.size1, request.size2
        if size1 <= 0:
            raise InvalidArgument.field("size1", "must be positive")
        if size1 > size2:
            raise InvalidArgument.field("size1", f"must not exceed size2 {size2}")
        # The last leaf of the newer tree shows it is stored even when the proof is empty.
        tree = await self._tree(size2, consistency_nodes(size1, size2) | {(0, size2 - 1)}, "size2")
        return audit_pb2.GetConsistencyProofResponse(
            size1=size1, size2=size2, proof=merkle.consistency_proof(tree, size1, size2)
        )

    async def subject_access_report(
        self, caller: Caller, request: audit_pb2.SubjectAccessReportRequest
    ) -> audit_pb2.SubjectAccessReportResponse:
        """Every disclosure of the customer's data to another partner that the consent rules
        allowed: who received which categories from whom, when, why and on what grounds;
        and what of it was erased and when, each recipient told and each acknowledgement
        (`erasures_of`: ids and times only). After an erasure a partner's local id no
        longer names the customer: its pseudonym, or compliance's subject id, does."""
        if bool(request.customer_local_id) == bool(request.subject_id):
            raise InvalidArgument.field(
                "customer_local_id", "give exactly one of customer_local_id and subject_id"
            )
        violations = _time_violations(request.time_range)
        if violations:
            raise InvalidArgument(violations)
        async with self.store.read() as conn:
            subject = await self._subject(conn, caller, request)
            subjects = await _merged_subjects(conn, subject)
            query = select(
                audit_entries.c.recorded_at,
                audit_entries.c.actor_partner_id,
                audit_entries.c.case_id,
                audit_entries.c.purpose,
                audit_entries.c.canonical,
            ).where(
                audit_entries.c.subject_id.in_(sorted(subjects)),
                audit_entries.c.kind == "access",
                audit_entries.c.decision == "allow",
            )
            query = _in_time_range(query, request.time_range).order_by(audit_entries.c.idx)
            span = request.time_range
            erasures = await erasures_of(
                conn,
                subjects,
                span.start.ToDatetime(dt.UTC) if span.HasField("start") else None,
                span.end.ToDatetime(dt.UTC) if span.HasField("end") else None,
            )
        # Every disclosure of the subject, unpaged: read off the loop (`run_scan`).
        rows = await self.store.run_scan(lambda conn: conn.execute(query).all())
        response = audit_pb2.SubjectAccessReportResponse()
        disclosed = [(row, _entry_body(row.canonical)) for row in rows]
        disclosed = [
            (row, body)
            for row, body in disclosed
            if body.get("action") == "read"
            and str(body.get("source_partner_id", "")) not in ("", row.actor_partner_id)
        ]
        # The report discloses the subject's data flows: it is an access of its own,
        # logged before it is served (it never lists itself: its action is not a read).
        await self.log.record(
            [
                AuditRecord(
                    kind="access",
                    action="audit.subject-report",
                    actor_partner_id=caller.partner_id,
                    actor_person_id=caller.person_id,
                    subject_id=subject,
                    decision="allow",
                    reason=f"{len(disclosed)} disclosures reported"
                    + (f", {len(erasures)} erasure records" if erasures else ""),
                )
            ]
        )
        for row, body in disclosed:
            disclosure = response.disclosures.add(
                recipient_partner_id=row.actor_partner_id,
                source_partner_id=str(body["source_partner_id"]),
                categories=_strings(body.get("categories")),
                purpose=row.purpose,
                consent_id=str(body.get("consent_id", "")),
                agreement_id=str(body.get("agreement_id", "")),
                case_id=row.case_id,
            )
            disclosure.at.FromDatetime(row.recorded_at)
        response.erasures.extend(event.to_proto() for event in erasures)
        return response

    async def _tree(self, size: int, wanted: set[Node], field: str) -> StoredTree:
        async with statement_reads(self.store) as conn:
            try:
                return await load_tree(conn, size, wanted)
            except LogTooShort:
                held = await log_size(conn)
        raise InvalidArgument.field(field, f"is beyond the log, which holds {held} entries")

    async def _subject(
        self, conn: AsyncConnection, caller: Caller, request: audit_pb2.SubjectAccessReportRequest
    ) -> str:
        """The internal subject asked about: a partner names its own customer (by its id or
        the pseudonym it was given); compliance may name any subject by internal id."""
        if request.customer_local_id:
            subject = (
                await conn.execute(
                    select(subject_links.c.subject_id).where(
                        subject_links.c.partner_id == caller.partner_id,
                        subject_links.c.local_hash
                        == self.store.local_ids.digest(
                            caller.partner_id, request.customer_local_id
                        ),
                    )
                )
            ).scalar()
            if subject is None:
                raise NotFound(
                    f"partner {caller.partner_id!r} has no customer "
                    f"{request.customer_local_id!r} at the gateway",
                    reason="UNKNOWN_CUSTOMER",
                )
            return str(subject)
        if caller.role == Role.COMPLIANCE:
            if not SUBJECT_ID.fullmatch(request.subject_id):
                raise InvalidArgument.field("subject_id", "must be an internal subject id (hex)")
            return request.subject_id
        return self.pseudonyms.resolve(caller.partner_id, request.subject_id)


async def _merged_subjects(conn: AsyncConnection, subject: str) -> set[str]:
    """The subject and every subject merged into it by identity linking (transitively):
    entries written before a merge name the subject the customer had then."""
    found = {subject}
    frontier = {subject}
    while frontier:
        rows = await conn.execute(
            select(audit_entries.c.canonical).where(
                audit_entries.c.kind == "identity", audit_entries.c.subject_id.in_(frontier)
            )
        )
        merged = {
            str(_details(_entry_body(row.canonical)).get("merged_subject", "")) for row in rows
        }
        frontier = merged - found - {""}
        found |= frontier
    return found


Context = grpc.aio.ServicerContext[Any, Any]


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, audit: Audit) -> None:
        self._audit = audit

    async def QueryAudit(
        self, request: audit_pb2.QueryAuditRequest, context: Context
    ) -> audit_pb2.QueryAuditResponse:
        return await self._audit.query(current_caller(), request)

    async def GetCheckpoint(
        self, request: audit_pb2.GetCheckpointRequest, context: Context
    ) -> audit_pb2.GetCheckpointResponse:
        current_caller()
        return await self._audit.checkpoint()

    async def GetInclusionProof(
        self, request: audit_pb2.GetInclusionProofRequest, context: Context
    ) -> audit_pb2.GetInclusionProofResponse:
        current_caller()
        return await self._audit.inclusion_proof(request)

    async def GetConsistencyProof(
        self, request: audit_pb2.GetConsistencyProofRequest, context: Context
    ) -> audit_pb2.GetConsistencyProofResponse:
        current_caller()
        return await self._audit.consistency_proof(request)

    async def SubjectAccessReport(
        self, request: audit_pb2.SubjectAccessReportRequest, context: Context
    ) -> audit_pb2.SubjectAccessReportResponse:
        return await self._audit.subject_access_report(current_caller(), request)
