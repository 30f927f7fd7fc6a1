"""A store found damaged at start is refused, never rebuilt: Coopgate cannot tell a
lost row from one that never existed, and a silently rebuilt store would serve the
loss as the truth. The operator restores from a backup."""

from __future__ import annotations

import sqlite3

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from gateway.store.engine import Store


class StoreDamaged(Exception):
    """The store is not what the gateway left: the message says what and what to do."""


async def check_sqlite_file(store: Store) -> None:
    """SQLite's own page-level check (``PRAGMA quick_check``): a truncated or
    overwritten file fails it, or fails to open at all."""
    if not store.is_sqlite:
        return
    where = store.engine.url.database or "the SQLite store"

    def quick_check(conn: Connection) -> list[str]:
        return [str(row[0]) for row in conn.exec_driver_sql("PRAGMA quick_check(5)")]

    try:
        found = await store.run_scan(quick_check)
    except (DBAPIError, sqlite3.DatabaseError) as exc:
        raise StoreDamaged(_refusal(where, str(getattr(exc, "orig", exc)))) from None
    if found != ["ok"]:
        raise StoreDamaged(_refusal(where, "; ".join(found)[:300]))


def _refusal(where: str, problem: str) -> str:
    return (
        f"the store {where} is damaged ({problem}): it is not rebuilt or repaired; restore "
        "it from a backup (the Temporal workflows and the partners' copies are not enough "
        "to make it again)"
    )
