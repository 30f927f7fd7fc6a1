"""`statements.execute`: the hot statements' fast path answers exactly as SQLAlchemy's
own execution does (dates converted both ways, RETURNING, rowcount, errors), on every
backend: on SQLite (the inline driver) and PostgreSQL (asyncpg) it bypasses SQLAlchemy's
execution and runs on the transaction's own driver connection."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import (
    BigInteger,
    Connection,
    Float,
    Numeric,
    bindparam,
    cast,
    column,
    insert,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError

from gateway.core.errors import Unavailable
from gateway.store import Store, create_store, migrate
from gateway.store.schema import partners, subject_links
from gateway.store.statements import MAX_EXPANDED, Rows, driver_statement, execute, execute_in

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
    with pytest.raises(IntegrityError) as ours:
        async with store.write() as conn:
            await execute(conn, _ADD, row)
    with pytest.raises(IntegrityError) as theirs:
        async with store.write() as conn:
            await conn.execute(_ADD, row)
    _same_error(ours.value, theirs.value)


_LINK = insert(subject_links).values(
    partner_id=bindparam("pid"),
    local_hash=bindparam("hash"),
    sealed_local_id=bindparam("sealed"),
    subject_id=bindparam("sid"),
    linked_at=bindparam("at"),
)


async def test_a_missing_reference_is_sqlalchemys_integrity_error(store: Store) -> None:
    row = {"pid": "st-nobody", "hash": b"h", "sealed": b"s", "sid": "st-none", "at": AT}
    with pytest.raises(IntegrityError) as ours:
        async with store.write() as conn:
            await execute(conn, _LINK, row)
    with pytest.raises(IntegrityError) as theirs:
        async with store.write() as conn:
            await conn.execute(_LINK, row)
    _same_error(ours.value, theirs.value)


def _same_error(ours: DBAPIError, theirs: DBAPIError) -> None:
    """What callers and `store_errors` read of SQLAlchemy's error: its class, the
    driver's error under it (and on asyncpg that one's cause and SQLSTATE)."""
    assert type(ours) is type(theirs)
    assert type(ours.orig) is type(theirs.orig)
    assert ours.orig is not None
    assert theirs.orig is not None
    assert type(ours.orig.__cause__) is type(theirs.orig.__cause__)
    assert getattr(ours.orig, "sqlstate", None) == getattr(theirs.orig, "sqlstate", None)
    assert ours.connection_invalidated is theirs.connection_invalidated is False


async def test_the_driver_runs_them_in_the_callers_transaction(store: Store) -> None:
    """The driver's statements and SQLAlchemy's share one transaction: each sees the
    other's writes, and a rollback undoes both (on PostgreSQL the first statement, ours
    or SQLAlchemy's, begins it)."""
    row = {"pid": "st-t", "name": "T", "kind": 1, "at": AT}
    with pytest.raises(LookupError):
        async with store.write() as conn:
            added = await execute(conn, _ADD, row)
            assert isinstance(added, Rows)  # the driver's path, on every backend
            assert (await conn.execute(_BY_ID, {"pid": "st-t"})).one().display_name == "T"
            await conn.execute(_RENAME, {"pid": "st-t", "name": "U", "at": AT})
            assert (await execute(conn, _BY_ID, {"pid": "st-t"})).one().display_name == "U"
            raise LookupError
    async with store.read() as conn:
        assert (await execute(conn, _BY_ID, {"pid": "st-t"})).first() is None


_NUMBERS = select(
    cast(partners.c.kind, Numeric(10, 2)).label("exact"),
    type_coerce(cast(partners.c.kind, Numeric(10, 2)), Float).label("approx"),
).where(partners.c.partner_id == bindparam("pid"))


async def test_numbers_convert_as_sqlalchemys(store: Store) -> None:
    """A result's conversion can depend on the type the server sends (a NUMERIC read as
    a Float): converted as SQLAlchemy's cursor does."""
    async with store.write() as conn:
        await execute(conn, _ADD, {"pid": "st-n", "name": "N", "kind": 3, "at": AT})
        for _ in range(2):  # the conversions are found once, then kept
            ours = (await execute(conn, _NUMBERS, {"pid": "st-n"})).one()
            theirs = (await conn.execute(_NUMBERS, {"pid": "st-n"})).one()
            assert tuple(ours) == tuple(theirs)
            assert [type(v) for v in ours] == [type(v) for v in theirs]


