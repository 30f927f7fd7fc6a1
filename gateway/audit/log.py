"""The audit log's storage: append-only entries and the stored Merkle subtree hashes.

An entry is canonical JSON holding references and hashes, never customer
data, so it outlives an erasure. Appending writes the leaf and every complete
subtree it closes (``audit_nodes``), so proofs read O(log n) stored hashes
instead of re-hashing the log. Appends either join the caller's transaction
(the action and its record commit together) or go through a group-commit
appender (many reads' access decisions in one durable transaction), and
either way are durable before the action is acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.merkle import leaf_hash, node_hash
from gateway.audit.store_tree import fetch_nodes, root_nodes
from gateway.store import Store
from gateway.store.schema import audit_entries, audit_head, audit_nodes

log = logging.getLogger(__name__)

ENTRY_VERSION = 1
_MAX_BATCH = 2000


@dataclass(slots=True, frozen=True)
class AuditRecord:
    """One auditable event. ``kind`` is one of: consent, access, ownership, admin, case, erasure."""

    kind: str
    actor_partner_id: str
    actor_person_id: str = ""
    subject_id: str = ""
    case_id: str = ""
    purpose: str = ""
    categories: tuple[str, ...] = ()
    source_partner_id: str = ""
    decision: str = ""  # "allow" | "deny" | "" (not an access decision)
    consent_id: str = ""
    agreement_id: str = ""
    reason: str = ""
    # What happened, e.g. "consent.given", "admin.define-service"; plus refs/hashes.
    action: str = ""
    details: tuple[tuple[str, str], ...] = field(default=())


_RECORD_FIELDS = fields(AuditRecord)


def canonical(record: AuditRecord, at: dt.datetime) -> bytes:
    """The bytes hashed into the leaf: sorted-key compact JSON, UTF-8."""
    # A flat copy: asdict's recursive deep copy was most of an append's Python time.
    body: dict[str, object] = {f.name: getattr(record, f.name) for f in _RECORD_FIELDS}
    body["categories"] = list(record.categories)
    body["details"] = dict(record.details)
    body["at"] = at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    body["v"] = ENTRY_VERSION
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


async def append(conn: AsyncConnection, records: Sequence[AuditRecord]) -> list[int]:
    """Append ``records`` inside the caller's write transaction; returns their indices."""
    if not records:
        return []
    # Moving the head first takes its row lock (SQLite writers are already serialized by
    # BEGIN IMMEDIATE): until commit no other writer can take these indices.
    moved = (
        update(audit_head)
        .where(audit_head.c.id == 1)
        .values(size=audit_head.c.size + len(records))
        .returning(audit_head.c.size)
    )
    size = int((await conn.execute(moved)).scalar_one()) - len(records)
    # The left siblings a new leaf may be merged with: the subtrees of the current root.
    known = await fetch_nodes(conn, root_nodes(size))
    now = dt.datetime.now(dt.UTC)
    entry_rows = []
    node_rows = []
    indices = []
    for record in records:
        index = size
        entry = canonical(record, now)
        node = leaf_hash(entry)
        known[(0, index)] = node
        node_rows.append({"level": 0, "idx": index, "hash": node})
        level, position = 0, index
        while position & 1:  # this leaf closes a complete subtree at the next level
            node = node_hash(known[(level, position - 1)], node)
            level, position = level + 1, position >> 1
            known[(level, position)] = node
            node_rows.append({"level": level, "idx": position, "hash": node})
        entry_rows.append(
            {
                "idx": index,
                "recorded_at": now,
                "kind": record.kind,
                "actor_partner_id": record.actor_partner_id,
                "subject_id": record.subject_id,
                "case_id": record.case_id,
                "purpose": record.purpose,
                "decision": record.decision,
                "canonical": entry,
            }
        )
        indices.append(index)
        size += 1
    await conn.execute(insert(audit_entries), entry_rows)
    await conn.execute(insert(audit_nodes), node_rows)
    return indices


class AuditLog:
    """The gateway's audit log. ``record`` returns once the records are durable."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: asyncio.Queue[tuple[Sequence[AuditRecord], asyncio.Future[list[int]]]] = (
            asyncio.Queue()
        )
        self._task: asyncio.Task[None] | None = None

    async def record_in(self, conn: AsyncConnection, records: Sequence[AuditRecord]) -> list[int]:
        """Record as part of the caller's transaction (committed with the action)."""
        return await append(conn, records)

    async def record(self, records: Sequence[AuditRecord]) -> list[int]:
        """Record in a group commit shared with concurrent callers; durable on return."""
        if not records:
            return []
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._appender(), name="audit-appender")
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        await self._queue.put((records, future))
        return await future

    async def _appender(self) -> None:
        while True:
            batch = [await self._queue.get()]
            count = len(batch[0][0])
            while not self._queue.empty() and count < _MAX_BATCH:
                item = self._queue.get_nowait()
                batch.append(item)
                count += len(item[0])
            try:
                async with self.store.write() as conn:
                    indices = await append(conn, [r for records, _ in batch for r in records])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            offset = 0
            for records, future in batch:
                if not future.done():
                    future.set_result(indices[offset : offset + len(records)])
                offset += len(records)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
