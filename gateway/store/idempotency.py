"""Client-chosen idempotency keys for every mutating RPC.

The first call with a key runs and its response is stored, in the same
transaction as its effects. A retry with the same key and the same request
returns that stored response and changes nothing; the same key with a
different request is refused, naming the field.

Each stored response names what it concerns: the subject of the request's
``customer_local_id`` and the case of its (or the response's) ``case_id``. Erasure and
a case's retention expiry empty those responses (`erase_responses`); a retry then
answers FAILED_PRECONDITION CUSTOMER_ERASED, the same every time, revealing nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy import ColumnElement, bindparam, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core.caller import Caller
from gateway.core.errors import FailedPrecondition, InvalidArgument
from gateway.store import Store
from gateway.store.localids import LocalIdIndex
from gateway.store.schema import cases, idempotency_keys, subject_links
from gateway.store.statements import execute

R = TypeVar("R", bound=Message)

_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")

# Statements built once: every mutating call runs them.
_STORED = select(
    idempotency_keys.c.request_hash, idempotency_keys.c.response, idempotency_keys.c.erased_at
).where(
    idempotency_keys.c.partner_id == bindparam("partner"),
    idempotency_keys.c.method == bindparam("method"),
    idempotency_keys.c.idempotency_key == bindparam("key"),
)
_LINKED = select(subject_links.c.subject_id).where(
    subject_links.c.partner_id == bindparam("partner"),
    subject_links.c.local_hash == bindparam("local_hash"),
)
_CASE_SUBJECT = select(cases.c.subject_id).where(cases.c.case_id == bindparam("case"))
_REMEMBER = insert(idempotency_keys)


def request_fingerprint(request: Message) -> bytes:
    """SHA-256 of the request without its idempotency key (deterministic encoding)."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("idempotency_key")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).digest()


def validate_key(key: str) -> None:
    if not key:
        raise InvalidArgument.field("idempotency_key", "is required on every mutating call")
    if not _KEY.fullmatch(key):
        raise InvalidArgument.field(
            "idempotency_key", "must be 1-128 printable ASCII characters without spaces"
        )


async def _stored(
    conn: AsyncConnection, caller: Caller, method: str, key: str, fingerprint: bytes
) -> bytes | None:
    row = (
        await execute(conn, _STORED, {"partner": caller.partner_id, "method": method, "key": key})
    ).first()
    if row is None:
        return None
    if row.request_hash != fingerprint:
        raise InvalidArgument.field(
            "idempotency_key",
            "was already used for a different request; choose a new key",
            reason="IDEMPOTENCY_KEY_REUSED",
        )
    if row.erased_at is not None:
        raise FailedPrecondition(
            "the customer or case this call concerned was erased; its answer is gone",
            reason="CUSTOMER_ERASED",
        )
    return bytes(row.response)


def _case_of(message: Message) -> str:
    """The case a request or response names (``case_id``, or its header's), else ""."""
    fields = message.DESCRIPTOR.fields_by_name
    if "case_id" in fields:
        return str(getattr(message, "case_id"))  # noqa: B009 - checked just above
    if "header" in fields:
        return str(getattr(message, "header").case_id)  # noqa: B009 - checked just above
    return ""


async def _concerns(
    conn: AsyncConnection, index: LocalIdIndex, caller: Caller, request: Message, response: Message
) -> tuple[str | None, str | None]:
    """The subject and case a call concerned, for erasure to find its stored response.
    A call naming a customer by local id concerns that customer: when it also names a
    case (OpenCase names the case it opened), the case's subject, so the local id is
    hashed once per call (by the action); else the subject its keyed hash finds."""
    case_id = _case_of(request) or _case_of(response) or None
    subject_id = None
    if "customer_local_id" in request.DESCRIPTOR.fields_by_name:
        local_id = getattr(request, "customer_local_id")  # noqa: B009 - checked just above
        if local_id and case_id is not None:
            subject_id = (await execute(conn, _CASE_SUBJECT, {"case": case_id})).scalar()
        if local_id and subject_id is None:
            digest = index.digest(caller.partner_id, local_id)
            subject_id = (
                await execute(conn, _LINKED, {"partner": caller.partner_id, "local_hash": digest})
            ).scalar()
    return subject_id, case_id


