"""Client-chosen idempotency keys for every mutating RPC.

The first call with a key runs and its response is stored, in the same
transaction as its effects. A retry with the same key and the same request
returns that stored response and changes nothing; the same key with a
different request is refused, naming the field.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core.caller import Caller
from gateway.core.errors import InvalidArgument
from gateway.store import Store
from gateway.store.schema import idempotency_keys

R = TypeVar("R", bound=Message)

_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")


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
        await conn.execute(
            select(idempotency_keys.c.request_hash, idempotency_keys.c.response).where(
                idempotency_keys.c.partner_id == caller.partner_id,
                idempotency_keys.c.method == method,
                idempotency_keys.c.idempotency_key == key,
            )
        )
    ).first()
    if row is None:
        return None
    if row.request_hash != fingerprint:
        raise InvalidArgument.field(
            "idempotency_key",
            "was already used for a different request; choose a new key",
            reason="IDEMPOTENCY_KEY_REUSED",
        )
    return bytes(row.response)


async def _remember(
    conn: AsyncConnection,
    caller: Caller,
    method: str,
    key: str,
    fingerprint: bytes,
    response: Message,
) -> None:
    await conn.execute(
        insert(idempotency_keys).values(
            partner_id=caller.partner_id,
            method=method,
            idempotency_key=key,
            request_hash=fingerprint,
            response=response.SerializeToString(deterministic=True),
            created_at=dt.datetime.now(dt.UTC),
        )
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
                await _remember(conn, caller, method, key, fingerprint, response)
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
                await _remember(conn, caller, method, key, fingerprint, response)
    except IntegrityError:
        pass  # a concurrent duplicate stored the same outcome first
    return response
