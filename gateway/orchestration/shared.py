"""What the incident activities share: the clock and case notices to partners (the
partner's own id for a customer is `Cases.local_ids.local_id`'s)."""

from __future__ import annotations

import datetime as dt

from coopgate.v1 import work_pb2
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.work.delivery import enqueue_all


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def ts(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


async def tell(conn: AsyncConnection, partners: set[str], notice: work_pb2.CaseNotice) -> None:
    """Queue one case notice to each partner, once (work id = notice id + partner), all
    of them with one insert."""
    items = []
    for partner in sorted(partners):
        item = work_pb2.WorkItem()
        item.case_notice.CopyFrom(notice)
        items.append((f"{notice.notice_id}:{partner}", partner, item))
    await enqueue_all(conn, notice.case_id, items)
