"""`statements.execute`: the hot statements' fast path answers exactly as SQLAlchemy's
own execution does (dates converted both ways, RETURNING, rowcount, errors), on every
backend (on SQLite it bypasses SQLAlchemy; elsewhere it is SQLAlchemy)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.store import Store
from gateway.store.schema import partners
from gateway.store.statements import execute

_BY_ID = select(partners).where(partners.c.partner_id == bindparam("pid"))
_RENAME = (
    update(partners)
    .where(partners.c.partner_id == bindparam("pid"))
    .values(display_name=bindparam("name"), created_at=bindparam("at"))
    .returning(partners.c.created_at, partners.c.display_name)
)
_ADD = insert(partners).values(
    partner_id=bindparam("pid"),
    display_name=bindparam("name"),
    kind=bindparam("kind"),
    created_at=bindparam("at"),
)
AT = dt.datetime(2026, 12, 2, 6, 30, 1, 250_000, tzinfo=dt.UTC)


async def test_rows_match_sqlalchemys(store: Store) -> None:
    async with store.write() as conn:
        added = await execute(conn, _ADD, {"pid": "st-a", "name": "A", "kind": 1, "at": AT})
        assert added.rowcount == 1
        ours = (await execute(conn, _BY_ID, {"pid": "st-a"})).one()
        theirs = (await conn.execute(_BY_ID, {"pid": "st-a"})).one()
        assert tuple(ours) == tuple(theirs)
        assert ours.created_at == AT
        assert isinstance(ours.created_at, dt.datetime)
        assert ours.display_name == "A"
        later = AT + dt.timedelta(hours=1)
        returned = await execute(conn, _RENAME, {"pid": "st-a", "name": "B", "at": later})
        assert tuple(returned.one()) == (later, "B")
        assert (await execute(conn, _BY_ID, {"pid": "st-none"})).first() is None
        assert (await execute(conn, _BY_ID, {"pid": "st-a"})).scalar() == "st-a"
    async with store.read() as conn:  # committed as SQLAlchemy would have written it
        stored = (await conn.execute(_BY_ID, {"pid": "st-a"})).one()
        assert (stored.display_name, stored.created_at) == ("B", later)


async def test_a_conflict_is_sqlalchemys_integrity_error(store: Store) -> None:
    row = {"pid": "st-c", "name": "C", "kind": 1, "at": AT}
    async with store.write() as conn:
        await execute(conn, _ADD, row)
    with pytest.raises(IntegrityError):
        async with store.write() as conn:
            await execute(conn, _ADD, row)
