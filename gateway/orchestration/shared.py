"""What the incident activities share: the clock, case notices to partners, and
the partner's own id for a customer."""

from __future__ import annotations

import datetime as dt

from coopgate.v1 import work_pb2
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.schema import subject_links
from gateway.work.delivery import enqueue


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def ts(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


async def tell(conn: AsyncConnection, partners: set[str], notice: work_pb2.CaseNotice) -> None:
    """Queue one case notice to each partner, once (work id = notice id + partner)."""
    for partner in sorted(partners):
        item = work_pb2.WorkItem()
        item.case_notice.CopyFrom(notice)
        await enqueue(conn, f"{notice.notice_id}:{partner}", partner, item)


async def local_id(conn: AsyncConnection, partner_id: str, subject_id: str) -> str:
    """The partner's own id for this customer, if it has one (never another's)."""
    found = (
        await conn.execute(
            select(subject_links.c.local_id)
            .where(
                subject_links.c.partner_id == partner_id, subject_links.c.subject_id == subject_id
            )
            .order_by(subject_links.c.linked_at)
            .limit(1)
        )
    ).scalar()
    return str(found) if found is not None else ""
