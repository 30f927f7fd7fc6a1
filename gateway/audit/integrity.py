"""At start, the audit log must still be the log its last signed checkpoint describes:
every entry up to the checkpoint's size is read and hashed again (RFC 6962 leaf hashes)
and the tree's root compared with the signed one. An entry edited, deleted or added
in the store stops the start, naming the first entry that differs from the stored
tree, instead of being signed over by the next checkpoint."""

from __future__ import annotations

import base64

from sqlalchemy import Connection, select

from gateway.audit.checkpoints import Checkpointer, CheckpointRefused
from gateway.audit.merkle import leaf_hash, root_from_leaf_hashes
from gateway.store.engine import Store
from gateway.store.integrity import StoreDamaged
from gateway.store.schema import audit_entries, audit_nodes

#: Entries read per round trip.
_BATCH = 10_000


async def verify_log_at_start(store: Store, checkpointer: Checkpointer) -> int:
    """The size verified (0 when no checkpoint was signed yet); StoreDamaged otherwise."""
    try:
        latest = await checkpointer.latest()
    except CheckpointRefused as exc:
        raise StoreDamaged(f"the audit log's stored checkpoint is refused: {exc}") from None
    if latest is None:
        return 0
    size, signed = latest.checkpoint.size, latest.checkpoint.root_hash

    def rehash(conn: Connection) -> str:
        hashes: list[bytes] = []
        rows = conn.execution_options(yield_per=_BATCH).execute(
            select(audit_entries.c.idx, audit_entries.c.canonical)
            .where(audit_entries.c.idx < size)
            .order_by(audit_entries.c.idx)
        )
        for idx, canonical in rows:
            if idx != len(hashes):
                return f"entry {len(hashes)} is missing"
            hashes.append(leaf_hash(bytes(canonical)))
        if len(hashes) != size:
            return f"entries {len(hashes)} to {size - 1} are missing"
        if root_from_leaf_hashes(hashes) == signed:
            return ""
        stored: dict[int, bytes] = {
            int(idx): bytes(value)
            for idx, value in conn.execute(
                select(audit_nodes.c.idx, audit_nodes.c.hash).where(
                    audit_nodes.c.level == 0, audit_nodes.c.idx < size
                )
            )
        }
        first = next((i for i, h in enumerate(hashes) if stored.get(i) != h), None)
        where = f"entry {first} no longer hashes as stored" if first is not None else "its tree"
        return where

    problem = await store.run_scan(rehash)
    if problem:
        raise StoreDamaged(
            f"the audit log no longer matches its last signed checkpoint (size {size}, root "
            f"{base64.b64encode(signed).decode()}): {problem}. It is not rebuilt: restore "
            "the store from a backup, or investigate the tampering"
        )
    return size
