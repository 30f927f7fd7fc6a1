"""Customer data at rest, sealed per case so that it can be erased.

Each case has its own AES-256-GCM key, stored wrapped under the gateway's
master key. Timeline items and the case summary are sealed with it (the case
id and sequence as associated data, so a blob cannot be moved). Erasing a
customer destroys the keys of their cases (crypto-shredding): the data stays
in place, unreadable, while the audit log — which holds references and hashes
only — stays complete and verifiable.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.batch import batch_memo
from gateway.store.schema import case_keys, cases, subject_keys
from gateway.store.statements import driver_statement, execute

NONCE = 12
ERASED_TEXT = "[erased at the customer's request]"


_NEW_KEY = insert(case_keys).values(case_id=bindparam("id"), wrapped_key=bindparam("wrapped"))
_NEW_SUBJECT_KEY = insert(subject_keys).values(
    subject_id=bindparam("id"), wrapped_key=bindparam("wrapped")
)
_KEY = select(case_keys.c.wrapped_key).where(case_keys.c.case_id == bindparam("case_id"))
_SUBJECT_KEY = select(subject_keys.c.wrapped_key).where(
    subject_keys.c.subject_id == bindparam("subject_id")
)


def subject_key_name(subject_id: str) -> str:
    """What a subject's key is wrapped for (the associated data), distinct from any case id."""
    return f"subject:{subject_id}"


class Missing:
    """Marks an argument not given (distinct from None, which means erased)."""


MISSING = Missing()


class Erased(Exception):
    """The case's key was destroyed: its data can no longer be read."""


#: The first byte of a work item kept sealed (`Sealer.seal_item`): under the subject's
#: key, or under the master key. A serialized `WorkItem` never starts with either (its
#: first byte is a field tag, and no field is numbered 0), so clear items stay readable.
ITEM_UNDER_SUBJECT_KEY = b"\x00"
ITEM_UNDER_MASTER_KEY = b"\x01"

#: The kinds of key a `Store.one_write` batch's memo keeps (`batch_memo`).
_CASE, _SUBJECT = "case-key", "subject-key"


def _remembered(memo: dict[Any, Any], name: tuple[str, str]) -> AESGCM | None:
    found: AESGCM | None = memo[name]
    return found


def _remember(
    memo: dict[Any, Any] | None, name: tuple[str, str], key: AESGCM | None
) -> AESGCM | None:
    """``key``, kept in the batch's memo when there is one (None too: erased)."""
    if memo is not None:
        memo[name] = key
    return key


#: Unwrapped case keys kept, by wrapped bytes (see `Sealer.unwrap`).
UNWRAPPED_CACHE = 4096


