"""Checking the gateway's audit log from the partner's side: the signed checkpoint
(a C2SP signed note, Ed25519), inclusion and consistency proofs (RFC 9162
sections 2.1.3.2 and 2.1.4.2). The console does not take the gateway's word: it
checks what it shows with a verifier key it pinned, independently of the gateway's
code (a partner never imports it)."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

_SIGNATURE_PREFIX = "\u2014 "


class ProofFailed(ValueError):
    """A checkpoint, signature or proof that does not hold; the message says which."""


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProofFailed(f"{what} is not base64") from None


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def leaf_hash(canonical: bytes) -> bytes:
    """The hash an audit entry's canonical bytes have as a leaf of the tree."""
    return hashlib.sha256(b"\x00" + canonical).digest()


@dataclass(slots=True, frozen=True)
class VerifierKey:
    """``name+keyid+base64(0x01 || Ed25519 public key)``, the gateway's published key."""

    name: str
    key_id: bytes
    public_key: bytes
    text: str

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        name, _, rest = text.partition("+")
        id_hex, _, material = rest.partition("+")
        raw = _b64(material, "the verifier key")
        if not name or len(id_hex) != 8 or len(raw) != 33 or raw[0] != 1:
            raise ProofFailed("the verifier key is not name+keyid+Ed25519 key")
        expected = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
        if expected.hex() != id_hex:
            raise ProofFailed("the verifier key's id does not match its name and key")
        return cls(name, expected, raw[1:], text)


@dataclass(slots=True, frozen=True)
class Checkpoint:
    """A verified checkpoint: the log named ``origin`` had ``size`` entries with ``root``."""

    origin: str
    size: int
    root: bytes
    signed_by: str


def open_checkpoint(note: str, key: VerifierKey) -> Checkpoint:
    """The checkpoint in ``note`` once ``key``'s signature on it verifies."""
    text, sep, signatures = note.rpartition("\n\n")
    if not sep or not signatures.endswith("\n"):
        raise ProofFailed("the checkpoint is not a signed note")
    body = text + "\n"
    verified = False
    for line in signatures[:-1].split("\n"):
        if not line.startswith(_SIGNATURE_PREFIX):
            raise ProofFailed("a signature line of the checkpoint is malformed")
        name, _, encoded = line[len(_SIGNATURE_PREFIX) :].partition(" ")
        raw = _b64(encoded, "a signature")
        if name != key.name or raw[:4] != key.key_id:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(key.public_key).verify(raw[4:], body.encode())
        except InvalidSignature:
            raise ProofFailed(f"the signature by {name} does not verify") from None
        verified = True
    if not verified:
        raise ProofFailed(f"the checkpoint carries no signature by {key.name}")
    lines = body[:-1].split("\n")
    if len(lines) < 3 or not lines[1].isdigit():
        raise ProofFailed("the checkpoint has no origin, size and root hash")
    root = _b64(lines[2], "the root hash")
    if len(root) != 32:
        raise ProofFailed("the root hash is not 32 bytes")
    return Checkpoint(lines[0], int(lines[1]), root, key.name)


def check_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Returns when ``proof`` takes leaf ``index`` of a tree of ``size`` to ``root``."""
    if not 0 <= index < size:
        raise ProofFailed(f"entry {index} is not in a tree of {size} entries")
    fn, sn, result = index, size - 1, leaf
    for sibling in proof:
        if sn == 0:
            raise ProofFailed("the inclusion proof is too long")
        if fn & 1 or fn == sn:
            result = _node(sibling, result)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            result = _node(result, sibling)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or result != root:
        raise ProofFailed(f"entry {index} is not in the tree of {size} entries with that root")


def check_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Returns when ``proof`` shows the tree of ``size1`` (``root1``) is the start of
    the tree of ``size2`` (``root2``): nothing logged before was changed or removed."""
    if not 0 < size1 <= size2:
        raise ProofFailed(f"sizes {size1} and {size2} cannot be compared")
    if size1 == size2:
        if proof or root1 != root2:
            raise ProofFailed(f"two checkpoints of {size1} entries with different roots")
        return
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    if not path:
        raise ProofFailed("the consistency proof is empty")
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    first = second = path[0]
    for sibling in path[1:]:
        if sn == 0:
            raise ProofFailed("the consistency proof is too long")
        if fn & 1 or fn == sn:
            first, second = _node(sibling, first), _node(sibling, second)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            second = _node(second, sibling)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or first != root1 or second != root2:
        raise ProofFailed(f"the log of {size2} entries does not extend the log of {size1}")
