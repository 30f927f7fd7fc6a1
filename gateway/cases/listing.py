"""Listing cases: those a partner takes part in, or one customer's history across
partners where the consent rules let the reader see it."""

from __future__ import annotations

import base64
import datetime as dt
import json

from coopgate.v1 import cases_pb2
from sqlalchemy import and_, or_, select

from gateway.audit.log import AuditRecord
from gateway.cases.reader import CaseReader
from gateway.cases.rows import INTERACTION_CATEGORY, _case_row
from gateway.consent.rules import ConsentRules, Flow
from gateway.core.caller import Caller
from gateway.core.errors import InvalidArgument
from gateway.crypto.pseudonyms import Pseudonyms
from gateway.store import Store
from gateway.store.schema import case_participants, cases, subject_links

MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 50


class CaseListing:
    """Cases a partner takes part in, and one customer's history across partners."""

    def __init__(
        self, store: Store, pseudonyms: Pseudonyms, rules: ConsentRules, reader: CaseReader
    ) -> None:
        self.store = store
        self.pseudonyms = pseudonyms
        self.rules = rules
        self.reader = reader

    async def list_cases(
        self, caller: Caller, request: cases_pb2.ListCasesRequest
    ) -> cases_pb2.ListCasesResponse:
        """Cases the caller takes part in. With a customer (subject or local id)
        and a purpose, the customer's history across partners: other partners'
        cases of this customer appear where the consent rules let the caller
        see that partner's interaction history, each decision audited."""
        if request.purpose:
            self.reader.check_purpose(request.purpose)
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
                subject_links.c.local_hash
                == self.store.local_ids.digest(caller.partner_id, request.customer_local_id),
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
                header = await self.reader.header(conn, caller, row)
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
                    header.summary = await self.reader.summary(conn, row)
                response.cases.append(header)
        # Durable before anything is served; recorded once the connection is returned
        # (the group commit needs one of the pool's connections itself).
        await self.rules.audit.record(records)
        if len(rows) > size:
            last = rows[size - 1]
            response.next_page_token = _encode_token(last.opened_at, last.case_id)
        return response


def _encode_token(opened_at: dt.datetime, case_id: str) -> str:
    raw = json.dumps([opened_at.isoformat(), case_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_token(token: str) -> tuple[dt.datetime, str]:
    try:
        opened_at, case_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return dt.datetime.fromisoformat(opened_at), str(case_id)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument.field("page.page_token", "is not a token from this listing") from exc
