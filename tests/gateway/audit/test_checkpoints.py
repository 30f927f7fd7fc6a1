"""The checkpointer signs what the stored tree says, hands back the stored note for a
size it already signed, and refuses to sign a log that does not extend its last
checkpoint (on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import hashlib
import stat
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from temporalio.testing import WorkflowEnvironment

from gateway.audit import (
    EMPTY_ROOT,
    Checkpoint,
    MemoryTree,
    Signer,
    consistency_proof,
    leaf_hash,
    open_note,
    root,
    verify_consistency,
)
from gateway.audit.checkpoints import Checkpointer, CheckpointRefused, load_signer
from gateway.audit.log import AuditRecord, append
from gateway.audit.store_tree import consistency_nodes, load_tree
from gateway.settings import Settings
from gateway.stack import open_runtime
from gateway.store import Store
from gateway.store.schema import audit_checkpoints, audit_entries, audit_head, audit_nodes

ORIGIN = "coopgate.test/audit/checkpoints"


async def add(store: Store, count: int) -> None:
    async with store.write() as conn:
        await append(
            conn,
            [AuditRecord(kind="admin", action="test", actor_partner_id="coopgate")] * count,
        )


async def memory_tree(store: Store) -> MemoryTree:
    async with store.read() as conn:
        canonical = (
            await conn.execute(select(audit_entries.c.canonical).order_by(audit_entries.c.idx))
        ).scalars()
        return MemoryTree(leaf_hash(c) for c in canonical)


async def stored_checkpoints(store: Store) -> int:
    async with store.read() as conn:
        return int(
            (await conn.execute(select(func.count()).select_from(audit_checkpoints))).scalar_one()
        )


async def test_signs_the_stored_root_and_each_size_once(store: Store) -> None:
    signer = Signer.generate(ORIGIN)
    checkpointer = Checkpointer(store, signer)
    empty = await checkpointer.publish()
    assert (empty.checkpoint.size, empty.checkpoint.root_hash) == (0, EMPTY_ROOT)

    await add(store, 5)
    first = await checkpointer.publish()
    body, names = open_note(first.note, [signer.verifier])
    assert names == (ORIGIN,)
    assert Checkpoint.parse(body) == first.checkpoint
    assert first.checkpoint == Checkpoint(ORIGIN, 5, root(await memory_tree(store), 5))
    assert await checkpointer.publish() == first
    assert await checkpointer.latest() == first

    await add(store, 9)
    second = await checkpointer.publish()
    assert second.checkpoint.size == 14
    assert second.checkpoint.root_hash == root(await memory_tree(store), 14)
    async with store.read() as conn:
        tree = await load_tree(conn, 14, consistency_nodes(5, 14))
    verify_consistency(
        5,
        14,
        consistency_proof(tree, 5, 14),
        first.checkpoint.root_hash,
        second.checkpoint.root_hash,
    )
    assert await stored_checkpoints(store) == 3


async def test_refuses_when_a_signed_part_of_the_tree_was_rewritten(store: Store) -> None:
    checkpointer = Checkpointer(store, Signer.generate(ORIGIN))
    await add(store, 5)
    signed = await checkpointer.publish()
    await add(store, 3)
    async with store.write() as conn:  # leaves 0..3, which the tree of 5 already commits to
        await conn.execute(
            update(audit_nodes)
            .where(audit_nodes.c.level == 2, audit_nodes.c.idx == 0)
            .values(hash=hashlib.sha256(b"forged").digest())
        )
    with pytest.raises(CheckpointRefused, match="does not extend the signed checkpoint of 5"):
        await checkpointer.publish()
    assert await checkpointer.latest() == signed
    assert await stored_checkpoints(store) == 1


async def test_refuses_when_entries_were_removed(store: Store) -> None:
    checkpointer = Checkpointer(store, Signer.generate(ORIGIN))
    await add(store, 4)
    await checkpointer.publish()
    async with store.write() as conn:
        await conn.execute(update(audit_head).values(size=2))
    with pytest.raises(CheckpointRefused, match="entries were removed"):
        await checkpointer.publish()
    assert await stored_checkpoints(store) == 1


async def test_refuses_to_continue_a_log_signed_by_another_key(store: Store) -> None:
    await add(store, 3)
    await Checkpointer(store, Signer.generate(ORIGIN)).publish()
    await add(store, 1)
    with pytest.raises(CheckpointRefused, match="not signed by this gateway's key"):
        await Checkpointer(store, Signer.generate(ORIGIN)).publish()
    assert await stored_checkpoints(store) == 1


def test_the_checkpoint_key_is_created_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "checkpoint.key"
    first = load_signer(path, ORIGIN)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    again = load_signer(path, ORIGIN)
    assert again.verifier == first.verifier
    assert again.verifier.to_key().startswith(f"{ORIGIN}+")


async def test_the_runtime_publishes_checkpoints_on_its_own(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'store.db'}",
        checkpoint_interval_seconds=0.05,
    )
    async with open_runtime(settings, client=temporal_env.client) as runtime:
        async with runtime.store.write() as conn:
            await runtime.audit.record_in(
                conn, [AuditRecord(kind="admin", action="test", actor_partner_id="coopgate")]
            )
        checkpointer = runtime.domain.audit.checkpointer
        async with asyncio.timeout(10):
            while (latest := await checkpointer.latest()) is None or latest.checkpoint.size < 1:
                await asyncio.sleep(0.05)
    key = load_signer(tmp_path / "secrets" / "checkpoint.key", "coopgate.dev/audit/localhost")
    body, _ = open_note(latest.note, [key.verifier])
    assert Checkpoint.parse(body).size == 1