def _sync_reads(conn: Connection, pid: str) -> tuple[object, ...]:
    ours = execute_in(conn, _BY_ID, {"pid": pid})
    assert isinstance(ours, Rows)
    raw = driver_statement(_BY_ID, conn.dialect).rows(conn, {"pid": pid})
    theirs = conn.execute(_BY_ID, {"pid": pid}).one()
    assert tuple(ours.one()) == tuple(theirs)
    assert len(raw) == 1
    assert raw[0][0] == pid
    return tuple(theirs)


def _sync_writes(conn: Connection, rows: list[dict[str, object]]) -> int:
    execute_in(conn, _ADD, rows)
    renamed = execute_in(
        conn, _RENAME_IN, {"ids": [r["pid"] for r in rows], "of_kind": 1, "name": "s", "at": AT}
    )
    return renamed.rowcount


async def test_synchronous_connections_take_the_driver_path_too(store: Store) -> None:
    """`execute_in` and `DriverStatement.rows` inside `run_write`/`run_read`."""
    rows = [{"pid": f"st-s{i}", "name": "S", "kind": 1, "at": AT} for i in range(3)]
    assert await store.run_write(_sync_writes, rows) == 3
    read = await store.run_read(_sync_reads, "st-s1")
    assert read[:2] == ("st-s1", "s")


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_lost_connection_is_unavailable_and_renewed(store: Store) -> None:
    """The server ending the transaction's connection: the driver's error is SQLAlchemy's
    (the connection invalidated), so the store says UNAVAILABLE and the next
    transaction gets a fresh connection."""
    assert not store.is_sqlite
    with pytest.raises(Unavailable) as caught:
        async with store.write() as conn:
            pid = (await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar()
            await store.fetch_alone("SELECT pg_terminate_backend($1)", [pid])
            await execute(conn, _BY_ID, {"pid": "st-a"})
    assert caught.value.reason == "STORE_UNAVAILABLE"
    cause = caught.value.__cause__
    assert isinstance(cause, DBAPIError)
    assert cause.connection_invalidated
    async with store.write() as conn:
        await execute(conn, _ADD, {"pid": "st-l", "name": "L", "kind": 1, "at": AT})
    async with store.read() as conn:
        assert (await execute(conn, _BY_ID, {"pid": "st-l"})).one().display_name == "L"


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


#: The transaction's id (assigned by asking): two statements of one transaction see one.
_XID = text("SELECT txid_current() AS xid").columns(column("xid", BigInteger))


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_postgresql_reads_run_in_autocommit_and_writes_in_one_transaction(
    database_url: str,
) -> None:
    """A read on PostgreSQL sends no BEGIN or COMMIT (each statement is a transaction of
    its own, as READ COMMITTED reads anyway); a write on the same connection afterwards
    is one transaction again, and its rollback still undoes it."""
    assert database_url.startswith("postgresql")
    store = create_store(database_url, pool_size=1)  # one connection, reads and writes
    await migrate(store)
    try:
        for _ in range(2):
            async with store.read() as conn:
                xids = {(await execute(conn, _XID, {})).scalar()}
                xids.add((await conn.execute(_XID)).scalar())
            assert len(xids) == 2
            assert len(await store.run_read(_sync_xids)) == 2
            with pytest.raises(LookupError):
                async with store.write() as conn:
                    await execute(conn, _ADD, {"pid": "st-w", "name": "W", "kind": 1, "at": AT})
                    xids = {(await execute(conn, _XID, {})).scalar()}
                    xids.add((await conn.execute(_XID)).scalar())
                    assert len(xids) == 1
                    raise LookupError
            assert len(await store.run_write(_sync_xids)) == 1
        async with store.read() as conn:
            assert (await execute(conn, _BY_ID, {"pid": "st-w"})).first() is None
    finally:
        await store.close()


def _sync_xids(conn: Connection) -> set[object]:
    return {execute_in(conn, _XID, {}).scalar() for _ in range(2)}
