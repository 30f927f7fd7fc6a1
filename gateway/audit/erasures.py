"""What the log says was erased about a subject, and when: the erasure itself
(`subject.erased`), each case shredded at the end of its retention period
(`case.retention_expired`), each recipient told (`subject.erasure_notified`) and each
acknowledgement (`subject.erasure_acknowledged`). The log holds references only, so
this report holds no erased data: case ids, partner ids, times."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.schema import audit_entries

ERASURE_ACTIONS = (
    "subject.erased",
    "case.retention_expired",
    "subject.erasure_notified",
    "subject.erasure_acknowledged",
)


@dataclass(frozen=True, slots=True)
class ErasureEvent:
    at: dt.datetime
    action: str
    #: Who asked (erasure), who was told (notice), who acknowledged; "coopgate" for retention.
    partner_id: str
    case_ids: tuple[str, ...]


async def erasures_of(conn: AsyncConnection, subjects: Iterable[str]) -> list[ErasureEvent]:
    """Every erasure event of these subjects, in the log's order."""
    rows = await conn.execute(
        select(
            audit_entries.c.recorded_at,
            audit_entries.c.actor_partner_id,
            audit_entries.c.case_id,
            audit_entries.c.canonical,
        )
        .where(audit_entries.c.subject_id.in_(sorted(subjects)), audit_entries.c.kind == "erasure")
        .order_by(audit_entries.c.idx)
    )
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
