"""`MemoryTree` roots and proofs equal a naive reference written from the definitions of
RFC 6962 section 2.1 (MTH, PATH, PROOF, SUBPROOF), every generated proof verifies, and
tampering makes verification fail."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit import (
    EMPTY_ROOT,
    MemoryTree,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

MAX_SIZE = 300
examples = settings(max_examples=100, deadline=None)


def ref_k(n: int) -> int:
    """The largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(entries: Sequence[bytes]) -> bytes:
    n = len(entries)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + entries[0]).digest()
    k = ref_k(n)
    return hashlib.sha256(b"\x01" + ref_mth(entries[:k]) + ref_mth(entries[k:])).digest()


def ref_path(m: int, entries: Sequence[bytes]) -> list[bytes]:
    n = len(entries)
    if n <= 1:
        return []
    k = ref_k(n)
    if m < k:
        return [*ref_path(m, entries[:k]), ref_mth(entries[k:])]
    return [*ref_path(m - k, entries[k:]), ref_mth(entries[:k])]


def ref_subproof(m: int, entries: Sequence[bytes], whole: bool) -> list[bytes]:
    n = len(entries)
    if m == n:
        return [] if whole else [ref_mth(entries)]
    k = ref_k(n)
    if m <= k:
        return [*ref_subproof(m, entries[:k], whole), ref_mth(entries[k:])]
    return [*ref_subproof(m - k, entries[k:], False), ref_mth(entries[:k])]


def ref_proof(m: int, entries: Sequence[bytes]) -> list[bytes]:
    return ref_subproof(m, entries, True)


def path_shape(m: int, n: int) -> list[bool]:
    """Which side each PATH hash joins on; the verifier sees only this, not n itself."""
    if n <= 1:
        return []
    k = ref_k(n)
    if m < k:
        return [*path_shape(m, k), True]
    return [*path_shape(m - k, n - k), False]


def proof_shape(m: int, n: int, whole: bool = True) -> list[str]:
    """The SUBPROOF recursion's steps; sizes with equal steps share their proofs."""
    if m == n:
        return [] if whole else ["old subtree"]
    k = ref_k(n)
    if m <= k:
        return [*proof_shape(m, k, whole), "right"]
    return [*proof_shape(m - k, n - k, False), "left"]


def entries_of(seed: bytes, n: int) -> list[bytes]:
    return [seed + i.to_bytes(2, "big") for i in range(n)]


def tree_of(entries: Sequence[bytes]) -> MemoryTree:
    return MemoryTree(leaf_hash(entry) for entry in entries)


def flip(value: bytes, position: int, mask: int) -> bytes:
    position %= len(value)
    return value[:position] + bytes([value[position] ^ mask]) + value[position + 1 :]


@st.composite
def logs(draw: st.DrawFn) -> list[bytes]:
    return entries_of(draw(st.binary(max_size=8)), draw(st.integers(1, MAX_SIZE)))


@st.composite
def leaf_in_log(draw: st.DrawFn) -> tuple[list[bytes], int, int]:
    """A log, a tree size within it and a leaf index within that size."""
    entries = draw(logs())
    size = draw(st.integers(1, len(entries)))
    return entries, draw(st.integers(0, size - 1)), size


@st.composite
def two_sizes(draw: st.DrawFn) -> tuple[list[bytes], int, int]:
    entries = draw(logs())
    size2 = draw(st.integers(1, len(entries)))
    return entries, draw(st.integers(1, size2)), size2


def test_hashes_follow_rfc_6962() -> None:
    assert leaf_hash(b"entry") == hashlib.sha256(b"\x00entry").digest()
    assert node_hash(b"l", b"r") == hashlib.sha256(b"\x01lr").digest()
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert root(MemoryTree(), 0) == root_from_leaf_hashes([]) == EMPTY_ROOT


def test_small_trees_match_the_reference_exhaustively() -> None:
    entries = entries_of(b"small", 33)
    tree = tree_of(entries)
    for size in range(1, len(entries) + 1):
        prefix = entries[:size]
        assert root(tree, size) == ref_mth(prefix)
        for index in range(size):
            assert inclusion_proof(tree, index, size) == ref_path(index, prefix)
        for size1 in range(1, size + 1):
            assert consistency_proof(tree, size1, size) == ref_proof(size1, prefix)


def test_an_inclusion_proof_does_not_fix_the_tree_size() -> None:
    """Only a signed checkpoint binds a size to a root; the path of leaf 0 of 5 fits 6 too."""
    entries = entries_of(b"size", 6)
    proof = inclusion_proof(tree_of(entries), 0, 5)
    verify_inclusion(leaf_hash(entries[0]), 0, 6, proof, ref_mth(entries[:5]))
    with pytest.raises(ProofError):
        verify_inclusion(leaf_hash(entries[0]), 0, 4, proof, ref_mth(entries[:5]))


