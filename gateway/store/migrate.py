"""Run the Alembic migrations programmatically, on SQLite or PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

from gateway.store.engine import Store

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(
    connection: Connection | None = None,
    secrets_dir: Path | None = None,
    keys: Mapping[str, bytes] | None = None,
) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    # Where the gateway's secrets are (DATA_DIR/secrets), for migrations that convert
    # stored data with them (0009 hashes and seals partners' local ids).
    # or the keys themselves, by file name, as the runtime was given them (a replica
    # configured by settings has no secrets directory).
    cfg.attributes["secrets_dir"] = secrets_dir
    cfg.attributes["keys"] = dict(keys or {})
    return cfg


async def migrate(
    store: Store,
    revision: str = "head",
    *,
    secrets_dir: Path | None = None,
    keys: Mapping[str, bytes] | None = None,
) -> None:
    """Bring the schema to ``revision`` (idempotent). A migration that must convert
    stored rows with the gateway's secrets takes them from ``keys`` or reads them from
    ``secrets_dir``, and refuses to run without them when there are such rows."""
    async with store.engine.begin() as conn:
        await conn.run_sync(
            lambda sync: command.upgrade(alembic_config(sync, secrets_dir, keys), revision)
        )


async def downgrade(
    store: Store,
    revision: str,
    *,
    secrets_dir: Path | None = None,
    keys: Mapping[str, bytes] | None = None,
) -> None:
    async with store.engine.begin() as conn:
        await conn.run_sync(
            lambda sync: command.downgrade(alembic_config(sync, secrets_dir, keys), revision)
        )


async def current_revision(store: Store) -> str | None:
    from alembic.runtime.migration import MigrationContext

    async with store.engine.connect() as conn:
        return await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )
