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
from gateway.store.statements import MAX_EXPANDED, execute

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


_IN = (
    select(partners.c.partner_id, partners.c.created_at)
    .where(partners.c.partner_id.in_(bindparam("ids", expanding=True)))
    .order_by(partners.c.partner_id)
)
_RENAME_IN = (
    update(partners)
    .where(
        partners.c.partner_id.in_(bindparam("ids", expanding=True)),
        partners.c.kind == bindparam("of_kind"),
    )
    .values(display_name=bindparam("name"), created_at=bindparam("at"))
)


async def test_in_lists_of_every_length_match_sqlalchemys(store: Store) -> None:
    """An expanding ``IN`` list is compiled once per length: each length binds its own
    values (none, one, several, a length seen before with other values, and past
    `MAX_EXPANDED`, where SQLAlchemy runs it) and the other parameters after them."""
    ids = [f"st-in-{n:03}" for n in range(MAX_EXPANDED + 2)]
    async with store.write() as conn:
        # Many parameter sets: one executemany (its rowcount is the driver's, unlike
        # SQLAlchemy's -1 for an insert of many values, so no caller reads it).
        await execute(conn, _ADD, [{"pid": i, "name": "x", "kind": 1, "at": AT} for i in ids])
        for wanted in ([], ids[:1], ids[1:4], ids[5:8], ids[::-3][:4], ids):
            ours = (await execute(conn, _IN, {"ids": wanted})).all()
            theirs = (await conn.execute(_IN, {"ids": wanted})).all()
            assert [tuple(r) for r in ours] == [tuple(r) for r in theirs]
            assert [r.partner_id for r in ours] == sorted(wanted)
            assert all(r.created_at == AT for r in ours)
        later = AT + dt.timedelta(minutes=1)
        renamed = await execute(
            conn,
            _RENAME_IN,
            {"ids": [ids[2], ids[3], "st-none"], "of_kind": 1, "name": "y", "at": later},
        )
        assert renamed.rowcount == 2
        assert (
            await execute(conn, _RENAME_IN, {"ids": ids[2:4], "of_kind": 2, "name": "z", "at": AT})
        ).rowcount == 0
    async with store.read() as conn:
        stored = (await conn.execute(select(partners).where(partners.c.display_name == "y"))).all()
        assert sorted((r.partner_id, r.created_at) for r in stored) == [
            (ids[2], later),
            (ids[3], later),
        ]


_OF_KINDS = (
    select(partners.c.partner_id)
    .where(partners.c.kind.in_([1, 3]), partners.c.partner_id.in_(bindparam("ids", expanding=True)))
    .order_by(partners.c.partner_id)
)


async def test_an_in_list_given_in_the_statement_takes_its_own_values(store: Store) -> None:
    """``in_([...])`` with values in the statement is an expanding parameter too, with a
    default: it needs no value passed, beside one passed for another list."""
    rows = [{"pid": f"st-k{k}", "name": "k", "kind": k, "at": AT} for k in (1, 2, 3)]
    async with store.write() as conn:
        await execute(conn, _ADD, rows)
        params = {"ids": ["st-k1", "st-k2", "st-k3", "st-none"]}
        ours = list((await execute(conn, _OF_KINDS, params)).scalars())
        theirs = (await conn.execute(_OF_KINDS, params)).scalars().all()
        assert ours == theirs == ["st-k1", "st-k3"]
