"""The combined view of a case for one reader partner and purpose, kept as served.

Every item of the view passes the consent decision point for this reader and purpose;
withheld items are counted per source partner and category. A view is kept while what
it was made from is current (`ServedView`): each read checks so with the case statement,
read once for the requests that come together (`BatchedRows`); a view out of date is
made once for all the readers that find it so together.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from coopgate.v1 import cases_pb2
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import ARRAY, Connection, String, any_, bindparam, select

from gateway.audit.log import AuditRecord
from gateway.cases.derived import DerivedDecision
from gateway.cases.reader import CaseReader
from gateway.cases.rows import CaseRow, Participant, TimelineEvent, _now
from gateway.consent.rules import AccessDecision, ConsentRules, Flow
from gateway.core.caller import Caller
from gateway.core.errors import InvalidArgument, NotFound
from gateway.crypto.sealing import Sealer
from gateway.identity.subjects import open_local_id, sealed_local_id_of
from gateway.store import Store
from gateway.store.batched import BatchedRows
from gateway.store.schema import (
    case_events,
    case_keys,
    case_participants,
    cases,
    change_counters,
    services,
    subject_keys,
    subjects,
)
from gateway.store.statements import driver_statement, execute_in

TIMELINE_CACHE_CASES = 512
#: Views kept as served, per case, reader partner and purpose (see `ServedView`).
VIEW_CACHE_ENTRIES = 1024
#: Reader persons whose audit records a kept view keeps (beyond, they are made again).
_KEPT_READERS = 64


# Statements on the read paths, built once (SQLAlchemy construction costs more
# than the query itself on these hot paths).
_TIMELINE = (
    select(
        case_events.c.sequence,
        case_events.c.source_partner_id,
        case_events.c.category,
        case_events.c.occurred_at,
        case_events.c.item,
    )
    .where(case_events.c.case_id == bindparam("case_id"))
    # Sequence order, as the watch streams them (an item's time is the source's own:
    # a finding reported before the case's opening was recorded must not come first).
    # The primary key's order: no sort, and the cache keeps it.
    .order_by(case_events.c.sequence)
)


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
        # The header names the customer by the reader's own id: each participant's,
        # sealed, and the subject's key (a link or an erasure changes these rows).
        sealed_local_id_of(case_participants.c.partner_id, cases.c.subject_id).label(
            "participant_local_id"
        ),
        subject_keys.c.wrapped_key.label("subject_key"),
    )
    .select_from(
        cases.join(case_participants, case_participants.c.case_id == cases.c.case_id)
        .join(subjects, subjects.c.subject_id == cases.c.subject_id)
        .join(services, services.c.service_id == cases.c.service_id)
        .outerjoin(case_keys, case_keys.c.case_id == cases.c.case_id)
        .outerjoin(subject_keys, subject_keys.c.subject_id == cases.c.subject_id)
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
_VIEW_CASE_LOCAL_ID = _VIEW_CASE_PARTICIPANT + 6
_VIEW_CASE_SUBJECT_KEY = _VIEW_CASE_LOCAL_ID + 1


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
    #: Per event, None, or for a decision the encodings of what each reader may see.
    composed: list[Composed | None]
    #: How many findings the decisions cite per flow (withheld with the flow's items).
    cited: list[int]

    @classmethod
    def of(cls, events: list[TimelineEvent]) -> Timeline:
        index: dict[Flow, int] = {}
        flow_index = [index.setdefault(e.flow, len(index)) for e in events]
        counts = [0] * len(index)
        for i in flow_index:
            counts[i] += 1
        composed: list[Composed | None] = [None] * len(events)
        cited: dict[int, int] = {}
        for n, e in enumerate(events):
            if e.derived is not None:
                flows = tuple(index.setdefault(f, len(index)) for f in e.derived.cites)
                for i, count in zip(flows, e.derived.cite_counts, strict=True):
                    cited[i] = cited.get(i, 0) + count
                composed[n] = Composed(e.derived, flows)
        counts += [0] * (len(index) - len(counts))
        return cls(
            events=events,
            flows=tuple(index),
            flow_index=flow_index,
            counts=counts,
            encoded=[_encoded_field(_TIMELINE_FIELD, e.item.SerializeToString()) for e in events],
            categories=tuple(sorted({f.category for f in index})),
            position=max((e.sequence for e in events), default=0),
            composed=composed,
            cited=[cited.get(i, 0) for i in range(len(index))],
        )


@dataclass(slots=True)
class Composed:
    """A decision of a timeline, encoded once per combination of the flows it cites
    that readers may see."""

    derived: DerivedDecision
    #: The index (in the timeline's flows) of each flow the decision cites.
    flows: tuple[int, ...]
    encodings: dict[tuple[bool, ...], bytes] = field(default_factory=dict)

    def encoded(self, shown: list[bool]) -> bytes:
        key = tuple(shown[i] for i in self.flows)
        found = self.encodings.get(key)
        if found is None:
            item = self.derived.item(key)
            found = self.encodings[key] = _encoded_field(_TIMELINE_FIELD, item.SerializeToString())
        return found


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


class CaseViews:
    """The view of a case per reader partner and purpose, kept as served (`serve_view`)."""

    def __init__(
        self, store: Store, rules: ConsentRules, sealer: Sealer, reader: CaseReader
    ) -> None:
        self.store = store
        self.rules = rules
        self.sealer = sealer
        self.reader = reader
        # The reader's methods the view calls, bound once: on the view's path they cost
        # what they did as this class's own.
        self._check_purpose = reader.check_purpose
        self._read_records = reader.read_records
        self._header_in = reader.header_in
        self._open_events_in = reader.open_events_in
        self._timelines: OrderedDict[str, tuple[int, Timeline]] = OrderedDict()
        self._views: OrderedDict[tuple[str, str, str], ServedView] = OrderedDict()
        #: The view's currency check, read for all the requests that come together.
        self._view_rows = BatchedRows(store, _VIEW_CASE, _VIEW_CASES, "case_id", 0)
        #: Views being made, per key, with the rows their maker had read.
        self._making: dict[
            tuple[str, str, str], tuple[Sequence[tuple[Any, ...]], asyncio.Future[ServedView]]
        ] = {}

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
        rows = execute_in(conn, _VIEW_CASE, {"case_id": case_id}).all()
        first = rows[0]
        row = CaseRow(*first[: len(_CASE_ROW_FIELDS)])
        participants = [
            Participant(*r[_VIEW_CASE_PARTICIPANT : _VIEW_CASE_PARTICIPANT + 3]) for r in rows
        ]
        key = self.sealer.unwrap(row.case_id, first[_VIEW_CASE_KEY])
        mine = next(r for r in rows if r[_VIEW_CASE_PARTICIPANT] == caller.partner_id)
        local_id = open_local_id(
            self.sealer,
            row.subject_id,
            caller.partner_id,
            first[_VIEW_CASE_SUBJECT_KEY],
            mine[_VIEW_CASE_LOCAL_ID],
        )
        header = self._header_in(conn, caller, row, participants, key, local_id)
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
        # A flow's items withheld, and the findings of it the decisions cite (composed
        # without them below).
        withheld = sorted(
            (flow.source_partner_id, flow.category, count + cited)
            for flow, count, cited, ok in zip(
                timeline.flows, timeline.counts, timeline.cited, shown, strict=True
            )
            if not ok
        )
        for source, category, count in withheld:
            view.withheld.add(source_partner_id=source, category=category, count=count)
        # The items are joined already encoded (a repeated field's encoding is the
        # concatenation of its elements'), and the response stays encoded: a parsed
        # message would be encoded again at every read (measured: 9% of the gateway's
        # time serving a kept 31 KB view).
        items = b"".join(
            encoded if composed is None else composed.encoded(shown)
            for encoded, i, composed in zip(
                timeline.encoded, timeline.flow_index, timeline.composed, strict=True
            )
            if shown[i]
        )
        return ServedView(
            rows=raw,
            holds_until=decided.holds_until,
            row=row,
            decisions=decisions,
            categories=timeline.categories,
            served=served,
            withheld=sum(count for _, _, count in withheld),
            encoded=_encoded_field(_VIEW_FIELD, view.SerializeToString() + items),
        )

    def _timeline_in(self, conn: Connection, row: CaseRow, key: AESGCM | None) -> Timeline:
        """The case's events in sequence order, parsed once per version of the case."""
        cached = self._timelines.get(row.case_id)
        if cached is not None and cached[0] == row.last_sequence and key is not None:
            self._timelines.move_to_end(row.case_id)
            return cached[1]
        rows = execute_in(conn, _TIMELINE, {"case_id": row.case_id}).all()
        timeline = Timeline.of(self._open_events_in(conn, row.case_id, rows, key))
        if timeline.events and timeline.position == row.last_sequence and key is not None:
            self._timelines[row.case_id] = (row.last_sequence, timeline)
            while len(self._timelines) > TIMELINE_CACHE_CASES:
                self._timelines.popitem(last=False)
        return timeline


def _require_participant(rows: Sequence[tuple[Any, ...]], caller: Caller, case_id: str) -> None:
    """Rows of `_VIEW_CASE`: absent and not ours look the same (a case's existence is not
    revealed to outsiders)."""
    if not any(r[_VIEW_CASE_PARTICIPANT] == caller.partner_id for r in rows):
        raise NotFound(f"case {case_id!r} not found", reason="CASE_NOT_FOUND")


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
