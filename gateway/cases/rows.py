"""A case's rows: the projection's row, the lookups every part of the case service
reads a case with, and the writes of its timeline (each item sealed with the case's key).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from coopgate.v1 import cases_pb2
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.cases.derived import DerivedDecision
from gateway.consent.rules import Flow
from gateway.core.caller import Caller
from gateway.core.errors import FailedPrecondition, NotFound
from gateway.crypto.sealing import MISSING, Missing, Sealer
from gateway.store.changes import CASE, announce
from gateway.store.schema import case_events, case_participants, cases
from gateway.store.statements import execute

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
# The timeline's writes and the case by id, built once too (the activities' hot path).
#: The case row by id (``case_id``), for the activities, which act on any case.
CASE_BY_ID = select(cases).where(cases.c.case_id == bindparam("case_id"))
_SEEN = select(case_events.c.sequence).where(
    case_events.c.case_id == bindparam("case_id"), case_events.c.dedup_key == bindparam("dedup")
)
_NEXT_SEQUENCE = (
    update(cases)
    .where(cases.c.case_id == bindparam("case"))
    .values(last_sequence=cases.c.last_sequence + 1, updated_at=bindparam("now"))
    .returning(cases.c.last_sequence)
)
_APPEND = insert(case_events)
_SET_STATUS = (
    update(cases)
    .where(cases.c.case_id == bindparam("case"))
    .values(status=bindparam("new_status"), updated_at=bindparam("now"))
)


@dataclass(slots=True, frozen=True)
class TimelineEvent:
    sequence: int
    source_partner_id: str
    category: str
    item: cases_pb2.TimelineItem
    #: For an ownership decision: what it was made from, to compose per reader (`item`
    #: is then the explanation composed for nobody).
    derived: DerivedDecision | None = None
    flow: Flow = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "flow", Flow(self.source_partner_id, self.category))


@dataclass(slots=True, frozen=True)
class Participant:
    partner_id: str
    role: int
    person_id: str


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
    key: AESGCM | Missing | None = MISSING,
) -> int | None:
    """Append one timeline item to a case; returns its sequence number.

    With a ``dedup_key`` the append happens once: a retry returns None. ``key``: the
    case's key when the caller holds it already in this transaction (read otherwise).
    """
    if dedup_key is not None:
        seen = (await execute(conn, _SEEN, {"case_id": case_id, "dedup": dedup_key})).first()
        if seen is not None:
            return None
    sequence = (await execute(conn, _NEXT_SEQUENCE, {"case": case_id, "now": _now()})).scalar_one()
    item.sequence = sequence
    if isinstance(key, Missing):
        key = await sealer.key(conn, case_id)
    await execute(
        conn,
        _APPEND,
        {
            "case_id": case_id,
            "sequence": sequence,
            "occurred_at": item.occurred_at.ToDatetime(dt.UTC),
            "source_partner_id": source_partner_id,
            "category": category,
            "item": sealer.seal(
                key, item.SerializeToString(deterministic=True), f"{case_id}/{sequence}"
            ),
            "dedup_key": dedup_key,
        },
    )
    announce(conn, CASE, case_id)  # its watchers wake once this commits
    return int(sequence)


async def set_status(
    conn: AsyncConnection,
    sealer: Sealer,
    case_id: str,
    status: cases_pb2.CaseStatus.ValueType,
    at: dt.datetime | None = None,
    key: AESGCM | Missing | None = MISSING,
) -> None:
    """Move the case projection to ``status`` and record the change on the timeline
    (dated ``at``, by default now: a case opened is received when it is opened, so
    that its first items' times follow their sequence)."""
    result = await execute(
        conn, _SET_STATUS, {"case": case_id, "new_status": status, "now": _now()}
    )
    if result.rowcount == 0:
        raise NotFound(f"case {case_id!r} does not exist")
    item = cases_pb2.TimelineItem(status_change=cases_pb2.StatusChange(status=status))
    if at is None:
        item.occurred_at.GetCurrentTime()
    else:
        item.occurred_at.FromDatetime(at)
    item.status_change.changed_at.CopyFrom(item.occurred_at)
    await append_event(
        conn, sealer, case_id, item, source_partner_id="", category=CASE_STATUS_CATEGORY, key=key
    )


async def _load_case(conn: AsyncConnection, case_id: str) -> CaseRow:
    row = (await execute(conn, CASE_BY_ID, {"case_id": case_id})).first()
    if row is None:
        raise NotFound(f"case {case_id!r} not found", reason="CASE_NOT_FOUND")
    return _case_row(row)


def _case_row(row: object) -> CaseRow:
    return CaseRow(**{f: getattr(row, f) for f in CaseRow.__dataclass_fields__})


async def _visible_case(conn: AsyncConnection, caller: Caller, case_id: str) -> CaseRow:
    """The case if the caller's partner takes part in it; NOT_FOUND otherwise,
    so that a case's existence is not revealed to outsiders."""
    row = (
        await execute(conn, _VISIBLE_CASE, {"case_id": case_id, "partner_id": caller.partner_id})
    ).first()
    if row is None:
        raise NotFound(f"case {case_id!r} not found", reason="CASE_NOT_FOUND")
    return _case_row(row)


async def _participating_case(conn: AsyncConnection, caller: Caller, case_id: str) -> CaseRow:
    """The case for an action: NOT_FOUND if it does not exist or the caller takes no
    part in it (the same answer, from the same one statement: an outsider learns
    nothing of a case's existence), FAILED_PRECONDITION if it is closed."""
    row = await _visible_case(conn, caller, case_id)
    if row.status == cases_pb2.CASE_STATUS_CLOSED:
        raise FailedPrecondition("the case is closed", reason="CASE_CLOSED")
    return row
