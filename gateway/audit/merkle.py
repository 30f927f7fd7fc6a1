"""The Merkle tree of RFC 6962 / RFC 9162: hashing, proofs and their verification.

Proofs are built from stored hashes of complete, aligned subtrees (`SubtreeHashes`),
so a proof costs O(log n) lookups and never rehashes the log.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof does not hold, or its inputs cannot describe a valid proof."""


def leaf_hash(entry: bytes) -> bytes:
    """SHA-256(0x00 || entry): the leaf prefix keeps leaves and nodes from colliding."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes with O(n) hashing: pairing each level left to right and
    lifting an unpaired last node unchanged builds exactly the RFC 6962 tree."""
    level = list(hashes)
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


class SubtreeHashes(Protocol):
    """Read access to a log's stored hashes of complete, aligned subtrees.

    `subtree_hash(level, index)` is the MTH of leaves [index * 2**level, (index + 1) * 2**level);
    it is asked only for subtrees that lie wholly within the first `size` leaves.
    """

    @property
    def size(self) -> int: ...

    def subtree_hash(self, level: int, index: int) -> bytes: ...


class MemoryTree:
    """An in-memory `SubtreeHashes`: level k holds the hash of every complete aligned
    subtree of 2**k leaves, the rows a store's table would hold."""

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for hash_ in leaf_hashes:
            self.append(hash_)

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def append(self, leaf_hash: bytes) -> int:
        """Adds a leaf hash and the subtrees it completes, O(log n); returns the leaf's index."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"leaf hash is {len(leaf_hash)} bytes, want {HASH_SIZE}")
        index = self.size
        self._levels[0].append(leaf_hash)
        level = 0
        while len(self._levels[level]) % 2 == 0:
            row = self._levels[level]
            if level + 1 == len(self._levels):
                self._levels.append([])
            self._levels[level + 1].append(node_hash(row[-2], row[-1]))
            level += 1
        return index

    def subtree_hash(self, level: int, index: int) -> bytes:
        if not (0 <= level < len(self._levels) and 0 <= index < len(self._levels[level])):
            raise LookupError(f"no complete subtree at level {level}, index {index}")
        return self._levels[level][index]


def _split(width: int) -> int:
    """The largest power of two smaller than width (width > 1): RFC 6962's k."""
    return 1 << ((width - 1).bit_length() - 1)


def perfect_subtrees(start: int, end: int) -> list[tuple[int, int]]:
    """The (level, index) of the complete subtrees that make up leaves [start, end),
    largest first; start must be a multiple of the smallest power of two >= end - start."""
    width = end - start
    if width <= 0 or start % (1 << (width - 1).bit_length()):
        raise ValueError(f"[{start}, {end}) is not a subtree of an RFC 6962 tree")
    found = []
    position = start
    for level in range(width.bit_length() - 1, -1, -1):
        if width >> level & 1:
            found.append((level, position >> level))
            position += 1 << level
    return found


def range_hash(tree: SubtreeHashes, start: int, end: int) -> bytes:
    """MTH of leaves [start, end) from at most log2(end - start) + 1 stored hashes."""
    hashes = [tree.subtree_hash(level, index) for level, index in perfect_subtrees(start, end)]
    result = hashes[-1]
    for hash_ in reversed(hashes[:-1]):
        result = node_hash(hash_, result)
    return result


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose MTHs form PATH(index, D[0:size]), in proof order.

    A store can fetch every `perfect_subtrees` of these in one query."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not within a tree of size {size}")
    ranges = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()
    return ranges


def consistency_ranges(size1: int, size2: int) -> list[tuple[int, int]]:
    """The leaf ranges whose MTHs form PROOF(size1, D[0:size2]), in proof order.

    `old_root_known` is SUBPROOF's b: the range reached is the whole old tree, whose root
    the verifier already holds, so it is left out of the proof."""
    if not 0 < size1 <= size2:
        raise ValueError(f"no consistency proof from size {size1} to size {size2}")
    ranges = []
    start, end = 0, size2
    old_root_known = True
    while end != size1:
        k = _split(end - start)
        if size1 - start <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
            old_root_known = False
    if not old_root_known:
        ranges.append((start, end))
    ranges.reverse()
    return ranges


