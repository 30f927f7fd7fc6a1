"""Partner work delivery: a server-streaming subscription with acknowledgement.

Items wait in the store until the partner acknowledges them, so delivery is
at least once: a stream that breaks before the acknowledgement gets the item
again on the next subscription. Within one stream an item is sent once.

Each item names its case, so that erasure and retention delete the items of a case.
An item that names the partner's own id for the customer (a customer notification, a
consent prompt) is kept sealed under the customer's subject key, which erasure destroys,
and opened only to be delivered (`Sealer.seal_item`). An erasure notice (work id
``erasure-…``, GDPR art. 19) names it too, sealed under the master key (the subject's
key is gone by then): acknowledging it empties it and is audited.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any, NamedTuple

from coopgate.v1 import work_pb2
from opentelemetry.trace import SpanKind, set_span_in_context
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.log import AuditLog, AuditRecord
from gateway.core.caller import Caller
from gateway.core.errors import InvalidArgument
from gateway.crypto.sealing import Sealer
from gateway.identity.erasure import NOTICE_PREFIX
from gateway.store import Store
from gateway.store.changes import SAFETY_SECONDS, WINDOW, WORK, Subscription, announce
from gateway.store.idempotency import run_once
from gateway.store.schema import case_keys, work_items
from gateway.store.statements import execute
from gateway.telemetry import inject_into, tracer, tracing_on
from gateway.telemetry.spans import CASE_ID, PARTNER

DEFAULT_IN_FLIGHT = 32
MAX_IN_FLIGHT = 1000
MAX_ACK_BATCH = 1000

_tracer = tracer(__name__)


#: Whether an item is queued already (``id``), and whether the case's key was destroyed
#: (``case_id``: erased, or past its retention period): one statement for both of
#: `enqueue`'s checks.
_QUEUED_OR_ERASED = select(
    select(work_items.c.work_id).where(work_items.c.work_id == bindparam("id")).exists(),
    select(case_keys.c.case_id)
    .where(case_keys.c.case_id == bindparam("case_id"), case_keys.c.wrapped_key.is_(None))
    .exists(),
)


# Statements built once: on the delivery path, building and finding a statement in
# SQLAlchemy's cache cost more than running it.
_UNACKED = (
    select(
        work_items.c.work_id,
        work_items.c.item,
        work_items.c.deliveries,
        work_items.c.subject_id,
    )
    .where(work_items.c.partner_id == bindparam("partner"), work_items.c.acked_at.is_(None))
    .order_by(work_items.c.created_at, work_items.c.work_id)
    .limit(bindparam("window"))
)
_DELIVERED = (
    update(work_items)
    .where(work_items.c.work_id.in_(bindparam("ids", expanding=True)))
    .values(deliveries=work_items.c.deliveries + 1)
)
_ACKNOWLEDGE = (
    update(work_items)
    .where(
        work_items.c.work_id.in_(bindparam("ids", expanding=True)),
        work_items.c.partner_id == bindparam("partner"),
        work_items.c.acked_at.is_(None),
    )
    .values(acked_at=bindparam("now"))
)
_QUEUED_AMONG = select(work_items.c.work_id).where(
    work_items.c.work_id.in_(bindparam("ids", expanding=True))
)
_ENQUEUE = insert(work_items)
_LOCK = (
    select(work_items.c.work_id)
    .where(work_items.c.work_id.in_(bindparam("ids", expanding=True)))
    .order_by(work_items.c.work_id)
    .with_for_update()
)


async def _lock_in_order(conn: AsyncConnection, work_ids: Collection[str]) -> list[str]:
    """Lock the items' rows in work id order before changing them (PostgreSQL): two
    streams of one partner (two instances of its backend, or a stream its client left
    open) and its acknowledgements touch the same rows, and rows locked in different
    orders deadlocked (measured with two replicas). SQLite writers are serialized."""
    if conn.dialect.name == "sqlite":
        return list(work_ids)
    rows = await execute(conn, _LOCK, {"ids": list(work_ids)})
    return list(rows.scalars())


class _Unacked(NamedTuple):
    """A row of `_UNACKED`, as the driver returns it."""

    work_id: str
    item: bytes
    deliveries: int
    subject_id: str | None


class _Pending(NamedTuple):
    work_id: str
    item: bytes
    deliveries: int


class PartnerWork:
    def __init__(
        self, store: Store, audit: AuditLog | None = None, sealer: Sealer | None = None
    ) -> None:
        self.store = store
        self.audit = audit
        #: Opens the items kept sealed (None: a store whose items are all clear).
        self.sealer = sealer

    async def _opened(self, conn: AsyncConnection, rows: Sequence[_Unacked]) -> list[_Pending]:
        """The rows about to be sent, their items opened (sealed ones only now, on their
        way to the partner); one whose customer was erased is left out."""
        opened = []
        for row in rows:
            item: bytes | None = bytes(row.item)
            if self.sealer is not None:
                item = await self.sealer.open_item(conn, row.work_id, row.item, row.subject_id)
            if item is not None:
                opened.append(_Pending(row.work_id, item, row.deliveries))
        return opened

    async def subscribe(
        self, caller: Caller, request: work_pb2.SubscribeRequest
    ) -> AsyncIterator[work_pb2.SubscribeResponse]:
        in_flight = request.max_in_flight or DEFAULT_IN_FLIGHT
        if not 0 < in_flight <= MAX_IN_FLIGHT:
            raise InvalidArgument.field("max_in_flight", f"must be in 1..{MAX_IN_FLIGHT}")
        sent: set[str] = set()
        # Subscribed before the first read: work committed while it reads wakes it at once.
        with (
            self.store.changes.subscribe(WORK, caller.partner_id) as work,
            self.store.changes.subscribe(WINDOW, caller.partner_id) as opened,
        ):
            async for response in self._deliver(caller, in_flight, sent, work, opened):
                yield response

    async def _deliver(
        self,
        caller: Caller,
        in_flight: int,
        sent: set[str],
        work: Subscription,
        opened: Subscription,
    ) -> AsyncIterator[work_pb2.SubscribeResponse]:
        while True:
            # An idle poll only reads, one statement and no transaction (`read_rows`: a
            # statement reads one consistent snapshot by itself); a write transaction (on
            # SQLite, the one writer lock) is taken only when there is something to
            # deliver, and the items are opened in it (their subject's key read there).
            window = {"partner": caller.partner_id, "window": in_flight + len(sent)}
            rows = [_Unacked(*r) for r in await self.store.read_rows(_UNACKED, window)]
            # Acknowledged items leave the in-flight window before it is filled again
            # (pruned after filling, an acknowledgement that opened a full window sent
            # nothing until the next safety read, a second later).
            sent &= {r.work_id for r in rows}
            due = [r for r in rows if r.work_id not in sent][: max(0, in_flight - len(sent))]
            fresh: list[_Pending] = []
            if due:
                async with self.store.write() as conn:
                    fresh = await self._opened(conn, due)
                    if fresh:
                        ids = await _lock_in_order(conn, [r.work_id for r in fresh])
                        await execute(conn, _DELIVERED, {"ids": ids})
            for row in fresh:
                item = work_pb2.WorkItem.FromString(row.item)
                item.redeliveries = row.deliveries
                sent.add(row.work_id)
                yield work_pb2.SubscribeResponse(item=item)
            if not fresh:
                # Woken by new work, or, when the window is full, by an acknowledgement
                # that opens it (only then: an acknowledgement sends nothing new while
                # there is room); read again after SAFETY_SECONDS regardless (a
                # notification may be lost).
                full = len(sent) >= in_flight
                await (opened if full else work).wait(SAFETY_SECONDS)

    async def waiting(self) -> dict[str, int]:
        """Items not yet acknowledged, per partner (the ``coopgate.work.waiting`` gauge)."""
        async with self.store.read() as conn:
            rows = await conn.execute(
                select(work_items.c.partner_id, func.count())
                .where(work_items.c.acked_at.is_(None))
                .group_by(work_items.c.partner_id)
            )
            return {partner: count for partner, count in rows}

    async def acknowledge(
        self, caller: Caller, request: work_pb2.AcknowledgeRequest
    ) -> work_pb2.AcknowledgeResponse:
        if not request.work_ids:
            raise InvalidArgument.field("work_ids", "at least one work id")
        if len(request.work_ids) > MAX_ACK_BATCH:
            raise InvalidArgument.field("work_ids", f"at most {MAX_ACK_BATCH} per call")

        async def action(conn: AsyncConnection) -> work_pb2.AcknowledgeResponse:
            ids = set(request.work_ids)
            notices = [i for i in ids if i.startswith(NOTICE_PREFIX)]
            erased = await self._acknowledge_notices(conn, caller, notices) if notices else 0
            await _lock_in_order(conn, ids)
            result = await execute(
                conn,
                _ACKNOWLEDGE,
                {"ids": list(ids), "partner": caller.partner_id, "now": dt.datetime.now(dt.UTC)},
            )
            announce(conn, WINDOW, caller.partner_id)  # the in-flight window opens
            return work_pb2.AcknowledgeResponse(acknowledged=result.rowcount + erased)

        response, _ = await run_once(
            self.store, caller, "Acknowledge", request, work_pb2.AcknowledgeResponse, action
        )
        if any(i.startswith(NOTICE_PREFIX) for i in request.work_ids):
            # The emptied notices' earlier pages leave the write-ahead log too.
            await self.store.truncate_wal()
        return response

    async def _acknowledge_notices(
        self, conn: AsyncConnection, caller: Caller, work_ids: list[str]
    ) -> int:
        """Erasure notices acknowledged: emptied (the partner's local id goes with them),
        each acknowledgement audited against the erased subject; returns how many."""
        rows = (
            await conn.execute(
                select(work_items.c.work_id, work_items.c.subject_id).where(
                    work_items.c.work_id.in_(work_ids),
                    work_items.c.partner_id == caller.partner_id,
                    work_items.c.acked_at.is_(None),
                )
            )
        ).all()
        if not rows:
            return 0
        await conn.execute(
            update(work_items)
            .where(work_items.c.work_id.in_([r.work_id for r in rows]))
            .values(item=b"", acked_at=dt.datetime.now(dt.UTC))
        )
        if self.audit is not None:
            await self.audit.record_in(
                conn,
                [
                    AuditRecord(
                        kind="erasure",
                        action="subject.erasure_acknowledged",
                        actor_partner_id=caller.partner_id,
                        actor_person_id=caller.person_id,
                        subject_id=row.subject_id or "",
                        reason="the recipient forgot the customer (GDPR art. 19)",
                        details=(("notice", row.work_id),),
                    )
                    for row in rows
                ],
            )
        return len(rows)


async def enqueue(
    conn: AsyncConnection,
    work_id: str,
    partner_id: str,
    item: work_pb2.WorkItem,
    *,
    sealed_for: tuple[Sealer, str] | None = None,
) -> bool:
    """Queue an item for a partner once: the same ``work_id`` again is a no-op, and so
    is an item about an erased case (a workflow still running after the erasure). An
    item naming the partner's own id for the customer is given ``sealed_for`` (the
    sealer, the customer's subject): it is kept sealed under the subject's key.

    Returns whether the item was new.
    """
    case_id = _case_of(item)
    queued, erased = (
        await execute(conn, _QUEUED_OR_ERASED, {"id": work_id, "case_id": case_id or ""})
    ).one()
    if queued or erased:
        return False
    row = _row(work_id, partner_id, item, dt.datetime.now(dt.UTC))
    if sealed_for is not None:
        sealer, row["subject_id"] = sealed_for
        row["item"] = await sealer.seal_item(conn, work_id, row["item"], row["subject_id"])
    await execute(conn, _ENQUEUE, row)
    announce(conn, WORK, partner_id)
    return True


async def enqueue_all(
    conn: AsyncConnection, case_id: str, items: Sequence[tuple[str, str, work_pb2.WorkItem]]
) -> int:
    """`enqueue` for several items about one case, none of them sealed (``items``: work
    id, partner, item): each queued once, none for an erased case, with one statement
    for what is queued already, one for the erasure and one insert for all of them.
    Returns how many were new."""
    if not items:
        return 0
    ids = [work_id for work_id, _, _ in items]
    queued = set((await execute(conn, _QUEUED_AMONG, {"ids": ids})).scalars())
    if len(queued) == len(set(ids)):
        return 0
    if (await execute(conn, _QUEUED_OR_ERASED, {"id": "", "case_id": case_id})).one()[1]:
        return 0
    now = dt.datetime.now(dt.UTC)
    rows = []
    for work_id, partner_id, item in items:
        if work_id not in queued:
            queued.add(work_id)
            rows.append(_row(work_id, partner_id, item, now))
    await execute(conn, _ENQUEUE, rows)
    for row in rows:
        announce(conn, WORK, row["partner_id"])
    return len(rows)


def _case_of(item: work_pb2.WorkItem) -> str | None:
    payload = item.WhichOneof("payload")
    return getattr(item, payload).case_id if payload else None


def _row(
    work_id: str, partner_id: str, item: work_pb2.WorkItem, now: dt.datetime
) -> dict[str, Any]:
    """The stored row of a new item, in clear (`enqueue` seals it when it must)."""
    payload = item.WhichOneof("payload")
    case_id = _case_of(item)
    item.work_id = work_id
    item.created_at.FromDatetime(now)
    # The item's own span (what it asks of the partner); the partner's answer to it is
    # its child, through the item's traceparent.
    if tracing_on():
        span = _tracer.start_span(
            f"work {payload}",
            kind=SpanKind.PRODUCER,
            attributes={CASE_ID: case_id or "", PARTNER: partner_id},
        )
        inject_into(item, set_span_in_context(span))
        span.end()
    return {
        "work_id": work_id,
        "partner_id": partner_id,
        "created_at": now,
        "item": item.SerializeToString(deterministic=True),
        "deliveries": 0,
        "case_id": case_id,
        "subject_id": None,
    }
