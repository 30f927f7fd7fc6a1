"""The write transaction a task's writes share (`Store.one_write`), and its memo."""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

#: The `Store.one_write` open in this context: its store (as an object: this module is
#: below the engine), connection, task and memo.
ONE_WRITE: ContextVar[
    tuple[object, AsyncConnection, asyncio.Task[Any] | None, dict[Any, Any]] | None
] = ContextVar("coopgate_one_write", default=None)


def batch_memo(conn: AsyncConnection) -> dict[Any, Any] | None:
    """The memo of the `Store.one_write` batch that ``conn`` is the transaction of (in
    this task), else None: what its steps read again and again and nothing in it changes
    unless the batch itself does (the case and subject keys of `Sealer`, read once a
    batch instead of once a step). It lives as long as the batch's transaction. On
    PostgreSQL a key another replica destroys while the batch runs is used until the
    batch commits, as if the erasure had come just after it: what the batch sealed with
    it can no more be read than anything else sealed with it."""
    joined = ONE_WRITE.get()
    if joined is not None and joined[1] is conn and joined[2] is asyncio.current_task():
        return joined[3]
    return None
