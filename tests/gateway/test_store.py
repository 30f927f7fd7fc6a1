"""Migrations and store settings, on SQLite and on PostgreSQL."""

from __future__ import annotations

from sqlalchemy import inspect, text

from gateway.store import create_store, migrate
from gateway.store.migrate import current_revision, downgrade
from gateway.store.schema import metadata

EXPECTED_TABLES = set(metadata.tables)


async def _tables(url: str) -> set[str]:
    store = create_store(url)
    try:
        async with store.engine.connect() as conn:
            names = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await store.close()
    return names - {"alembic_version"}


async def test_migrations_create_the_schema_and_are_idempotent(database_url: str) -> None:
    store = create_store(database_url)
    try:
        assert await current_revision(store) is None
        await migrate(store)
        head = await current_revision(store)
        assert head is not None
        await migrate(store)  # a second run changes nothing
        assert await current_revision(store) == head
    finally:
        await store.close()
    assert await _tables(database_url) == EXPECTED_TABLES


async def test_migrations_downgrade_to_base_and_up_again(database_url: str) -> None:
    store = create_store(database_url)
    try:
        await migrate(store)
        await downgrade(store, "base")
        assert await current_revision(store) is None
        assert await _tables(database_url) == set()
        await migrate(store)
    finally:
        await store.close()
    assert await _tables(database_url) == EXPECTED_TABLES


async def test_the_migrated_schema_matches_the_table_definitions(database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    store = create_store(database_url)
    try:
        await migrate(store)
        async with store.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), metadata
                )
            )
    finally:
        await store.close()
    assert diff == []


async def test_sqlite_runs_with_foreign_keys_and_wal(tmp_path: object) -> None:
    store = create_store(f"sqlite+aiosqlite:///{tmp_path}/pragmas.db")
    try:
        async with store.read() as conn:
            fk = (await conn.execute(text("PRAGMA foreign_keys"))).scalar()
            journal = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
        assert (fk, journal) == (1, "wal")
        await migrate(store)
        async with store.write() as conn:
            # A case pointing at nothing is refused by the database itself.
            from sqlalchemy.exc import IntegrityError

            try:
                await conn.execute(
                    text(
                        "INSERT INTO subject_links (partner_id, local_id, subject_id, linked_at)"
                        " VALUES ('nobody', 'x', 'nothing', '2026-01-01')"
                    )
                )
            except IntegrityError:
                pass
            else:
                raise AssertionError("foreign keys are not enforced")
    finally:
        await store.close()