def test_memory_tree_keeps_every_complete_aligned_subtree() -> None:
    entries = entries_of(b"levels", 45)
    tree = tree_of(entries)
    for level in range(6):
        width = 1 << level
        for index in range(len(entries) // width):
            span = entries[index * width : (index + 1) * width]
            assert tree.subtree_hash(level, index) == ref_mth(span)
        with pytest.raises(LookupError):
            tree.subtree_hash(level, len(entries) // width)


@examples
@given(logs(), st.data())
def test_roots_match_the_reference(entries: list[bytes], data: st.DataObject) -> None:
    size = data.draw(st.integers(0, len(entries)))
    tree = tree_of(entries)
    expected = ref_mth(entries[:size])
    assert root(tree, size) == expected
    assert root_from_leaf_hashes([leaf_hash(e) for e in entries[:size]]) == expected


@examples
@given(leaf_in_log())
def test_inclusion_proofs_match_the_reference_and_verify(
    case: tuple[list[bytes], int, int],
) -> None:
    entries, index, size = case
    proof = inclusion_proof(tree_of(entries), index, size)
    assert proof == ref_path(index, entries[:size])
    verify_inclusion(leaf_hash(entries[index]), index, size, proof, ref_mth(entries[:size]))


@examples
@given(two_sizes())
def test_consistency_proofs_match_the_reference_and_verify(
    case: tuple[list[bytes], int, int],
) -> None:
    entries, size1, size2 = case
    proof = consistency_proof(tree_of(entries), size1, size2)
    assert proof == ref_proof(size1, entries[:size2])
    verify_consistency(size1, size2, proof, ref_mth(entries[:size1]), ref_mth(entries[:size2]))


@examples
@given(leaf_in_log(), st.data())
def test_flipping_any_byte_breaks_an_inclusion_proof(
    case: tuple[list[bytes], int, int], data: st.DataObject
) -> None:
    entries, index, size = case
    parts = [
        leaf_hash(entries[index]),
        *inclusion_proof(tree_of(entries), index, size),
        ref_mth(entries[:size]),
    ]
    target = data.draw(st.integers(0, len(parts) - 1))
    parts[target] = flip(
        parts[target], data.draw(st.integers(0, 31)), data.draw(st.integers(1, 255))
    )
    with pytest.raises(ProofError):
        verify_inclusion(parts[0], index, size, parts[1:-1], parts[-1])


@examples
@given(two_sizes(), st.data())
def test_flipping_any_byte_breaks_a_consistency_proof(
    case: tuple[list[bytes], int, int], data: st.DataObject
) -> None:
    entries, size1, size2 = case
    parts = [
        ref_mth(entries[:size1]),
        *consistency_proof(tree_of(entries), size1, size2),
        ref_mth(entries[:size2]),
    ]
    target = data.draw(st.integers(0, len(parts) - 1))
    parts[target] = flip(
        parts[target], data.draw(st.integers(0, 31)), data.draw(st.integers(1, 255))
    )
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, parts[1:-1], parts[0], parts[-1])


@examples
@given(leaf_in_log(), st.data())
def test_an_inclusion_proof_holds_for_no_other_index(
    case: tuple[list[bytes], int, int], data: st.DataObject
) -> None:
    entries, index, size = case
    proof = inclusion_proof(tree_of(entries), index, size)
    other = data.draw(st.integers(-1, size + 1).filter(lambda i: i != index))
    with pytest.raises(ProofError):
        verify_inclusion(leaf_hash(entries[index]), other, size, proof, ref_mth(entries[:size]))


@examples
@given(leaf_in_log(), st.data())
def test_an_inclusion_proof_holds_for_another_size_only_with_the_same_path_shape(
    case: tuple[list[bytes], int, int], data: st.DataObject
) -> None:
    """The proof for leaf 0 of 5 is also one for leaf 0 of 6: the verifier cannot tell
    sizes whose paths join on the same sides apart, and must tell all others apart."""
    entries, index, size = case
    proof = inclusion_proof(tree_of(entries), index, size)
    other = data.draw(st.integers(0, 2 * size + 2).filter(lambda n: n != size))
    same_shape = index < other and path_shape(index, other) == path_shape(index, size)
    try:
        verify_inclusion(leaf_hash(entries[index]), index, other, proof, ref_mth(entries[:size]))
    except ProofError:
        assert not same_shape
    else:
        assert same_shape


@examples
@given(two_sizes(), st.data())
def test_a_consistency_proof_holds_for_other_sizes_only_with_the_same_shape(
    case: tuple[list[bytes], int, int], data: st.DataObject
) -> None:
    entries, size1, size2 = case
    proof = consistency_proof(tree_of(entries), size1, size2)
    other1 = data.draw(st.integers(0, size2 + 2))
    other2 = data.draw(st.integers(0, 2 * size2 + 2))
    if (other1, other2) == (size1, size2):
        other2 += 1
    same_shape = 0 < other1 <= other2 and proof_shape(other1, other2) == proof_shape(size1, size2)
    try:
        verify_consistency(
            other1, other2, proof, ref_mth(entries[:size1]), ref_mth(entries[:size2])
        )
    except ProofError:
        assert not same_shape
    else:
        assert same_shape


def test_proof_generation_refuses_sizes_beyond_the_log() -> None:
    tree = tree_of(entries_of(b"bounds", 5))
    with pytest.raises(ValueError, match="not within"):
        inclusion_proof(tree, 5, 5)
    with pytest.raises(ValueError, match="not within"):
        inclusion_proof(tree, 0, 6)
    with pytest.raises(ValueError, match="no consistency proof"):
        consistency_proof(tree, 0, 5)
    with pytest.raises(ValueError, match="not within"):
        root(tree, 6)
    with pytest.raises(ValueError, match="32"):
        tree.append(b"short")
