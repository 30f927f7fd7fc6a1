"""The cryptographic core of the tamper-evident audit log: an RFC 6962 Merkle tree
with inclusion and consistency proofs, and checkpoints signed as C2SP notes."""

from __future__ import annotations

from gateway.audit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MemoryTree,
    ProofError,
    SubtreeHashes,
    consistency_proof,
    consistency_ranges,
    inclusion_proof,
    inclusion_ranges,
    leaf_hash,
    node_hash,
    perfect_subtrees,
    range_hash,
    root,
    root_from_consistency_proof,
    root_from_inclusion_proof,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from gateway.audit.note import Checkpoint, NoteError, Signer, Verifier, key_id, open_note

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Checkpoint",
    "MemoryTree",
    "NoteError",
    "ProofError",
    "Signer",
    "SubtreeHashes",
    "Verifier",
    "consistency_proof",
    "consistency_ranges",
    "inclusion_proof",
    "inclusion_ranges",
    "key_id",
    "leaf_hash",
    "node_hash",
    "open_note",
    "perfect_subtrees",
    "range_hash",
    "root",
    "root_from_consistency_proof",
    "root_from_inclusion_proof",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]
