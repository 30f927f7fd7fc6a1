"""Signed notes (c2sp.org/signed-note) with Ed25519 keys, and the checkpoints
(c2sp.org/tlog-checkpoint) in which the audit log commits to its size and root."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.audit.merkle import HASH_SIZE

ED25519 = 0x01
SIGNATURE_PREFIX = "\u2014 "
MAX_SIGNATURES = 64
MAX_TREE_SIZE = 2**64 - 1

_KEY_ID_HEX = re.compile(r"[0-9a-f]{8}")
_TREE_SIZE = re.compile(r"0|[1-9][0-9]*")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


class NoteError(ValueError):
    """A note, key or checkpoint is malformed, or a note is not signed by a known key."""


def key_id(name: str, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || 0x01 || public key)[:4], the spec's Ed25519 key id."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()[:4]


def _check_utf8(what: str, text: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise NoteError(f"{what} is not valid UTF-8") from None


def _check_key_name(name: str) -> None:
    if not name or any(char.isspace() or char == "+" or char < " " for char in name):
        raise NoteError(f"key name {name!r} must be non-empty, without spaces or '+'")
    _check_utf8("key name", name)


def _check_text(what: str, text: str) -> None:
    _check_utf8(what, text)
    if match := _CONTROL.search(text):
        raise NoteError(f"{what} contains control character U+{ord(match.group()):04X}")


def _decode_base64(what: str, text: str) -> bytes:
    """Standard base64 in its one canonical spelling, so a signed text has one reading."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise NoteError(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode() != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def _encode_base64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@dataclass(slots=True, frozen=True)
class Verifier:
    """A named Ed25519 public key that notes are checked against."""

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        _check_key_name(self.name)
        if len(self.public_key) != 32:
            raise NoteError(f"Ed25519 public key is {len(self.public_key)} bytes, want 32")

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key)

    @classmethod
    def from_key(cls, vkey: str) -> Verifier:
        """Parses `name+keyidhex+base64(0x01 || public key)`, checking the key id."""
        parts = vkey.split("+", 2)
        if len(parts) != 3:
            raise NoteError("verifier key must be name+keyid+key, three parts joined by '+'")
        name, id_hex, material = parts
        _check_key_name(name)
        if not _KEY_ID_HEX.fullmatch(id_hex):
            raise NoteError(f"verifier key id {id_hex!r} is not 8 lowercase hex digits")
        raw = _decode_base64("verifier key material", material)
        if not raw or raw[0] != ED25519:
            kind = f"{raw[0]:#04x}" if raw else "missing"
            raise NoteError(f"verifier key type is {kind}, only Ed25519 (0x01) is supported")
        verifier = cls(name, raw[1:])
        if verifier.key_id.hex() != id_hex:
            raise NoteError(f"verifier key id {id_hex} does not match its name and key")
        return verifier

    def to_key(self) -> str:
        """The verifier key string to hand to anyone who checks this key's notes."""
        material = _encode_base64(bytes([ED25519]) + self.public_key)
        return f"{self.name}+{self.key_id.hex()}+{material}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


class Signer:
    """A named Ed25519 private key that signs notes; `to_key()` is secret."""

    __slots__ = ("_private_key", "_verifier")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self._verifier = Verifier(name, private_key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls, name: str) -> Signer:
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_key(cls, skey: str) -> Signer:
        """Parses `PRIVATE+KEY+name+keyidhex+base64(0x01 || seed)`, checking the key id."""
        parts = skey.split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("signer key must be PRIVATE+KEY+name+keyid+key")
        name, id_hex, material = parts[2:]
        _check_key_name(name)
        if not _KEY_ID_HEX.fullmatch(id_hex):
            raise NoteError(f"signer key id {id_hex!r} is not 8 lowercase hex digits")
        raw = _decode_base64("signer key material", material)
        if len(raw) != 33 or raw[0] != ED25519:
            raise NoteError("signer key material must be 0x01 followed by a 32-byte seed")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.verifier.key_id.hex() != id_hex:
            raise NoteError(f"signer key id {id_hex} does not match its name and key")
        return signer

    @property
    def name(self) -> str:
        return self._verifier.name

    @property
    def verifier(self) -> Verifier:
        return self._verifier

    def to_key(self) -> str:
        """The signer key string; whoever holds it can sign as this key."""
        material = _encode_base64(bytes([ED25519]) + self._private_key.private_bytes_raw())
        return f"PRIVATE+KEY+{self.name}+{self._verifier.key_id.hex()}+{material}"

    def sign(self, body: str) -> str:
        """The signed note: `body`, a blank line and this key's signature line."""
        if not body.endswith("\n"):
            raise NoteError("note text must end with a newline")
        _check_text("note text", body)
        signature = self._private_key.sign(body.encode())
        encoded = _encode_base64(self._verifier.key_id + signature)
        return f"{body}\n{SIGNATURE_PREFIX}{self.name} {encoded}\n"

    def __repr__(self) -> str:
        return f"Signer(name={self.name!r})"


def _parse_signature_line(number: int, line: str) -> tuple[str, bytes, bytes]:
    if not line.startswith(SIGNATURE_PREFIX):
        raise NoteError(f"signature line {number} does not start with an em dash and a space")
    name, space, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
    if not space:
        raise NoteError(f"signature line {number} has no signature after the key name")
    _check_key_name(name)
    raw = _decode_base64(f"signature on line {number}", encoded)
    if len(raw) < 5:
        raise NoteError(f"signature on line {number} is shorter than a key id and a signature")
    return name, raw[:4], raw[4:]


def open_note(note: str | bytes, verifiers: Iterable[Verifier]) -> tuple[str, tuple[str, ...]]:
    """The note text and the names of the known keys whose signatures verify.

    Signatures by unknown keys are ignored; a failing signature by a known key, or no
    verified signature at all, rejects the whole note."""
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("note is not valid UTF-8") from None
    _check_text("note", note)
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line between its text and its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block:
        raise NoteError("note has no signatures")
    if not block.endswith("\n"):
        raise NoteError("note does not end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has {len(lines)} signatures, more than {MAX_SIGNATURES}")
    known: dict[tuple[str, bytes], Verifier] = {}
    for verifier in verifiers:
        other = known.setdefault((verifier.name, verifier.key_id), verifier)
        if other != verifier:
            raise NoteError(f"two verifier keys share name {verifier.name} and key id")
    verified: list[str] = []
    message = text.encode()
    for number, line in enumerate(lines, start=1):
        name, id_, signature = _parse_signature_line(number, line)
        key = known.get((name, id_))
        if key is None:
            continue
        if not key.verify(message, signature):
            raise NoteError(f"signature by {name}+{id_.hex()} does not verify")
        if name not in verified:
            verified.append(name)
    if not verified:
        raise NoteError("note has no signature by a known key")
    return text, tuple(verified)


@dataclass(slots=True, frozen=True)
class Checkpoint:
    """A log's commitment to its first `size` leaves: origin, size, root hash, extensions."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        lines = [("origin", self.origin), *(("extension", line) for line in self.extensions)]
        for what, line in lines:
            if not line or "\n" in line:
                raise NoteError(f"checkpoint {what} line must be non-empty and one line")
            _check_text(f"checkpoint {what}", line)
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise NoteError(f"checkpoint tree size {self.size} is not a uint64")
        if len(self.root_hash) != HASH_SIZE:
            raise NoteError(f"checkpoint root hash is {len(self.root_hash)} bytes, want 32")

    def to_body(self) -> str:
        lines = [self.origin, str(self.size), _encode_base64(self.root_hash), *self.extensions]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, body: str) -> Checkpoint:
        """Reads a checkpoint note text strictly: every line but the extensions is checked."""
        if not body.endswith("\n"):
            raise NoteError("checkpoint does not end with a newline")
        lines = body[:-1].split("\n")
        if len(lines) < 3:
            raise NoteError("checkpoint needs origin, tree size and root hash lines")
        origin, size, root_hash, *extensions = lines
        if len(size) > len(str(MAX_TREE_SIZE)) or not _TREE_SIZE.fullmatch(size):
            raise NoteError(
                f"checkpoint tree size {size[:24]!r} is not a decimal without leading 0"
            )
        return cls(
            origin,
            int(size),
            _decode_base64("checkpoint root hash", root_hash),
            tuple(extensions),
        )
