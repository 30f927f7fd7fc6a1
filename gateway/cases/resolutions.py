"""The owner's resolution of a case, kept sealed under the case key
(`case_resolutions`): the case workflow is sent its id, never its text (the workflow's
history is out of erasure's reach); the "resolved" notification opens it to tell the
customer."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.crypto.sealing import Erased, Sealer
from gateway.store.schema import case_resolutions


def _aad(case_id: str, resolution_id: str) -> str:
    return f"{case_id}/resolution/{resolution_id}"


async def store_resolution(
    conn: AsyncConnection,
    sealer: Sealer,
    case_id: str,
    resolution_id: str,
    partner_id: str,
    text: str,
) -> None:
    """Keep the owner's resolution sealed under the case key (once per id)."""
    exists = (
        await conn.execute(
            select(case_resolutions.c.resolution_id).where(
                case_resolutions.c.case_id == case_id,
                case_resolutions.c.resolution_id == resolution_id,
            )
        )
    ).first()
    if exists is not None:
        return
    key = await sealer.key(conn, case_id)
    await conn.execute(
        insert(case_resolutions).values(
            case_id=case_id,
            resolution_id=resolution_id,
            partner_id=partner_id,
            sealed_text=sealer.seal(key, text.encode(), _aad(case_id, resolution_id)),
            created_at=dt.datetime.now(dt.UTC),
        )
    )


async def open_resolution(
    conn: AsyncConnection, sealer: Sealer, case_id: str, resolution_id: str = ""
) -> str:
    """The stored resolution ``resolution_id`` of the case (its latest without one);
    "" when there is none or the case was erased."""
    query = select(case_resolutions.c.resolution_id, case_resolutions.c.sealed_text).where(
        case_resolutions.c.case_id == case_id
    )
    if resolution_id:
        query = query.where(case_resolutions.c.resolution_id == resolution_id)
    row = (await conn.execute(query.order_by(case_resolutions.c.created_at.desc()))).first()
    if row is None:
        return ""
    try:
        sealed = bytes(row.sealed_text)
        return sealer.open(
            await sealer.key(conn, case_id), sealed, _aad(case_id, row.resolution_id)
        ).decode()
    except Erased:
        return ""


async def forget_resolution(conn: AsyncConnection, case_id: str, resolution_id: str) -> None:
    """A resolution the workflow refused (not the owner's, or the case not owned yet)."""
    await conn.execute(
        delete(case_resolutions).where(
            case_resolutions.c.case_id == case_id,
            case_resolutions.c.resolution_id == resolution_id,
        )
    )