def _check_tree_size(tree: SubtreeHashes, size: int) -> None:
    if not 0 <= size <= tree.size:
        raise ValueError(f"tree size {size} is not within the log's {tree.size} leaves")


def root(tree: SubtreeHashes, size: int) -> bytes:
    """The root hash of the log's first `size` leaves."""
    _check_tree_size(tree, size)
    return EMPTY_ROOT if size == 0 else range_hash(tree, 0, size)


def inclusion_proof(tree: SubtreeHashes, index: int, size: int) -> list[bytes]:
    """The audit path of leaf `index` in the tree of the first `size` leaves."""
    _check_tree_size(tree, size)
    return [range_hash(tree, start, end) for start, end in inclusion_ranges(index, size)]


def consistency_proof(tree: SubtreeHashes, size1: int, size2: int) -> list[bytes]:
    """The proof that the tree of size1 leaves is a prefix of the tree of size2 leaves."""
    _check_tree_size(tree, size2)
    return [range_hash(tree, start, end) for start, end in consistency_ranges(size1, size2)]


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _require_hash(what: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, want {HASH_SIZE}")


def _require_proof(proof: Sequence[bytes], want: int) -> None:
    if len(proof) != want:
        raise ProofError(f"proof length is {len(proof)}, want {want}")
    for position, hash_ in enumerate(proof):
        _require_hash(f"proof hash {position}", hash_)


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes:
    """The root that `proof` yields for leaf `index` of a tree of `size` leaves
    (RFC 9162 section 2.1.3.2); ProofError when the inputs cannot form such a proof."""
    if index < 0 or size < 0:
        raise ProofError(f"leaf index {index} and tree size {size} must not be negative")
    if index >= size:
        raise ProofError(f"leaf index {index} is not below tree size {size}")
    _require_hash("leaf hash", leaf_hash)
    _require_proof(proof, len(inclusion_ranges(index, size)))
    fn, sn, result = index, size - 1, leaf_hash
    for hash_ in proof:
        if fn & 1 or fn == sn:
            result = node_hash(hash_, result)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            result = node_hash(result, hash_)
        fn >>= 1
        sn >>= 1
    return result


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Returns when `proof` shows leaf `index` of the tree of `size` leaves with `root`
    is `leaf_hash`; raises ProofError otherwise."""
    calculated = root_from_inclusion_proof(leaf_hash, index, size, proof)
    _require_hash("root", root)
    if calculated != root:
        raise ProofError(
            f"inclusion proof for leaf {index} of {size} yields root {_b64(calculated)}, "
            f"not {_b64(root)}"
        )


def root_from_consistency_proof(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes
) -> bytes:
    """The root of the tree of size2 that `proof` yields once it has also rebuilt root1
    (RFC 9162 section 2.1.4.2). Requires 0 < size1 <= size2; equal sizes take an empty proof."""
    if size1 < 0 or size2 < 0:
        raise ProofError(f"tree sizes {size1} and {size2} must not be negative")
    if size1 > size2:
        raise ProofError(f"size1 {size1} is larger than size2 {size2}")
    if size1 == 0:
        raise ProofError("a consistency proof from the empty tree proves nothing")
    if size1 == size2:
        if proof:
            raise ProofError(f"sizes are equal but the proof length is {len(proof)}, want 0")
        return root1
    _require_hash("root1", root1)
    _require_proof(proof, len(consistency_ranges(size1, size2)))
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    first = second = path[0]
    for hash_ in path[1:]:
        if fn & 1 or fn == sn:
            first = node_hash(hash_, first)
            second = node_hash(hash_, second)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            second = node_hash(second, hash_)
        fn >>= 1
        sn >>= 1
    if first != root1:
        raise ProofError(
            f"consistency proof yields root {_b64(first)} for size {size1}, not {_b64(root1)}"
        )
    return second


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Returns when `proof` shows the tree of size1 with root1 is a prefix of the tree of
    size2 with root2; raises ProofError otherwise. Equal sizes need equal roots only."""
    calculated = root_from_consistency_proof(size1, size2, proof, root1)
    if size1 == size2:
        if root1 != root2:
            raise ProofError(f"sizes are equal ({size1}) but root1 and root2 differ")
        return
    _require_hash("root2", root2)
    if calculated != root2:
        raise ProofError(
            f"consistency proof yields root {_b64(calculated)} for size {size2}, not {_b64(root2)}"
        )
