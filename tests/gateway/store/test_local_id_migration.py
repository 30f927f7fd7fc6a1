"""Migration 0009 on SQLite and PostgreSQL: partners' local ids stored in clear before it
are hashed and sealed by it (with the keys of the data directory), found and opened by
the runtime afterwards, and back in clear after a downgrade."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import LargeBinary, String, Text, column, insert, select, table, text

from gateway.crypto.keyfiles import read_secret
from gateway.crypto.sealing import Sealer
from gateway.identity.subjects import LocalIds
from gateway.store import create_store, migrate
from gateway.store.localids import LocalIdIndex
from gateway.store.migrate import downgrade
from gateway.store.schema import identifier_hashes, match_proposals, subject_keys, subject_links

MARKER = "LOCALIDMIGRATIONMARKER"
NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


async def _old_rows(conn: object) -> None:
    """Rows as revision 0008 stored them: two partners' ids for one customer, one for
    another, an identifier hash and a match proposal."""
    run = conn.execute  # type: ignore[attr-defined]
    await run(
        text(
            "INSERT INTO partners (partner_id, display_name, kind, created_at) "
            "VALUES ('bank-a', 'Bank', 1, :t), ('telco-a', 'Telco', 1, :t)"
        ),
        {"t": NOW},
    )
    await run(
        text("INSERT INTO subjects (subject_id, created_at) VALUES ('s1', :t), ('s2', :t)"),
        {"t": NOW},
    )
    links = table(
        "subject_links",
        column("partner_id", String),
        column("local_id", String),
        column("subject_id", String),
        column("linked_at"),
    )
    await run(
        insert(links),
        [
            {
                "partner_id": "bank-a",
                "local_id": f"{MARKER}-1",
                "subject_id": "s1",
                "linked_at": NOW,
            },
            {
                "partner_id": "telco-a",
                "local_id": f"{MARKER}-2",
                "subject_id": "s1",
                "linked_at": NOW,
            },
            {
                "partner_id": "bank-a",
                "local_id": f"{MARKER}-3",
                "subject_id": "s2",
                "linked_at": NOW,
            },
        ],
    )
    hashes = table(
        "identifier_hashes",
        column("partner_id", String),
        column("local_id", String),
        column("kind"),
        column("digest", LargeBinary),
    )
    await run(
        insert(hashes).values(
            partner_id="telco-a", local_id=f"{MARKER}-2", kind=1, digest=b"\x01" * 32
        )
    )
    proposals = table(
        "match_proposals",
        column("match_id", String),
        column("partner_id", String),
        column("local_id", String),
        column("subject_id", String),
        column("matched_on", Text),
        column("expires_at"),
    )
    await run(
        insert(proposals).values(
            match_id="m1",
            partner_id="bank-a",
            local_id=f"{MARKER}-3",
            subject_id="s1",
            matched_on="1",
            expires_at=NOW,
        )
    )


async def _clear_copies(conn: object) -> list[str]:
    """Every text or binary value of the three tables that holds the marker in clear."""
    found = []
    for t in (subject_links, identifier_hashes, match_proposals, subject_keys):
        for row in (await conn.execute(select(t))).all():  # type: ignore[attr-defined]
            for value in row:
                raw = value if isinstance(value, bytes | memoryview) else str(value).encode()
                if MARKER.encode() in bytes(raw):
                    found.append(f"{t.name}: {row}")
    return found


async def test_0009_hashes_and_seals_existing_local_ids(database_url: str, tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    index = LocalIdIndex(read_secret(secrets / "identifier.key"))
    sealer = Sealer(read_secret(secrets / "master.key"))
    store = create_store(database_url)
    try:
        await migrate(store, "0008")
        async with store.write() as conn:
            await _old_rows(conn)
        with pytest.raises(RuntimeError, match="data directory"):
            await migrate(store)  # the keys are needed: refused, nothing changed
        await migrate(store, secrets_dir=secrets)
        store.local_ids = index
        local_ids = LocalIds(store, sealer)
        async with store.write() as conn:
            assert await _clear_copies(conn) == []
            assert await local_ids.linked_subject(conn, "bank-a", f"{MARKER}-1") == "s1"
            assert await local_ids.linked_subject(conn, "telco-a", f"{MARKER}-2") == "s1"
            assert await local_ids.subject_for(conn, "bank-a", f"{MARKER}-3") == "s2"
            assert await local_ids.linked_subject(conn, "telco-a", f"{MARKER}-1") is None
            assert await local_ids.local_id(conn, "bank-a", "s1") == f"{MARKER}-1"
            assert sorted(await local_ids.links(conn, "s1")) == [
                ("bank-a", f"{MARKER}-1"),
                ("telco-a", f"{MARKER}-2"),
            ]
            assert (await conn.execute(select(identifier_hashes.c.local_hash))).scalar() == (
                index.digest("telco-a", f"{MARKER}-2")
            )
            assert (await conn.execute(select(match_proposals.c.local_hash))).scalar() == (
                index.digest("bank-a", f"{MARKER}-3")
            )
            keyed = (await conn.execute(select(subject_keys.c.subject_id))).scalars().all()
            assert sorted(keyed) == ["s1", "s2"]
        await downgrade(store, "0008", secrets_dir=secrets)
        async with store.read() as conn:
            back = (
                await conn.execute(
                    text("SELECT partner_id, local_id, subject_id FROM subject_links")
                )
            ).all()
            assert sorted(tuple(r) for r in back) == [
                ("bank-a", f"{MARKER}-1", "s1"),
                ("bank-a", f"{MARKER}-3", "s2"),
                ("telco-a", f"{MARKER}-2", "s1"),
            ]
            assert (
                await conn.execute(text("SELECT local_id FROM identifier_hashes"))
            ).scalar() == f"{MARKER}-2"
            assert (
                await conn.execute(text("SELECT local_id FROM match_proposals"))
            ).scalar() == f"{MARKER}-3"
        await migrate(store, secrets_dir=secrets)  # and up again
    finally:
        await store.close()
