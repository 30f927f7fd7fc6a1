"""The stored tree on SQLite and PostgreSQL: proofs read from ``audit_nodes`` equal the
in-memory tree's, and concurrent appenders never put two leaves at one index."""

from __future__ import annotations

import asyncio
import random

import pytest
from sqlalchemy import select

from gateway.audit import (
    MemoryTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from gateway.audit.log import AuditLog, AuditRecord, append
from gateway.audit.store_tree import (
    LogTooShort,
    consistency_nodes,
    inclusion_nodes,
    load_tree,
    log_size,
    root_nodes,
)
from gateway.store import Store
from gateway.store.schema import audit_entries, audit_nodes


def record(n: int) -> AuditRecord:
    return AuditRecord(
        kind="access",
        action="read",
        actor_partner_id="bank-a",
        subject_id=f"{n:032x}",
        case_id=f"case-{n % 7}",
        purpose="incident-resolution",
        categories=("device.sim",),
        source_partner_id="telco-a",
        decision="allow" if n % 3 else "deny",
    )


async def stored_leaves(store: Store) -> tuple[list[int], list[bytes], dict[int, bytes]]:
    """Entry indices and the leaf hashes of their canonical bytes, in index order, and the
    stored level-0 nodes."""
    async with store.read() as conn:
        rows = (
            await conn.execute(
                select(audit_entries.c.idx, audit_entries.c.canonical).order_by(audit_entries.c.idx)
            )
        ).all()
        leaves = dict(
            (
                await conn.execute(
                    select(audit_nodes.c.idx, audit_nodes.c.hash).where(audit_nodes.c.level == 0)
                )
            )
            .tuples()
            .all()
        )
    return [r.idx for r in rows], [leaf_hash(r.canonical) for r in rows], leaves


async def test_stored_roots_and_proofs_equal_the_memory_trees(store: Store) -> None:
    rng = random.Random(5)
    n = 0
    for batch in (1, 2, 5, 1, 13, 8, 21, 3, 17):
        async with store.write() as conn:
            await append(conn, [record(n + i) for i in range(batch)])
        n += batch
    indices, leaves, stored = await stored_leaves(store)
    assert indices == list(range(n))
    assert [stored[i] for i in indices] == leaves
    memory = MemoryTree(leaves)

    async with store.read() as conn:
        assert await log_size(conn) == n
        for size in range(1, n + 1):
            tree = await load_tree(conn, size, root_nodes(size))
            assert root(tree, size) == root(memory, size) == root_from_leaf_hashes(leaves[:size])
        for _ in range(60):
            size = rng.randrange(1, n + 1)
            index = rng.randrange(size)
            tree = await load_tree(conn, size, inclusion_nodes(index, size))
            proof = inclusion_proof(tree, index, size)
            assert proof == inclusion_proof(memory, index, size)
            verify_inclusion(leaves[index], index, size, proof, root(memory, size))

            size1 = rng.randrange(1, size + 1)
            tree = await load_tree(conn, size, consistency_nodes(size1, size))
            proof = consistency_proof(tree, size1, size)
            assert proof == consistency_proof(memory, size1, size)
            verify_consistency(size1, size, proof, root(memory, size1), root(memory, size))


async def test_a_tree_larger_than_the_log_is_refused(store: Store) -> None:
    async with store.write() as conn:
        await append(conn, [record(i) for i in range(6)])
    async with store.read() as conn:
        await load_tree(conn, 6, root_nodes(6) | inclusion_nodes(5, 6))
        with pytest.raises(LogTooShort):
            await load_tree(conn, 7, root_nodes(7))
        with pytest.raises(LogTooShort):
            await load_tree(conn, 7, inclusion_nodes(2, 7))
        with pytest.raises(LogTooShort):
            await load_tree(conn, 9, consistency_nodes(6, 9))


async def test_concurrent_appenders_never_share_an_index(store: Store) -> None:
    """Group commits through `record` race single-record transactions through `record_in`."""
    log = AuditLog(store)

    async def own_transaction(n: int) -> list[int]:
        async with store.write() as conn:
            return await log.record_in(conn, [record(n), record(n + 1)])

    try:
        results = await asyncio.gather(
            *(log.record([record(n)] * (1 + n % 3)) for n in range(150)),
            *(own_transaction(10_000 + 2 * n) for n in range(30)),
        )
    finally:
        await log.close()
    returned = [index for indices in results for index in indices]
    expected = sum(1 + n % 3 for n in range(150)) + 2 * 30
    assert sorted(returned) == list(range(expected))
    for indices in results:  # one call's records sit next to each other, in order
        assert indices == list(range(indices[0], indices[0] + len(indices)))

    indices, leaves, stored = await stored_leaves(store)
    assert indices == list(range(expected))
    assert [stored[i] for i in indices] == leaves
    async with store.read() as conn:
        assert await log_size(conn) == expected
        tree = await load_tree(conn, expected, root_nodes(expected))
    assert root(tree, expected) == root_from_leaf_hashes(leaves)


async def test_appenders_of_two_replicas_and_a_rolled_back_append_keep_one_tree(
    store: Store,
) -> None:
    """Each `AuditLog` remembers the tree as of its last commit: a replica's appends in
    between, or an append that rolled back, must not make it merge a leaf with a stale
    or uncommitted sibling."""
    first, second = AuditLog(store), AuditLog(store)

    class Abandoned(Exception):
        pass

    try:
        await first.record([record(n) for n in range(3)])
        with pytest.raises(Abandoned):
            async with store.write() as conn:
                await first.record_in(conn, [record(100 + n) for n in range(5)])
                raise Abandoned
        await first.record([record(3)])
        await second.record([record(n) for n in range(4, 9)])
        await first.record([record(9), record(10)])
        await first.record([record(11)])
        with pytest.raises(UnicodeEncodeError):  # a batch that fails inside the append
            await first.record([AuditRecord(kind="access", actor_partner_id="x", reason="\ud800")])
        await second.record([record(12)])
        await first.record([record(13)])
    finally:
        await first.close()
        await second.close()
    # On PostgreSQL an appender that knows the tree tries it in one statement, which
    # writes nothing when the other replica moved the head: [9, 10] and [12] found it so.
    postgres = store.engine.dialect.name == "postgresql"
    assert (first.head_moved, second.head_moved) == ((1, 1) if postgres else (0, 0))

    indices, leaves, stored = await stored_leaves(store)
    assert indices == list(range(14))
    assert [stored[i] for i in indices] == leaves
    memory = MemoryTree(leaves)
    async with store.read() as conn:
        assert await log_size(conn) == 14
        for size in range(1, 15):
            tree = await load_tree(conn, size, root_nodes(size))
            assert root(tree, size) == root(memory, size)
