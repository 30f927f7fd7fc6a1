"""What the log says was erased about a subject, and when: the erasure itself
(`subject.erased`), each case shredded at the end of its retention period
(`case.retention_expired`), each recipient told (`subject.erasure_notified`) and each
acknowledgement (`subject.erasure_acknowledged`). The log holds references only, so
this report holds no erased data: case ids, partner ids, times. The subject access
report serves it (`SubjectAccessReportResponse.erasures`)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from coopgate.v1 import audit_pb2
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.schema import audit_entries

#: The log's actions of an erasure, and the contract's word for each.
ERASURE_ACTIONS: Mapping[str, audit_pb2.ErasureAction.ValueType] = {
    "subject.erased": audit_pb2.ERASURE_ACTION_CUSTOMER_ERASED,
    "case.retention_expired": audit_pb2.ERASURE_ACTION_RETENTION_EXPIRED,
    "subject.erasure_notified": audit_pb2.ERASURE_ACTION_RECIPIENT_NOTIFIED,
    "subject.erasure_acknowledged": audit_pb2.ERASURE_ACTION_RECIPIENT_ACKNOWLEDGED,
}


@dataclass(frozen=True, slots=True)
class ErasureEvent:
    at: dt.datetime
    action: str
    #: Who asked (erasure), who was told (notice), who acknowledged; "coopgate" for retention.
    partner_id: str
    case_ids: tuple[str, ...]

    def to_proto(self) -> audit_pb2.ErasureRecord:
        record = audit_pb2.ErasureRecord(
            action=ERASURE_ACTIONS.get(self.action, audit_pb2.ERASURE_ACTION_UNSPECIFIED),
            partner_id=self.partner_id,
            case_ids=self.case_ids,
        )
        record.at.FromDatetime(self.at)
        return record


async def erasures_of(
    conn: AsyncConnection,
    subjects: Iterable[str],
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
) -> list[ErasureEvent]:
    """Every erasure event of these subjects recorded in [start, end), in the log's order."""
    query = (
        select(
            audit_entries.c.recorded_at,
            audit_entries.c.actor_partner_id,
            audit_entries.c.case_id,
            audit_entries.c.canonical,
        )
        .where(audit_entries.c.subject_id.in_(sorted(subjects)), audit_entries.c.kind == "erasure")
        .order_by(audit_entries.c.idx)
    )
    if start is not None:
        query = query.where(audit_entries.c.recorded_at >= start)
    if end is not None:
        query = query.where(audit_entries.c.recorded_at < end)
    rows = await conn.execute(query)
    events = []
    for row in rows:
        try:
            body = json.loads(bytes(row.canonical))
        except ValueError:
            continue
        action = str(body.get("action", ""))
        if action not in ERASURE_ACTIONS:
            continue
        details = body.get("details")
        details = details if isinstance(details, dict) else {}
        cases = str(details.get("cases", "")) or row.case_id
        partner = row.actor_partner_id
        if action == "subject.erasure_notified":
            partner = str(body.get("source_partner_id", ""))
        events.append(
            ErasureEvent(
                at=row.recorded_at,
                action=action,
                partner_id=partner,
                case_ids=tuple(c for c in cases.split(",") if c),
            )
        )
    return events
