"""The right to erasure: crypto-shred a customer's cases, delete every copy of their
data that is not sealed, forget every partner's link to them and tell every partner
that received their data (GDPR art. 17 and 19), in one audited transaction. The end of
a closed case's retention period (art. 5(1)(e)) shreds that case the same way.

What each table keeps, and what this does to it: docs/PRIVACY.md
(`gateway.store.privacy.INVENTORY`)."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Protocol

from coopgate.v1 import cases_pb2, identity_pb2, work_pb2
from sqlalchemy import Row, delete, func, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.log import AuditLog, AuditRecord
from gateway.core.caller import Caller
from gateway.core.errors import NotFound
from gateway.crypto.sealing import Sealer
from gateway.identity.subjects import LocalIds, require_local_id
from gateway.store import Store
from gateway.store.changes import WORK, announce
from gateway.store.idempotency import erase_responses, run_once
from gateway.store.schema import (
    case_keys,
    case_participants,
    case_resolutions,
    cases,
    consent_requests,
    consents,
    identifier_hashes,
    link_codes,
    match_proposals,
    subject_links,
    work_items,
)

log = logging.getLogger(__name__)

#: Work ids of erasure notices start so (`gateway.work.delivery` empties them on acknowledgement).
NOTICE_PREFIX = "erasure-"
#: Case ids per erasure notice at most (the contract's `ErasureNotice.case_ids`); more
#: go in several notices.
NOTICE_CASES = 1000
#: Cases shredded per transaction when their retention period ends.
RETENTION_BATCH = 100


class Workflows(Protocol):
    """The erased cases' workflows (`TemporalIncidents`, in orchestration)."""

    async def end_erased(self, case_ids: Sequence[str], reason: str) -> None: ...


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def shred_cases(conn: AsyncConnection, sealer: Sealer, case_ids: list[str]) -> None:
    """Everything of these cases that is not sealed goes; their keys are destroyed, so
    what is sealed (summary, timeline) can no longer be read by anyone."""
    if not case_ids:
        return
    await sealer.destroy(conn, case_ids)
    await conn.execute(delete(work_items).where(work_items.c.case_id.in_(case_ids)))
    await conn.execute(delete(case_resolutions).where(case_resolutions.c.case_id.in_(case_ids)))
    await conn.execute(delete(consent_requests).where(consent_requests.c.case_id.in_(case_ids)))
    await conn.execute(
        update(case_participants)
        .where(case_participants.c.case_id.in_(case_ids), case_participants.c.person_id != "")
        .values(person_id="")
    )
    await erase_responses(conn, case_ids=case_ids)


async def send_notices(
    conn: AsyncConnection,
    sealer: Sealer,
    subject: str,
    to_tell: Iterable[tuple[str, str, Sequence[str]]],
    reason: work_pb2.ErasureReason.ValueType,
) -> list[tuple[str, str, tuple[str, ...]]]:
    """An `ErasureNotice` (GDPR art. 19) on the work stream of each (partner, its own
    local id for the customer or "", the erased cases it took part in), at most
    `NOTICE_CASES` case ids a notice; returns (partner, work id, case ids) for each.
    The notice names no case column, so shredding its cases leaves it in place; it is
    kept sealed under the master key (it names the partner's id for a customer whose
    subject key is destroyed) until acknowledged, which empties it."""
    now = _now()
    sent = []
    for partner_id, local_id, case_ids in sorted(to_tell):
        chunks = [
            tuple(case_ids[i : i + NOTICE_CASES]) for i in range(0, len(case_ids), NOTICE_CASES)
        ]
        for chunk in chunks or [()]:
            work_id = f"{NOTICE_PREFIX}{uuid.uuid4().hex}"
            item = work_pb2.WorkItem(
                work_id=work_id,
                erasure_notice=work_pb2.ErasureNotice(
                    notice_id=work_id, customer_local_id=local_id, case_ids=chunk, reason=reason
                ),
            )
            item.created_at.FromDatetime(now)
            item.erasure_notice.erased_at.FromDatetime(now)
            await conn.execute(
                insert(work_items).values(
                    work_id=work_id,
                    partner_id=partner_id,
                    created_at=now,
                    item=await sealer.seal_item(
                        conn, work_id, item.SerializeToString(deterministic=True), None
                    ),
                    deliveries=0,
                    subject_id=subject,
                )
            )
            announce(conn, WORK, partner_id)
            sent.append((partner_id, work_id, chunk))
    return sent


