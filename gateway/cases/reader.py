"""What reading a case takes, shared by every part of the case service that reads one:
its header as one caller sees it, its sealed summary and events opened, the purpose
checked against the vocabulary, and the audit records of a read."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from coopgate.v1 import admin_pb2, cases_pb2
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import timestamp_pb2
from sqlalchemy import Connection, Row, bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.log import AuditRecord
from gateway.cases.derived import DerivedDecision
from gateway.cases.rows import CaseRow, Participant, TimelineEvent
from gateway.consent.rules import AccessDecision, ConsentRules, Flow
from gateway.consent.vocabulary import Vocabulary
from gateway.core.caller import Caller
from gateway.core.errors import InvalidArgument
from gateway.crypto.pseudonyms import Pseudonyms
from gateway.crypto.sealing import ERASED_TEXT, MISSING, Erased, Missing, Sealer
from gateway.identity.subjects import local_id_in
from gateway.store.schema import case_participants, services
from gateway.store.statements import driver_statement

#: A case's participants (partner, role), for `CaseReader.header_in` (run on the driver).
_PARTICIPANTS = select(case_participants.c.partner_id, case_participants.c.role).where(
    case_participants.c.case_id == bindparam("case_id")
)


class CaseReader:
    """Shared by the parts of the case service (`Cases`): each is given the same reader,
    so the service levels it keeps are kept once for all of them."""

    def __init__(
        self, pseudonyms: Pseudonyms, rules: ConsentRules, vocabulary: Vocabulary, sealer: Sealer
    ) -> None:
        self.pseudonyms = pseudonyms
        self.rules = rules
        self.vocabulary = vocabulary
        self.sealer = sealer
        self._levels: dict[tuple[str, int], admin_pb2.ServiceLevel] = {}

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
            derived = None
            if item.WhichOneof("item") == "ownership_decision":
                # Its stored form never leaves: what a reader sees is composed for it.
                derived = DerivedDecision.parse(item)
                item = derived.item([False] * len(derived.cites))
            events.append(TimelineEvent(r.sequence, r.source_partner_id, r.category, item, derived))
        return events

    def read_records(
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

    def check_purpose(self, purpose: str) -> None:
        violation = self.vocabulary.check_purpose("purpose", purpose)
        if violation is not None:
            raise InvalidArgument([violation])

    async def header(
        self,
        conn: AsyncConnection,
        caller: Caller,
        row: CaseRow,
        participants: Sequence[Participant | Row[Any]] | None = None,
        key: AESGCM | Missing | None = MISSING,
        *,
        local_id: str | None = None,
    ) -> cases_pb2.CaseHeader:
        """``local_id=""``: a header without the reader's own id for the customer, for
        the answers of calls that change a case; they are kept for the call's retries,
        and a partner's id for a customer is never kept in clear."""
        return await conn.run_sync(self.header_in, caller, row, participants, key, local_id)

    def header_in(
        self,
        conn: Connection,
        caller: Caller,
        row: CaseRow,
        participants: Sequence[Participant | Row[Any]] | None = None,
        key: AESGCM | Missing | None = MISSING,
        local_id: str | None = None,
    ) -> cases_pb2.CaseHeader:
        """The case's header as ``caller`` sees it: the customer by its own id for them
        (``local_id``, looked up when not given) and its pseudonym."""
        if local_id is None:
            local_id = local_id_in(conn, self.sealer, caller.partner_id, row.subject_id)
        header = cases_pb2.CaseHeader(
            case_id=row.case_id,
            service_id=row.service_id,
            status=row.status,  # type: ignore[arg-type]
            subject_id=self.pseudonyms.for_partner(caller.partner_id, row.subject_id),
            customer_local_id=local_id,
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
            resolvers = [
                partner_id
                for partner_id, role in driver_statement(_PARTICIPANTS, conn.dialect).rows(
                    conn, {"case_id": row.case_id}
                )
                if role == cases_pb2.PARTICIPANT_ROLE_RESOLVER
            ]
        else:
            resolvers = [
                p.partner_id for p in participants if p.role == cases_pb2.PARTICIPANT_ROLE_RESOLVER
            ]
        header.resolver_ids.extend(sorted(resolvers))
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


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _set_time(stamp: timestamp_pb2.Timestamp, at: dt.datetime) -> None:
    """``stamp.FromDatetime(at)`` for an aware datetime, without its generic conversions
    (three of them were a tenth of a header's cost)."""
    delta = at - _EPOCH
    stamp.seconds = delta.days * 86_400 + delta.seconds
    stamp.nanos = delta.microseconds * 1_000
