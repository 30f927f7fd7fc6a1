"""Subjects: the internal id a customer has at the gateway, which partners' local
customer ids map to. A subject is created the first time a partner names a customer."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core.errors import InvalidArgument
from gateway.store.schema import subject_links, subjects


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def subject_for(conn: AsyncConnection, partner_id: str, local_id: str) -> str:
    """The internal subject a partner's local customer id maps to (created on first sight)."""
    existing = (
        await conn.execute(
            select(subject_links.c.subject_id).where(
                subject_links.c.partner_id == partner_id, subject_links.c.local_id == local_id
            )
        )
    ).scalar()
    if existing is not None:
        return str(existing)
    subject_id = uuid.uuid4().hex
    now = _now()
    await conn.execute(insert(subjects).values(subject_id=subject_id, created_at=now))
    await conn.execute(
        insert(subject_links).values(
            partner_id=partner_id, local_id=local_id, subject_id=subject_id, linked_at=now
        )
    )
    return subject_id


def require_local_id(local_id: str) -> None:
    if not local_id or len(local_id) > 200:
        raise InvalidArgument.field("customer_local_id", "1-200 characters")


async def linked_subject(conn: AsyncConnection, partner_id: str, local_id: str) -> str | None:
    found = (
        await conn.execute(
            select(subject_links.c.subject_id).where(
                subject_links.c.partner_id == partner_id, subject_links.c.local_id == local_id
            )
        )
    ).scalar()
    return str(found) if found is not None else None