def notified(
    actor_partner_id: str,
    actor_person_id: str,
    subject: str,
    notices: Iterable[tuple[str, str, tuple[str, ...]]],
) -> list[AuditRecord]:
    """The log's record of each notice sent (`send_notices`)."""
    return [
        AuditRecord(
            kind="erasure",
            action="subject.erasure_notified",
            actor_partner_id=actor_partner_id,
            actor_person_id=actor_person_id,
            subject_id=subject,
            source_partner_id=partner_id,
            reason="recipient told of the erasure (GDPR art. 19)",
            details=(("cases", ",".join(case_ids)), ("notice", work_id)),
        )
        for partner_id, work_id, case_ids in notices
    ]


class Erasure:
    def __init__(
        self, store: Store, audit: AuditLog, sealer: Sealer, workflows: Workflows | None = None
    ) -> None:
        self.sealer = sealer
        self.store = store
        self.audit = audit
        self.local_ids = LocalIds(store, sealer)
        #: Told of the erased cases once an erasure is committed, so their workflows end.
        self.workflows = workflows

    async def erase(
        self, caller: Caller, request: identity_pb2.EraseCustomerRequest
    ) -> identity_pb2.EraseCustomerResponse:
        """Crypto-shred the customer's cases and forget every partner's link to them."""
        require_local_id(request.customer_local_id)

        async def action(conn: AsyncConnection) -> identity_pb2.EraseCustomerResponse:
            subject = await self.local_ids.linked_subject(
                conn, caller.partner_id, request.customer_local_id
            )
            if subject is None:
                raise NotFound("no such customer of yours", reason="UNKNOWN_CUSTOMER")
            erased = await self.sealer.erase(conn, subject)
            links = await self.local_ids.links(conn, subject)
            notices = await self._notify(conn, subject, erased, links)
            await shred_cases(conn, self.sealer, erased)
            await erase_responses(conn, subject_id=subject)
            await self._forget(conn, subject, links)
            await self.audit.record_in(
                conn,
                [
                    AuditRecord(
                        kind="erasure",
                        action="subject.erased",
                        actor_partner_id=caller.partner_id,
                        actor_person_id=caller.person_id,
                        subject_id=subject,
                        reason="customer request (right to erasure)",
                        details=(
                            ("cases", ",".join(erased)),
                            ("links", str(len(links))),
                            ("notified", ",".join(sorted({p for p, _, _ in notices}))),
                        ),
                    ),
                    *notified(caller.partner_id, caller.person_id, subject, notices),
                ],
            )
            ended.extend(erased)
            return identity_pb2.EraseCustomerResponse(erased_cases=len(erased))

        ended: list[str] = []
        response, _ = await run_once(
            self.store, caller, "EraseCustomer", request, identity_pb2.EraseCustomerResponse, action
        )
        await self._truncate_wal()
        await self._end_workflows(ended, "customer-request")
        return response

    async def _end_workflows(self, case_ids: list[str], reason: str) -> None:
        if self.workflows is not None and case_ids:
            await self.workflows.end_erased(case_ids, reason)

    async def _notify(
        self,
        conn: AsyncConnection,
        subject: str,
        erased: list[str],
        links: list[tuple[str, str]],
    ) -> list[tuple[str, str, tuple[str, ...]]]:
        """An erasure notice on the work stream of every partner that knows the customer
        (naming its own local id) and of every other partner that took part in one of
        their cases, each naming the erased cases it took part in; returns (partner,
        work id, case ids) for each."""
        taken_part: defaultdict[str, list[str]] = defaultdict(list)
        if erased:
            for partner_id, case_id in (
                await conn.execute(
                    select(case_participants.c.partner_id, case_participants.c.case_id)
                    .where(case_participants.c.case_id.in_(erased))
                    .distinct()
                )
            ).all():
                taken_part[str(partner_id)].append(str(case_id))
        linked = {partner for partner, _ in links}
        to_tell = [(p, local_id, sorted(taken_part[p])) for p, local_id in links]
        to_tell += [(p, "", sorted(cases)) for p, cases in taken_part.items() if p not in linked]
        return await send_notices(
            conn, self.sealer, subject, to_tell, work_pb2.ERASURE_REASON_CUSTOMER_REQUEST
        )

    @staticmethod
    async def _forget(conn: AsyncConnection, subject: str, links: list[tuple[str, str]]) -> None:
        """Every partner's link to the customer, and their consents, go; the subject's
        key (which sealed the partners' local ids) is destroyed."""
        if links:
            linked = select(subject_links.c.partner_id, subject_links.c.local_hash).where(
                subject_links.c.subject_id == subject
            )
            await conn.execute(
                delete(identifier_hashes).where(
                    tuple_(identifier_hashes.c.partner_id, identifier_hashes.c.local_hash).in_(
                        linked
                    )
                )
            )
            await conn.execute(
                delete(match_proposals).where(
                    tuple_(match_proposals.c.partner_id, match_proposals.c.local_hash).in_(linked)
                )
            )
        await conn.execute(delete(consent_requests).where(consent_requests.c.subject_id == subject))
        # consent_events go with their consent (ON DELETE CASCADE).
        await conn.execute(delete(consents).where(consents.c.subject_id == subject))
        for table in (subject_links, link_codes, match_proposals):
            await conn.execute(delete(table).where(table.c.subject_id == subject))
        await Sealer.destroy_subject_key(conn, subject)

    async def next_expiry(self, retention: dt.timedelta) -> dt.datetime | None:
        """When the next closed case (not shredded yet) reaches the end of ``retention``."""
        async with self.store.read() as conn:
            closed: dt.datetime | None = (
                await conn.execute(
                    select(func.min(cases.c.updated_at))
                    .join(case_keys, case_keys.c.case_id == cases.c.case_id)
                    .where(
                        cases.c.status == cases_pb2.CASE_STATUS_CLOSED,
                        case_keys.c.wrapped_key.is_not(None),
                    )
                )
            ).scalar()
        return None if closed is None else closed + retention

    async def expire(self, retention: dt.timedelta, now: dt.datetime | None = None) -> int:
        """Shred every case closed for longer than ``retention`` before ``now`` (the
        retention workflow's time; the clock if not given) (storage limitation, art.
        5(1)(e)), audited like an erasure; returns how many."""
        cutoff = (now or _now()) - retention
        total = 0
        while True:
            async with self.store.write() as conn:
                rows = (
                    await conn.execute(
                        select(cases.c.case_id, cases.c.subject_id)
                        .join(case_keys, case_keys.c.case_id == cases.c.case_id)
                        .where(
                            cases.c.status == cases_pb2.CASE_STATUS_CLOSED,
                            cases.c.updated_at < cutoff,
                            case_keys.c.wrapped_key.is_not(None),
                        )
                        .order_by(cases.c.updated_at)
                        .limit(RETENTION_BATCH)
                    )
                ).all()
                if not rows:
                    break
                notices = await self._notify_expired(conn, rows)
                await shred_cases(conn, self.sealer, [r.case_id for r in rows])
                await self.audit.record_in(
                    conn,
                    [
                        AuditRecord(
                            kind="erasure",
                            action="case.retention_expired",
                            actor_partner_id="coopgate",
                            subject_id=row.subject_id,
                            case_id=row.case_id,
                            reason="retention period after closing ended (storage limitation)",
                            details=(("retention_s", str(int(retention.total_seconds()))),),
                        )
                        for row in rows
                    ]
                    + [
                        record
                        for subject, sent in notices.items()
                        for record in notified("coopgate", "", subject, sent)
                    ],
                )
            total += len(rows)
            await self._end_workflows([r.case_id for r in rows], "retention-expired")
        if total:
            await self._truncate_wal()
        return total

    async def _notify_expired(
        self, conn: AsyncConnection, rows: Sequence[Row[tuple[str, str]]]
    ) -> dict[str, list[tuple[str, str, tuple[str, ...]]]]:
        """An erasure notice (retention expiry) to every partner that took part in these
        cases, naming its cases of each customer; the notices sent, by subject."""
        subject_of = {str(row.case_id): str(row.subject_id) for row in rows}
        taken_part: defaultdict[tuple[str, str], list[str]] = defaultdict(list)
        for partner_id, case_id in (
            await conn.execute(
                select(case_participants.c.partner_id, case_participants.c.case_id)
                .where(case_participants.c.case_id.in_(sorted(subject_of)))
                .distinct()
            )
        ).all():
            taken_part[(subject_of[str(case_id)], str(partner_id))].append(str(case_id))
        sent: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {}
        for (subject, partner_id), case_ids in sorted(taken_part.items()):
            sent.setdefault(subject, []).extend(
                await send_notices(
                    conn,
                    self.sealer,
                    subject,
                    [(partner_id, "", sorted(case_ids))],
                    work_pb2.ERASURE_REASON_RETENTION_EXPIRED,
                )
            )
        return sent

    async def _truncate_wal(self) -> None:
        if not await self.store.truncate_wal():
            log.warning("readers kept the WAL from being truncated after an erasure")
