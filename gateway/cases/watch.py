"""The live watch of a case: every change after a position, each decided at the moment
it is sent; woken by the `CaseFeed`."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from coopgate.v1 import cases_pb2
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import bindparam, select

from gateway.cases.feed import CaseFeed
from gateway.cases.reader import CaseReader
from gateway.cases.rows import CaseRow, TimelineEvent, _load_case, _visible_case
from gateway.consent.checks import next_boundary
from gateway.consent.rules import AccessDecision, ConsentRules, Flow
from gateway.core.caller import Caller
from gateway.core.errors import InvalidArgument
from gateway.crypto.sealing import MISSING, Missing
from gateway.store import Store
from gateway.store.changes import CONSENT, Subscription, consent_key
from gateway.store.schema import case_events
from gateway.store.statements import execute
from gateway.telemetry import annotate, instruments

WATCH_BATCH = 200
WATCH_IDLE_SECONDS = 5.0
#: The events after a position (built once: a watch reads it at every wake-up).
_EVENTS_AFTER = (
    select(case_events)
    .where(
        case_events.c.case_id == bindparam("case_id"), case_events.c.sequence > bindparam("after")
    )
    .order_by(case_events.c.sequence)
    .limit(WATCH_BATCH)
)


@dataclass(slots=True, frozen=True)
class WatchBatch:
    row: CaseRow
    header: cases_pb2.CaseHeader
    events: list[TimelineEvent]
    decisions: dict[Flow, AccessDecision]
    #: Whether the read stopped at WATCH_BATCH events (more may follow at once).
    full: bool = False


class CaseWatch:
    """Live watches of cases (`watch`), woken by the feed when their case moves."""

    def __init__(
        self, store: Store, rules: ConsentRules, feed: CaseFeed, reader: CaseReader
    ) -> None:
        self.store = store
        self.rules = rules
        self.feed = feed
        self.reader = reader
        # The reader's methods the watch calls, bound once: on the watch's path they cost
        # what they did as this class's own.
        self._check_purpose = reader.check_purpose
        self._read_records = reader.read_records
        self._header = reader.header
        self._open_events = reader.open_events
        self._inflight: dict[tuple[str, str, str, int, int], asyncio.Future[WatchBatch]] = {}

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
        With ``consent_changes``, a consent of the case's customer naming the caller's
        company as a recipient, granted or withdrawn (its store notification, from any
        replica on PostgreSQL), sends a response carrying ``consent_change``; so does
        the moment such a consent starts or ends by its own dates (``valid_from``,
        ``valid_until``), when nothing is written.
        """
        if not request.case_id:
            raise InvalidArgument.field("case_id", "is required")
        if request.after_sequence < 0:
            raise InvalidArgument.field("after_sequence", "must be 0 or a sequence from the view")
        self._check_purpose(request.purpose)
        position = request.after_sequence
        watcher = self.feed.watch(request.case_id, position, on_slow)
        loop = asyncio.get_running_loop()
        consents: Subscription | None = None
        #: When a given consent naming the caller next starts or ends (consent_changes).
        boundary: dt.datetime | None = None
        annotate(case_id=request.case_id)
        instruments.watchers.add(1)
        try:
            while True:
                batch = await self._watch_batch(caller, request.case_id, request.purpose, position)
                row, header, events = batch.row, batch.header, batch.events
                if request.consent_changes and consents is None:
                    consents = self.store.changes.subscribe(
                        CONSENT, consent_key(row.subject_id, caller.partner_id), watcher.changes
                    )
                    boundary = await self._next_boundary(row.subject_id, caller.partner_id)
                allowed, cited = _allowed(events, batch.decisions)
                if events:
                    await self.rules.audit.record(
                        self._read_records(
                            caller,
                            row,
                            request.purpose,
                            batch.decisions,
                            sorted({e.category for e in events}),
                            len(allowed),
                            len(events) - len(allowed) + cited,
                        )
                    )
                for item in allowed:
                    watcher.writing_since = loop.time()
                    yield cases_pb2.WatchCaseResponse(item=item, header=header)
                    watcher.writing_since = None
                    watcher.delivered = item.sequence
                if events:
                    position = watcher.position = events[-1].sequence
                    if batch.full:
                        continue  # more may be waiting: read on at once
                    # A partial batch held everything committed when it was read. Whatever
                    # committed since has announced itself on the subscription, so the
                    # wait below returns at once for it: no read only to find nothing new.
                idle = WATCH_IDLE_SECONDS
                if consents is not None:
                    now = dt.datetime.now(dt.UTC)
                    if consents.take() or (boundary is not None and boundary <= now):
                        change = cases_pb2.ConsentChange()
                        change.noticed_at.FromDatetime(now)
                        yield cases_pb2.WatchCaseResponse(header=header, consent_change=change)
                        boundary = await self._next_boundary(row.subject_id, caller.partner_id)
                    if boundary is not None:
                        idle = min(idle, max((boundary - now).total_seconds(), 0.0))
                if row.status == cases_pb2.CASE_STATUS_CLOSED:
                    return
                await self.feed.wait(watcher, idle)
        finally:
            if consents is not None:
                consents.close()
            self.feed.forget(watcher)
            instruments.watchers.add(-1)

    async def _next_boundary(self, subject_id: str, partner_id: str) -> dt.datetime | None:
        async with self.store.read() as conn:
            return await next_boundary(conn, subject_id, partner_id, dt.datetime.now(dt.UTC))

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
            row = await _visible_case(conn, caller, case_id)
            rows = (
                await execute(conn, _EVENTS_AFTER, {"case_id": row.case_id, "after": position})
            ).all()
            # The case's key read once for the batch's events and the header's summary
            # (the first contact's), and only when either needs it.
            key: AESGCM | Missing | None = MISSING
            if rows or caller.partner_id == row.first_contact_partner_id:
                key = await self.reader.sealer.key(conn, row.case_id)
            events = await self._open_events(conn, row.case_id, rows, key) if rows else []
            if events:
                # The header at least as new as the events it goes with: a status change
                # commits the row and its event together, and on PostgreSQL each statement
                # sees what committed before it (one soak watcher got the OWNED event
                # under a header still DIAGNOSING, then nothing more). Re-read only then:
                # with no events, the first row says whether the case closed before them.
                row = await _load_case(conn, row.case_id)
            header = await self._header(conn, caller, row, key=key)
            decisions = await self.rules.evaluate(
                conn,
                reader_partner_id=caller.partner_id,
                subject_id=row.subject_id,
                service_id=row.service_id,
                purpose=purpose,
                flows={e.flow for e in events}.union(
                    *(e.derived.cites for e in events if e.derived is not None)
                ),
            )
        return WatchBatch(row, header, events, decisions, full=len(rows) == WATCH_BATCH)


def _allowed(
    events: list[TimelineEvent], decisions: dict[Flow, AccessDecision]
) -> tuple[list[cases_pb2.TimelineItem], int]:
    """The items the reader may see, each decision composed for it, and how many
    findings those decisions cite that it may not see (withheld)."""
    allowed = []
    withheld = 0
    for e in events:
        if not decisions[e.flow].allowed:
            continue
        if e.derived is None:
            allowed.append(e.item)
            continue
        shown = [decisions[f].allowed for f in e.derived.cites]
        allowed.append(e.derived.item(shown))
        withheld += e.derived.withheld(shown)
    return allowed, withheld
