"""A store found damaged at start is refused with a clear message and left as it
was, never rebuilt: a truncated SQLite file, and an audit log that no longer hashes
to its last signed checkpoint (an entry edited, one deleted)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update
from temporalio.testing import WorkflowEnvironment

from gateway.settings import Settings
from gateway.stack import StackError, open_runtime
from gateway.store import create_store
from gateway.store.schema import audit_entries


def _settings(data_dir: Path, url: str) -> Settings:
    return Settings(data_dir=data_dir, database_url=url, checkpoint_interval_seconds=0)


async def _grown_log(settings: Settings, env: WorkflowEnvironment) -> int:
    """A seeded store whose log has a signed checkpoint; returns its size."""
    async with open_runtime(settings, client=env.client, seed=True) as runtime:
        published = await runtime.domain.audit.checkpointer.publish()
    return published.checkpoint.size


async def _start(settings: Settings, env: WorkflowEnvironment) -> str:
    with pytest.raises(StackError) as refused:
        async with open_runtime(settings, client=env.client):
            pass
    return str(refused.value)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_truncated_sqlite_file_is_refused_and_left_as_it_is(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    db = tmp_path / "coopgate.db"
    settings = _settings(tmp_path, f"sqlite:///{db}")
    await _grown_log(settings, temporal_env)
    with db.open("r+b") as fh:
        fh.truncate(os.path.getsize(db) // 2)
    before = _digest(db)
    message = await _start(settings, temporal_env)
    assert f"the store {db} is damaged" in message
    assert "restore it from a backup" in message
    assert "Traceback" not in message
    assert _digest(db) == before  # not rebuilt, not repaired


@pytest.mark.parametrize("damage", ["edited", "deleted"])
async def test_an_audit_log_that_no_longer_hashes_to_its_checkpoint_is_refused(
    temporal_env: WorkflowEnvironment, database_url: str, tmp_path: Path, damage: str
) -> None:
    settings = _settings(tmp_path, database_url)
    size = await _grown_log(settings, temporal_env)
    assert size > 4
    store = create_store(database_url)
    try:
        async with store.write() as conn:
            target = audit_entries.c.idx == 3
            if damage == "edited":
                canonical = (
                    await conn.execute(select(audit_entries.c.canonical).where(target))
                ).scalar_one()
                await conn.execute(
                    update(audit_entries)
                    .where(target)
                    .values(canonical=bytes(canonical).replace(b'"admin"', b'"case"'))
                )
            else:
                await conn.execute(delete(audit_entries).where(target))
    finally:
        await store.close()
    message = await _start(settings, temporal_env)
    assert f"no longer matches its last signed checkpoint (size {size}" in message
    expected = {"edited": "entry 3 no longer hashes as stored", "deleted": "entry 3 is missing"}
    assert expected[damage] in message
    assert "It is not rebuilt" in message


async def test_an_intact_store_starts_and_its_log_is_verified(
    temporal_env: WorkflowEnvironment, database_url: str, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, database_url)
    await _grown_log(settings, temporal_env)
    async with open_runtime(settings, client=temporal_env.client) as runtime:
        assert (await runtime.domain.audit.checkpointer.latest()) is not None
