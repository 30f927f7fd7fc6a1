"""The entry format and how `append` stores it: canonical bytes equal the JSON definition
(so logs written before keep verifying), and rows written at the driver level read back
exactly as SQLAlchemy Core would have written them, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select

from gateway.audit import leaf_hash
from gateway.audit.log import AuditRecord, append, canonical
from gateway.store import Store, create_store, migrate
from gateway.store.schema import audit_entries, audit_nodes

AT = dt.datetime(2026, 11, 30, 10, 0, 0, tzinfo=dt.UTC)

RECORD = AuditRecord(
    kind="consent",
    actor_partner_id="bank-a",
    actor_person_id='advisor "Zoë" \\ 7',
    subject_id="00ff",
    case_id="case-1",
    purpose="incident-resolution",
    categories=("device.sim", "payment.card"),
    source_partner_id="telco-a",
    decision="allow",
    consent_id="cns-1",
    agreement_id="agr-1",
    reason="consent",
    action="consent.given",
    details=(("z", "1"), ("a", "\u2028\t€𝄞")),
)


def reference(record: AuditRecord, at: dt.datetime) -> bytes:
    """The entry format as defined since version 1: sorted-key compact JSON, UTF-8."""
    body: dict[str, Any] = {
        name: getattr(record, name) for name in AuditRecord.__dataclass_fields__
    }
    body["categories"] = list(record.categories)
    body["details"] = dict(record.details)
    body["at"] = at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    body["v"] = 1
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_an_entry_written_by_an_earlier_version_is_reproduced_byte_for_byte() -> None:
    """Bytes produced by the json.dumps implementation this format started with."""
    golden = (
        b'{"action":"consent.given","actor_partner_id":"bank-a",'
        b'"actor_person_id":"advisor \\"Zo\xc3\xab\\" \\\\ 7","agreement_id":"agr-1",'
        b'"at":"2026-11-30T10:00:00.000005Z","case_id":"case-1",'
        b'"categories":["device.sim","payment.card"],"consent_id":"cns-1","decision":"allow",'
        b'"details":{"a":"\xe2\x80\xa8\\t\xe2\x82\xac\xf0\x9d\x84\x9e","z":"1"},"kind":"consent",'
        b'"purpose":"incident-resolution","reason":"consent","source_partner_id":"telco-a",'
        b'"subject_id":"00ff","v":1}'
    )
    at = dt.datetime(2026, 11, 30, 11, 0, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert canonical(RECORD, at) == golden


texts = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)
records = st.builds(
    AuditRecord,
    kind=texts,
    actor_partner_id=texts,
    actor_person_id=texts,
    subject_id=texts,
    case_id=texts,
    purpose=texts,
    categories=st.lists(texts, max_size=3).map(tuple),
    source_partner_id=texts,
    decision=texts,
    consent_id=texts,
    agreement_id=texts,
    reason=texts,
    action=texts,
    details=st.lists(st.tuples(texts, texts), max_size=4).map(tuple),
)
instants = st.datetimes(
    min_value=dt.datetime(2000, 1, 1),
    max_value=dt.datetime(2100, 1, 1),
    timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-5, minutes=-30))]),
)


@settings(max_examples=300, deadline=None)
@given(record=records, at=instants)
def test_canonical_bytes_equal_the_json_definition(record: AuditRecord, at: dt.datetime) -> None:
    """Any text (quotes, control characters, line separators, astral planes), repeated
    detail keys, and any time zone or microsecond count."""
    assert canonical(record, at) == reference(record, at)


@pytest.mark.parametrize(
    "odd",
    [
        AuditRecord(kind="admin", actor_partner_id="p", details=(("count", 3),)),  # type: ignore[arg-type]
        AuditRecord(kind="admin", actor_partner_id="p", reason=None),  # type: ignore[arg-type]
        AuditRecord(kind="admin", actor_partner_id="p", categories=("a", 1)),  # type: ignore[arg-type]
        AuditRecord(kind="admin", actor_partner_id="p", details=(("a", 1.5), ("b", True))),  # type: ignore[arg-type]
    ],
)
def test_values_that_are_not_strings_are_encoded_as_json_encodes_them(odd: AuditRecord) -> None:
    assert canonical(odd, AT) == reference(odd, AT)


def test_a_lone_surrogate_is_refused_as_before() -> None:
    odd = AuditRecord(kind="admin", actor_partner_id="p", reason="\ud800")
    with pytest.raises(UnicodeEncodeError):
        reference(odd, AT)
    with pytest.raises(UnicodeEncodeError):
        canonical(odd, AT)


async def test_appended_rows_read_back_as_core_writes_them(store: Store) -> None:
    """`append` inserts on the driver, bypassing the column types: its stored timestamp must
    be the representation a Core insert of the same value stores (time-range queries
    compare them), and every column must read back as the record said."""
    async with store.write() as conn:
        [index] = await append(conn, [RECORD])
    async with store.read() as conn:
        row = (await conn.execute(select(audit_entries).where(audit_entries.c.idx == index))).one()
        leaf = (
            await conn.execute(
                select(audit_nodes.c.hash).where(audit_nodes.c.level == 0, audit_nodes.c.idx == 0)
            )
        ).scalar_one()
    assert row.recorded_at.tzinfo is not None
    assert abs(row.recorded_at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)
    assert row.canonical == canonical(RECORD, row.recorded_at)
    assert bytes(leaf) == leaf_hash(row.canonical)
    assert (row.kind, row.actor_partner_id, row.subject_id, row.case_id) == (
        "consent",
        "bank-a",
        "00ff",
        "case-1",
    )
    assert (row.purpose, row.decision) == ("incident-resolution", "allow")

    copy = 1 << 40  # a second row, written by Core with the same values
    async with store.write() as conn:
        await conn.execute(insert(audit_entries).values({**row._asdict(), "idx": copy}))
    async with store.read() as conn:
        raw = (
            await conn.exec_driver_sql(
                f"SELECT idx, recorded_at FROM audit_entries WHERE idx IN ({index}, {copy})"
                " ORDER BY idx"
            )
        ).all()
    assert raw[0].recorded_at == raw[1].recorded_at
    assert type(raw[0].recorded_at) is type(raw[1].recorded_at)


async def _audit_rows(store: Store) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    async with store.read() as conn:
        entries = (await conn.execute(select(audit_entries).order_by(audit_entries.c.idx))).all()
        nodes = (
            await conn.execute(select(audit_nodes).order_by(audit_nodes.c.level, audit_nodes.c.idx))
        ).all()
    return [tuple(r) for r in entries], [tuple(r) for r in nodes]


async def _sqlite_ddl(store: Store) -> dict[str, str]:
    async with store.read() as conn:
        rows = await conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE tbl_name IN ('audit_entries', 'audit_nodes')"
            " AND sql IS NOT NULL"
        )
        return {row.name: " ".join(row.sql.replace('"', "").split()) for row in rows}


async def test_the_layout_migration_keeps_the_log_in_both_directions(store: Store) -> None:
    """0006 rebuilds the SQLite tables (a no-op on PostgreSQL): every entry and subtree hash
    survives up and down, the log keeps growing afterwards, and on SQLite the tables are
    exactly what the table definitions create (entries on their rowid, nodes without one)."""
    from gateway.audit import root, root_from_leaf_hashes
    from gateway.audit.store_tree import load_tree, root_nodes
    from gateway.store.migrate import downgrade
    from gateway.store.schema import metadata

    await downgrade(store, "0005")
    async with store.write() as conn:
        await append(conn, [RECORD] * 11)
    before = await _audit_rows(store)
    await migrate(store)
    assert await _audit_rows(store) == before
    async with store.write() as conn:
        await append(conn, [RECORD] * 6)
    entries, _ = await _audit_rows(store)
    leaves = [leaf_hash(entry[-1]) for entry in entries]
    assert [entry[0] for entry in entries] == list(range(17))
    async with store.read() as conn:
        tree = await load_tree(conn, 17, root_nodes(17))
    assert root(tree, 17) == root_from_leaf_hashes(leaves)

    if store.is_sqlite:
        fresh = create_store("sqlite://")
        try:
            async with fresh.engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
            defined = await _sqlite_ddl(fresh)
        finally:
            await fresh.close()
        migrated = await _sqlite_ddl(store)
        assert migrated == defined
        assert "idx INTEGER NOT NULL" in migrated["audit_entries"]
        assert migrated["audit_nodes"].endswith("WITHOUT ROWID")

    after = await _audit_rows(store)
    await downgrade(store, "0005")
    assert await _audit_rows(store) == after


async def test_proof_reads_hold_no_transaction_on_postgresql(store: Store) -> None:
    """`statement_reads` (the store's reads): on PostgreSQL each statement commits on its
    own (no BEGIN and ROLLBACK round trips around a proof), and the connection goes
    back to the pool transactional again for writes; on SQLite reads are transactions."""
    from gateway.audit.store_tree import statement_reads

    async def in_transaction(conn: Any) -> bool:
        await conn.execute(select(audit_nodes.c.idx).limit(1))
        raw = (await conn.get_raw_connection()).driver_connection
        if store.is_sqlite:
            return bool(raw.in_transaction)
        return bool(raw.is_in_transaction())

    async with statement_reads(store) as conn:
        assert await in_transaction(conn) is store.is_sqlite
    for _ in range(3):  # whichever pooled connection comes back
        async with store.read() as conn:
            assert await in_transaction(conn) is store.is_sqlite
        async with store.write() as conn:
            assert await in_transaction(conn)


async def test_proof_reads_of_an_unreachable_store_are_unavailable() -> None:
    from gateway.audit.store_tree import statement_reads
    from gateway.core.errors import Unavailable

    store = create_store("postgresql+asyncpg://postgres@127.0.0.1:9/nothing")
    try:
        with pytest.raises(Unavailable):
            async with statement_reads(store) as conn:
                await conn.execute(select(audit_nodes.c.idx))
    finally:
        await store.close()


async def test_an_over_long_column_value_is_refused_or_kept_whole(store: Store) -> None:
    """PostgreSQL refuses a subject id longer than its column, as a Core insert would; it is
    never stored cut short (its indexed column would no longer match the entry)."""
    from sqlalchemy.exc import DBAPIError

    long = AuditRecord(kind="access", actor_partner_id="bank-a", subject_id="f" * 65)
    try:
        async with store.write() as conn:
            await append(conn, [RECORD, long])
    except DBAPIError:
        assert not store.is_sqlite  # SQLite does not enforce VARCHAR lengths
        entries, nodes = await _audit_rows(store)
        assert (entries, nodes) == ([], [])
        return
    async with store.read() as conn:
        stored = (
            await conn.execute(select(audit_entries.c.subject_id).where(audit_entries.c.idx == 1))
        ).scalar_one()
    assert stored == long.subject_id