class Sealer:
    def __init__(self, master_key: bytes) -> None:
        self._master = AESGCM(master_key)
        self._unwrapped = functools.lru_cache(maxsize=UNWRAPPED_CACHE)(self._unwrap)

    async def create_key(self, conn: AsyncConnection, case_id: str) -> AESGCM:
        key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(NONCE)
        wrapped = nonce + self._master.encrypt(nonce, key, case_id.encode())
        await execute(conn, _NEW_KEY, {"id": case_id, "wrapped": wrapped})
        return AESGCM(key)

    async def create_subject_key(self, conn: AsyncConnection, subject_id: str) -> AESGCM:
        """A new subject's own key (it seals partners' local ids for the customer)."""
        key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(NONCE)
        wrapped = nonce + self._master.encrypt(nonce, key, subject_key_name(subject_id).encode())
        await execute(conn, _NEW_SUBJECT_KEY, {"id": subject_id, "wrapped": wrapped})
        return AESGCM(key)

    async def subject_key(self, conn: AsyncConnection, subject_id: str) -> AESGCM | None:
        """The subject's key, or None once erased (or for a subject that has none); read
        once in a `Store.one_write` batch (`batch_memo`)."""
        memo = batch_memo(conn)
        if memo is not None and (_SUBJECT, subject_id) in memo:
            return _remembered(memo, (_SUBJECT, subject_id))
        wrapped = (await execute(conn, _SUBJECT_KEY, {"subject_id": subject_id})).scalar()
        return _remember(
            memo, (_SUBJECT, subject_id), self.unwrap(subject_key_name(subject_id), wrapped)
        )

    @staticmethod
    async def destroy_subject_key(conn: AsyncConnection, subject_id: str) -> None:
        """Destroy the subject's key (erasure): what it sealed can no longer be read."""
        memo = batch_memo(conn)
        if memo is not None:
            memo.pop((_SUBJECT, subject_id), None)
        await conn.execute(
            update(subject_keys)
            .where(subject_keys.c.subject_id == subject_id, subject_keys.c.wrapped_key.is_not(None))
            .values(wrapped_key=None, destroyed_at=dt.datetime.now(dt.UTC))
        )

    async def key(self, conn: AsyncConnection, case_id: str) -> AESGCM | None:
        """The case's key, or None once erased; read once in a `Store.one_write` batch
        (`batch_memo`: a batch of the workflow's steps asked for it once a step)."""
        memo = batch_memo(conn)
        if memo is not None and (_CASE, case_id) in memo:
            return _remembered(memo, (_CASE, case_id))
        wrapped = (await execute(conn, _KEY, {"case_id": case_id})).scalar()
        return _remember(memo, (_CASE, case_id), self.unwrap(case_id, wrapped))

    def key_in(self, conn: Connection, case_id: str) -> AESGCM | None:
        """`key` on a synchronous connection."""
        rows = driver_statement(_KEY, conn.dialect).rows(conn, {"case_id": case_id})
        return self.unwrap(case_id, rows[0][0] if rows else None)

    def unwrap(self, case_id: str, wrapped: bytes | None) -> AESGCM | None:
        """The key stored wrapped as ``wrapped`` (None: erased). Every read still fetches
        the wrapped key from the store, so an erasure anywhere takes effect at once; what
        is kept is only the unwrapping of bytes already seen."""
        return None if wrapped is None else self._unwrapped(case_id, bytes(wrapped))

    def _unwrap(self, case_id: str, wrapped: bytes) -> AESGCM:
        raw = self._master.decrypt(wrapped[:NONCE], wrapped[NONCE:], case_id.encode())
        return AESGCM(raw)

    @staticmethod
    def seal(key: AESGCM | None, plaintext: bytes, aad: str) -> bytes:
        """Sealed bytes; with no key (an erased case) a throwaway one: unreadable."""
        key = key or AESGCM(AESGCM.generate_key(bit_length=256))
        nonce = os.urandom(NONCE)
        return nonce + key.encrypt(nonce, plaintext, aad.encode())

    @staticmethod
    def open(key: AESGCM | None, sealed: bytes, aad: str) -> bytes:
        if key is None:
            raise Erased(aad)
        try:
            return key.decrypt(sealed[:NONCE], sealed[NONCE:], aad.encode())
        except InvalidTag as exc:
            raise Erased(aad) from exc

    def seal_text(self, key: AESGCM | None, text: str, aad: str) -> str:
        return base64.b64encode(self.seal(key, text.encode(), aad)).decode()

    def open_text(self, key: AESGCM | None, sealed: str, aad: str) -> str:
        try:
            return self.open(key, base64.b64decode(sealed), aad).decode()
        except Erased:
            return ERASED_TEXT

    # -- work items that name a partner's own id for the customer -------------------

    async def seal_item(
        self, conn: AsyncConnection, work_id: str, item: bytes, subject_id: str | None
    ) -> bytes:
        """A work item as kept until delivered: sealed under the subject's key (erasure
        destroys it), or, for an erasure notice (``subject_id`` None: its subject's key is
        already destroyed), under the master key; acknowledging the notice empties it."""
        aad = f"work/{work_id}"
        if subject_id is None:
            nonce = os.urandom(NONCE)
            return ITEM_UNDER_MASTER_KEY + nonce + self._master.encrypt(nonce, item, aad.encode())
        key = await self.subject_key(conn, subject_id)
        return ITEM_UNDER_SUBJECT_KEY + self.seal(key, item, aad)

    async def open_item(
        self, conn: AsyncConnection, work_id: str, stored: bytes, subject_id: str | None
    ) -> bytes | None:
        """The serialized work item (``stored`` as `seal_item` made it, or clear); None
        when its subject's key was destroyed."""
        aad = f"work/{work_id}"
        kind, sealed = stored[:1], stored[1:]
        if kind == ITEM_UNDER_MASTER_KEY:
            return self._master.decrypt(sealed[:NONCE], sealed[NONCE:], aad.encode())
        if kind == ITEM_UNDER_SUBJECT_KEY:
            key = await self.subject_key(conn, subject_id) if subject_id else None
            try:
                return self.open(key, sealed, aad)
            except Erased:
                return None
        return stored

    async def erase(self, conn: AsyncConnection, subject_id: str) -> list[str]:
        """Destroy the keys of every case of this subject; returns those cases."""
        case_ids = list(
            (
                await conn.execute(select(cases.c.case_id).where(cases.c.subject_id == subject_id))
            ).scalars()
        )
        await self.destroy(conn, case_ids)
        return case_ids

    @staticmethod
    async def destroy(conn: AsyncConnection, case_ids: list[str]) -> None:
        """Destroy these cases' keys (erasure, or the end of their retention period)."""
        memo = batch_memo(conn)
        if memo is not None:
            for case_id in case_ids:
                memo.pop((_CASE, case_id), None)
        if case_ids:
            await conn.execute(
                update(case_keys)
                .where(case_keys.c.case_id.in_(case_ids), case_keys.c.wrapped_key.is_not(None))
                .values(wrapped_key=None, destroyed_at=dt.datetime.now(dt.UTC))
            )
