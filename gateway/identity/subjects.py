"""Subjects: the internal id a customer has at the gateway, which partners' local
customer ids map to. A subject is created the first time a partner names a customer.

A partner's local id is never stored in clear: a link is found by the keyed hash of
(partner, local id) (`Store.local_ids`, under the identifier key every replica shares),
and the id is kept sealed under the subject's own key (`subject_keys`, wrapped under
the master key), for the notices that must name it. Erasure destroys that key."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, ScalarSelect, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core.errors import InvalidArgument
from gateway.crypto.sealing import Erased, Sealer, subject_key_name
from gateway.store import Store
from gateway.store.schema import subject_keys, subject_links, subjects
from gateway.store.statements import driver_statement, execute


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


#: The subject a partner's local id (its keyed hash) is linked to: built once.
_LINKED = select(subject_links.c.subject_id).where(
    subject_links.c.partner_id == bindparam("partner"),
    subject_links.c.local_hash == bindparam("local_hash"),
)


def _aad(subject_id: str, partner_id: str) -> str:
    return f"{subject_id}/{partner_id}/local-id"


class LocalIds:
    """Partners' own ids for their customers, as the store keeps them."""

    def __init__(self, store: Store, sealer: Sealer) -> None:
        self.store = store
        self.sealer = sealer

    def digest(self, partner_id: str, local_id: str) -> bytes:
        """The keyed hash a link is found by."""
        return self.store.local_ids.digest(partner_id, local_id)

    async def subject_for(self, conn: AsyncConnection, partner_id: str, local_id: str) -> str:
        """The internal subject a partner's local customer id maps to (created on first sight)."""
        local_hash = self.store.local_ids.digest(partner_id, local_id)
        existing = (
            await execute(conn, _LINKED, {"partner": partner_id, "local_hash": local_hash})
        ).scalar()
        if existing is not None:
            return str(existing)
        subject_id = await self.new_subject(conn)
        await self.link(conn, partner_id, local_id, subject_id, local_hash=local_hash)
        return subject_id

    async def linked_subject(
        self, conn: AsyncConnection, partner_id: str, local_id: str
    ) -> str | None:
        return await self.subject_by_hash(
            conn, partner_id, self.store.local_ids.digest(partner_id, local_id)
        )

    @staticmethod
    async def subject_by_hash(
        conn: AsyncConnection, partner_id: str, local_hash: bytes
    ) -> str | None:
        found = (
            await execute(conn, _LINKED, {"partner": partner_id, "local_hash": local_hash})
        ).scalar()
        return str(found) if found is not None else None

    async def new_subject(self, conn: AsyncConnection) -> str:
        """A new subject, with its own key."""
        subject_id = uuid.uuid4().hex
        await conn.execute(insert(subjects).values(subject_id=subject_id, created_at=_now()))
        await self.sealer.create_subject_key(conn, subject_id)
        return subject_id

    async def link(
        self,
        conn: AsyncConnection,
        partner_id: str,
        local_id: str,
        subject_id: str,
        *,
        local_hash: bytes | None = None,
    ) -> None:
        """Join the partner's local id to the subject: its hash (``local_hash`` when the
        caller computed it already), and the id sealed."""
        key = await self.sealer.subject_key(conn, subject_id)
        await conn.execute(
            insert(subject_links).values(
                partner_id=partner_id,
                local_hash=local_hash or self.store.local_ids.digest(partner_id, local_id),
                sealed_local_id=Sealer.seal(key, local_id.encode(), _aad(subject_id, partner_id)),
                subject_id=subject_id,
                linked_at=_now(),
            )
        )

    async def local_id(self, conn: AsyncConnection, partner_id: str, subject_id: str) -> str:
        """The partner's own id for this customer, if it has one (never another's)."""
        return await conn.run_sync(local_id_in, self.sealer, partner_id, subject_id)

    async def links(self, conn: AsyncConnection, subject_id: str) -> list[tuple[str, str]]:
        """(partner, its local id) for every partner that knows the customer."""
        key = await self.sealer.subject_key(conn, subject_id)
        rows = (
            await conn.execute(
                select(subject_links.c.partner_id, subject_links.c.sealed_local_id).where(
                    subject_links.c.subject_id == subject_id
                )
            )
        ).all()
        return [
            (str(partner), _open_with(key, subject_id, str(partner), sealed))
            for partner, sealed in rows
        ]

    async def move(
        self,
        conn: AsyncConnection,
        from_subject: str,
        to_subject: str,
        *,
        partner_id: str | None = None,
        local_id: str | None = None,
    ) -> None:
        """The links of ``from_subject`` (a merge), or only the partner's ``local_id``
        (an unlink, which dates the link anew), join ``to_subject``, their ids sealed
        again under its key."""
        old = await self.sealer.subject_key(conn, from_subject)
        new = await self.sealer.subject_key(conn, to_subject)
        query = select(
            subject_links.c.partner_id, subject_links.c.local_hash, subject_links.c.sealed_local_id
        ).where(subject_links.c.subject_id == from_subject)
        if partner_id is not None and local_id is not None:
            query = query.where(
                subject_links.c.partner_id == partner_id,
                subject_links.c.local_hash == self.store.local_ids.digest(partner_id, local_id),
            )
        for partner, local_hash, sealed in (await conn.execute(query)).all():
            clear = _open_with(old, from_subject, partner, sealed)
            values: dict[str, object] = {
                "subject_id": to_subject,
                "sealed_local_id": Sealer.seal(new, clear.encode(), _aad(to_subject, partner)),
            }
            if local_id is not None:
                values["linked_at"] = _now()
            await conn.execute(
                update(subject_links)
                .where(
                    subject_links.c.partner_id == partner, subject_links.c.local_hash == local_hash
                )
                .values(values)
            )


