"""The stored Merkle tree: a `SubtreeHashes` over the ``audit_nodes`` table.

A root, proof or checkpoint needs O(log n) complete-subtree hashes; the range
helpers of `merkle` name them up front, so one query fetches them all and no
proof ever rehashes the log.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from contextlib import asynccontextmanager

from sqlalchemy import Connection, TextClause, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.merkle import consistency_ranges, inclusion_ranges, perfect_subtrees
from gateway.store import Store
from gateway.store.schema import audit_head
from gateway.store.statements import execute_in

Node = tuple[int, int]


class LogTooShort(LookupError):
    """The log holds fewer leaves than a root or proof was asked for."""

    def __init__(self, wanted: int) -> None:
        super().__init__(f"the log holds fewer than {wanted} leaves")
        self.wanted = wanted


class StoredTree:
    """The first `size` leaves of the stored log, as far as one read fetched them:
    `subtree_hash` answers only for the nodes that read asked for."""

    __slots__ = ("_nodes", "_size")

    def __init__(self, size: int, nodes: Mapping[Node, bytes]) -> None:
        self._size = size
        self._nodes = nodes

    @property
    def size(self) -> int:
        return self._size

    def subtree_hash(self, level: int, index: int) -> bytes:
        try:
            return self._nodes[(level, index)]
        except KeyError:
            raise LookupError(f"subtree ({level}, {index}) was not fetched") from None


def _covering(ranges: Iterable[tuple[int, int]]) -> set[Node]:
    return {node for start, end in ranges for node in perfect_subtrees(start, end)}


def root_nodes(size: int) -> set[Node]:
    """The stored subtrees the root of the first `size` leaves is made of."""
    return _covering([(0, size)]) if size else set()


def inclusion_nodes(index: int, size: int) -> set[Node]:
    """The leaf itself and the stored subtrees of its audit path in the tree of `size`."""
    return {(0, index)} | _covering(inclusion_ranges(index, size))


def consistency_nodes(size1: int, size2: int) -> set[Node]:
    """The stored subtrees of the consistency proof from `size1` to `size2` (none when equal)."""
    return set() if size1 == size2 else _covering(consistency_ranges(size1, size2))


@functools.lru_cache(maxsize=256)
def _nodes_query(count: int) -> TextClause:
    """Joins a VALUES list of (level, idx) to the primary key: one index probe per node on
    SQLite and PostgreSQL alike, and text SQL skips the per-shape compile an OR of IN
    lists costs (3-4 ms against 1 ms at a million leaves)."""
    rows = ", ".join(f"(CAST(:l{n} AS INTEGER), CAST(:i{n} AS BIGINT))" for n in range(count))
    return text(
        f"WITH wanted(level, idx) AS (VALUES {rows}) "
        "SELECT n.level, n.idx, n.hash FROM wanted "
        "JOIN audit_nodes n ON n.level = wanted.level AND n.idx = wanted.idx"
    )


def read_nodes(conn: Connection, wanted: Collection[Node]) -> dict[Node, bytes]:
    """`fetch_nodes` for code already running synchronously inside the connection."""
    if not wanted:
        return {}
    params: dict[str, int] = {}
    for n, (level, index) in enumerate(wanted):
        params[f"l{n}"] = level
        params[f"i{n}"] = index
    rows = execute_in(conn, _nodes_query(len(wanted)), params).all()
    return {(level, idx): bytes(hash_) for level, idx, hash_ in rows}


async def fetch_nodes(conn: AsyncConnection, wanted: Collection[Node]) -> dict[Node, bytes]:
    """The stored hashes of those of `wanted` that exist, in one query."""
    if not wanted:
        return {}
    return await conn.run_sync(read_nodes, wanted)


async def load_tree(conn: AsyncConnection, size: int, wanted: Collection[Node]) -> StoredTree:
    """A view of the first `size` leaves holding `wanted`; LogTooShort when some are not
    stored. An append writes a leaf and the subtrees it completes together, so when
    `wanted` reaches leaf size - 1 (every root and proof set does), all present means the
    log holds at least `size` leaves."""
    nodes = await fetch_nodes(conn, wanted)
    if len(nodes) != len(wanted):
        raise LogTooShort(size)
    return StoredTree(size, nodes)


async def log_size(conn: AsyncConnection) -> int:
    """The number of leaves committed to the log."""
    return int(
        (await conn.execute(select(audit_head.c.size).where(audit_head.c.id == 1))).scalar_one()
    )


@asynccontextmanager
async def statement_reads(store: Store) -> AsyncIterator[AsyncConnection]:
    """A connection for reads that each stand alone, such as a proof's one query: the
    store's read transaction, which on PostgreSQL runs in autocommit (a statement is its
    own snapshot, and BEGIN and ROLLBACK were two of a proof's four round trips)."""
    async with store.read() as conn:
        yield conn
