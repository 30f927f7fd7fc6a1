"""Signed checkpoints: the gateway's commitments to the audit log's size and root.

The `Checkpointer` never signs two inconsistent checkpoints. Before it signs a
larger tree it proves, from the stored subtree hashes, that the tree of its
latest signed checkpoint is a prefix of it, and refuses otherwise; asked again
for a size it already signed, it hands back the stored note.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.merkle import (
    EMPTY_ROOT,
    ProofError,
    consistency_proof,
    root,
    verify_consistency,
)
from gateway.audit.note import Checkpoint, NoteError, Signer, Verifier, open_note
from gateway.audit.store_tree import (
    LogTooShort,
    consistency_nodes,
    load_tree,
    log_size,
    root_nodes,
)
from gateway.core.errors import FailedPrecondition
from gateway.crypto.keyfiles import read_secret
from gateway.store import Store
from gateway.store.schema import audit_checkpoints, audit_head

log = logging.getLogger(__name__)


class CheckpointRefused(FailedPrecondition):
    """The stored log no longer extends what the gateway already signed: signing now
    could publish two inconsistent views, so nothing is signed."""

    default_reason = "CHECKPOINT_REFUSED"


@dataclass(slots=True, frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    note: str


def load_signer(path: Path, origin: str) -> Signer:
    """The checkpoint key: an Ed25519 seed kept in `path` (created 0600 on first use),
    named after the log's origin as C2SP checkpoints are."""
    return Signer(origin, Ed25519PrivateKey.from_private_bytes(read_secret(path, 32)))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class Checkpointer:
    def __init__(self, store: Store, signer: Signer) -> None:
        self.store = store
        self._signer = signer

    @property
    def origin(self) -> str:
        return self._signer.name

    @property
    def verifier(self) -> Verifier:
        return self._signer.verifier

    async def latest(self) -> SignedCheckpoint | None:
        async with self.store.read() as conn:
            return await self._latest(conn)

    async def publish(self) -> SignedCheckpoint:
        """A checkpoint of the log as it is now: the stored one when the log has not grown
        since, else a new one. Raises CheckpointRefused rather than sign an inconsistent one."""
        async with self.store.read() as conn:
            size = await log_size(conn)
            latest = await self._latest(conn)
        if latest is not None and latest.checkpoint.size == size:
            return latest
        async with self.store.write() as conn:
            return await self._sign_head(conn)

    async def run(self, interval: float) -> None:
        """Publish every `interval` seconds until cancelled; failures are logged, not raised."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.publish()
            except Exception:
                log.exception("no audit checkpoint published")

    async def _sign_head(self, conn: AsyncConnection) -> SignedCheckpoint:
        head = select(audit_head.c.size).where(audit_head.c.id == 1)
        if conn.dialect.name != "sqlite":  # SQLite writers are already serialized
            # Appenders and other checkpointers wait: the head cannot move while it is proved.
            head = head.with_for_update()
        size = int((await conn.execute(head)).scalar_one())
        latest = await self._latest(conn)
        old_size, old_root = (0, EMPTY_ROOT)
        if latest is not None:
            old_size, old_root = latest.checkpoint.size, latest.checkpoint.root_hash
            if old_size == size:
                return latest
            if old_size > size:
                raise CheckpointRefused(
                    f"the audit log holds {size} entries but a checkpoint of {old_size} "
                    "was signed: entries were removed"
                )
        wanted = root_nodes(size) | (consistency_nodes(old_size, size) if old_size else set())
        try:
            tree = await load_tree(conn, size, wanted)
        except LogTooShort:
            raise CheckpointRefused(
                f"subtree hashes of the audit log's {size} entries are missing"
            ) from None
        new_root = root(tree, size)
        if old_size:
            try:
                proof = consistency_proof(tree, old_size, size)
                verify_consistency(old_size, size, proof, old_root, new_root)
            except ProofError as exc:
                raise CheckpointRefused(
                    f"the stored audit log of {size} entries does not extend the signed "
                    f"checkpoint of {old_size} (root {_b64(old_root)}): {exc}"
                ) from exc
        checkpoint = Checkpoint(self.origin, size, new_root)
        note = self._signer.sign(checkpoint.to_body())
        await conn.execute(
            insert(audit_checkpoints).values(
                size=size, root_hash=new_root, note=note, created_at=dt.datetime.now(dt.UTC)
            )
        )
        log.info("signed audit checkpoint %d %s", size, _b64(new_root))
        return SignedCheckpoint(checkpoint, note)

    async def _latest(self, conn: AsyncConnection) -> SignedCheckpoint | None:
        """The latest stored checkpoint, as this gateway's key signed it: its columns are
        not trusted, only the note's signed text."""
        row = (
            await conn.execute(
                select(audit_checkpoints.c.size, audit_checkpoints.c.note)
                .order_by(audit_checkpoints.c.size.desc())
                .limit(1)
            )
        ).first()
        if row is None:
            return None
        try:
            body, _ = open_note(row.note, [self.verifier])
            checkpoint = Checkpoint.parse(body)
        except NoteError as exc:
            raise CheckpointRefused(
                f"the latest stored audit checkpoint ({row.size}) is not signed by this "
                f"gateway's key {self.verifier.to_key()}: {exc}"
            ) from exc
        if checkpoint.origin != self.origin or checkpoint.size != row.size:
            raise CheckpointRefused(
                f"the stored audit checkpoint {row.size} signs {checkpoint.origin} "
                f"size {checkpoint.size}, not {self.origin} size {row.size}"
            )
        return SignedCheckpoint(checkpoint, row.note)