#: A partner's first link to a subject: its sealed id, and the subject's wrapped key.
_LOCAL_ID = (
    select(subject_links.c.sealed_local_id, subject_keys.c.wrapped_key)
    .join(subject_keys, subject_keys.c.subject_id == subject_links.c.subject_id)
    .where(
        subject_links.c.partner_id == bindparam("partner_id"),
        subject_links.c.subject_id == bindparam("subject_id"),
    )
    .order_by(subject_links.c.linked_at)
    .limit(1)
)


def local_id_in(conn: Connection, sealer: Sealer, partner_id: str, subject_id: str) -> str:
    """`LocalIds.local_id` on a synchronous connection: the partner's own id for the
    customer ("" if it has none, or once the customer is erased), never another's."""
    rows = driver_statement(_LOCAL_ID, conn.dialect).rows(
        conn, {"partner_id": partner_id, "subject_id": subject_id}
    )
    if not rows:
        return ""
    sealed, wrapped = rows[0]
    return open_local_id(sealer, subject_id, partner_id, wrapped, sealed)


def sealed_local_id_of(partner_id: Any, subject_id: Any) -> ScalarSelect[Any]:
    """The sealed id of a partner's first link to a subject, as a correlated scalar
    subquery (for a statement that reads each participant's along with a case)."""
    return (
        select(subject_links.c.sealed_local_id)
        .where(subject_links.c.partner_id == partner_id, subject_links.c.subject_id == subject_id)
        .order_by(subject_links.c.linked_at)
        .limit(1)
        .scalar_subquery()
    )


def open_local_id(
    sealer: Sealer, subject_id: str, partner_id: str, wrapped: bytes | None, sealed: bytes | None
) -> str:
    """A partner's sealed id for the customer, opened with the subject's wrapped key;
    "" when there is none or the key is destroyed (erasure)."""
    if sealed is None:
        return ""
    key = sealer.unwrap(subject_key_name(subject_id), wrapped)
    return _open_with(key, subject_id, partner_id, sealed)


def _open_with(key: AESGCM | None, subject_id: str, partner_id: str, sealed: bytes) -> str:
    """The sealed local id; "" once the subject's key is destroyed."""
    try:
        return Sealer.open(key, bytes(sealed), _aad(subject_id, partner_id)).decode()
    except Erased:
        return ""


def require_local_id(local_id: str) -> None:
    if not local_id or len(local_id) > 200:
        raise InvalidArgument.field("customer_local_id", "1-200 characters")