async def erase_responses(
    conn: AsyncConnection, *, subject_id: str | None = None, case_ids: list[str] | None = None
) -> int:
    """Empty the stored responses of every call about this subject or these cases;
    returns how many. A retry of one of them answers CUSTOMER_ERASED."""
    reached: list[ColumnElement[bool]] = []
    if subject_id is not None:
        reached.append(idempotency_keys.c.subject_id == subject_id)
    if case_ids:
        reached.append(idempotency_keys.c.case_id.in_(case_ids))
    if not reached:
        return 0
    result = await conn.execute(
        update(idempotency_keys)
        .where(or_(*reached), idempotency_keys.c.erased_at.is_(None))
        .values(response=b"", erased_at=dt.datetime.now(dt.UTC))
    )
    return result.rowcount


async def _remember(
    conn: AsyncConnection,
    index: LocalIdIndex,
    caller: Caller,
    method: str,
    key: str,
    fingerprint: bytes,
    request: Message,
    response: Message,
) -> None:
    subject_id, case_id = await _concerns(conn, index, caller, request, response)
    await execute(
        conn,
        _REMEMBER,
        {
            "partner_id": caller.partner_id,
            "method": method,
            "idempotency_key": key,
            "request_hash": fingerprint,
            "response": response.SerializeToString(deterministic=True),
            "created_at": dt.datetime.now(dt.UTC),
            "subject_id": subject_id,
            "case_id": case_id,
        },
    )


async def run_once(
    store: Store,
    caller: Caller,
    method: str,
    request: Message,
    response_type: type[R],
    action: Callable[[AsyncConnection], Awaitable[R]],
) -> tuple[R, bool]:
    """Run ``action`` in a write transaction at most once per (partner, method, key).

    Returns the response and whether it is a replay of an earlier call.
    """
    key: str = getattr(request, "idempotency_key")  # noqa: B009 - every mutating request has one
    validate_key(key)
    fingerprint = request_fingerprint(request)
    conflict: IntegrityError | None = None
    for _attempt in range(2):
        try:
            async with store.write() as conn:
                stored = await _stored(conn, caller, method, key, fingerprint)
                if stored is not None:
                    return response_type.FromString(stored), True
                response = await action(conn)
                await _remember(
                    conn, store.local_ids, caller, method, key, fingerprint, request, response
                )
                return response, False
        except IntegrityError as exc:
            # Most likely a concurrent call with the same key won the race:
            # the next attempt replays its result.
            conflict = exc
    async with store.read() as conn:
        stored = await _stored(conn, caller, method, key, fingerprint)
    if stored is None:
        # Not a key race: the action itself violated a constraint.
        raise RuntimeError("write failed on a constraint") from conflict
    return response_type.FromString(stored), True


async def run_once_external(
    store: Store,
    caller: Caller,
    method: str,
    request: Message,
    response_type: type[R],
    effect: Callable[[], Awaitable[R]],
) -> R:
    """Like ``run_once`` for an effect outside the store (a workflow update) that
    is itself idempotent: a retry replays the stored response; a concurrent
    duplicate at worst repeats the harmless effect."""
    key: str = getattr(request, "idempotency_key")  # noqa: B009 - every mutating request has one
    validate_key(key)
    fingerprint = request_fingerprint(request)
    async with store.read() as conn:
        stored = await _stored(conn, caller, method, key, fingerprint)
    if stored is not None:
        return response_type.FromString(stored)
    response = await effect()
    try:
        async with store.write() as conn:
            if await _stored(conn, caller, method, key, fingerprint) is None:
                await _remember(
                    conn, store.local_ids, caller, method, key, fingerprint, request, response
                )
    except IntegrityError:
        pass  # a concurrent duplicate stored the same outcome first
    return response
