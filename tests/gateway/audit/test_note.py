"""Signed notes and checkpoints: round trips, the key id formula, the published known
answers (the C2SP signed-note example and golang.org/x/mod/sumdb/note's documented
example), and rejection of tampered or malformed notes and keys."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import (
    EMPTY_ROOT,
    Checkpoint,
    NoteError,
    Signer,
    Verifier,
    key_id,
    leaf_hash,
    open_note,
)

EM_DASH = "\u2014"

SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n"
    f"{EM_DASH} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYj"
    "OBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)

GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    f"{GO_TEXT}\n{EM_DASH} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFY"
    "C2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)

RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")


def spec_key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + b"\x01" + public_key).digest()[:4]


def checkpoint(size: int = 7) -> Checkpoint:
    return Checkpoint("coopgate.example/audit", size, leaf_hash(b"root"), ("ext one",))


def test_sign_and_open_round_trip() -> None:
    signer = Signer.generate("coopgate.example/audit")
    body = checkpoint().to_body()
    note = signer.sign(body)
    assert note.startswith(body + "\n" + EM_DASH + " coopgate.example/audit ")
    assert open_note(note, [signer.verifier]) == (body, ("coopgate.example/audit",))
    assert open_note(note.encode(), [signer.verifier])[0] == body
    assert Checkpoint.parse(body) == checkpoint()


def test_checkpoint_body_is_the_c2sp_layout() -> None:
    body = Checkpoint("log.example", 0, EMPTY_ROOT).to_body()
    assert body == "log.example\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
    assert Checkpoint.parse(body) == Checkpoint("log.example", 0, EMPTY_ROOT)


def test_key_id_is_the_spec_formula() -> None:
    signer = Signer.generate("log.example/key")
    public_key = signer.verifier.public_key
    expected = spec_key_id("log.example/key", public_key)
    assert key_id("log.example/key", public_key) == signer.verifier.key_id == expected
    assert signer.verifier.to_key().split("+")[1] == expected.hex()
    signature = base64.b64decode(signer.sign("x\n").rsplit(" ", 1)[1])
    assert signature[:4] == expected


def test_known_answer_from_the_spec_formula() -> None:
    """RFC 8032 test 1's key under the spec's key id and vkey encodings."""
    signer = Signer("rfc8032.example", Ed25519PrivateKey.from_private_bytes(RFC8032_SEED))
    assert signer.verifier.public_key == RFC8032_PUBLIC
    id_hex = spec_key_id("rfc8032.example", RFC8032_PUBLIC).hex()
    material = base64.b64encode(b"\x01" + RFC8032_PUBLIC).decode()
    assert signer.verifier.to_key() == f"rfc8032.example+{id_hex}+{material}"
    seed = base64.b64encode(b"\x01" + RFC8032_SEED).decode()
    assert signer.to_key() == f"PRIVATE+KEY+rfc8032.example+{id_hex}+{seed}"


def test_c2sp_spec_example_verifies() -> None:
    verifier = Verifier.from_key(SPEC_VKEY)
    assert spec_key_id("example.com/foo", verifier.public_key).hex() == "530d903a"
    assert open_note(SPEC_NOTE, [verifier]) == (
        "This is an example message.\n",
        ("example.com/foo",),
    )


def test_go_reference_example_is_reproduced_byte_for_byte() -> None:
    signer = Signer.from_key(GO_SKEY)
    assert signer.sign(GO_TEXT) == GO_NOTE
    assert signer.to_key() == GO_SKEY
    assert signer.verifier == Verifier.from_key(GO_VKEY)
    assert signer.verifier.to_key() == GO_VKEY
    assert open_note(GO_NOTE, [Verifier.from_key(GO_VKEY)]) == (GO_TEXT, ("PeterNeumann",))


def test_tampered_body_is_rejected() -> None:
    signer = Signer.generate("log.example")
    note = signer.sign(checkpoint(7).to_body())
    tampered = note.replace("\n7\n", "\n8\n", 1)
    assert tampered != note
    with pytest.raises(NoteError, match="does not verify"):
        open_note(tampered, [signer.verifier])


def test_wrong_key_is_rejected() -> None:
    note = Signer.generate("log.example").sign("text\n")
    impostor = Signer.generate("log.example")
    with pytest.raises(NoteError, match="no signature by a known key"):
        open_note(note, [impostor.verifier])
    with pytest.raises(NoteError, match="no signature by a known key"):
        open_note(note, [])


def test_unknown_signatures_are_ignored_and_known_ones_must_all_verify() -> None:
    log, witness = Signer.generate("log.example"), Signer.generate("witness.example")
    note = log.sign("text\n")
    cosigned = note + witness.sign("text\n").split("\n\n", 1)[1]
    assert open_note(cosigned, [log.verifier]) == ("text\n", ("log.example",))
    both = open_note(cosigned, [log.verifier, witness.verifier])
    assert both == ("text\n", ("log.example", "witness.example"))
    forged = note + witness.sign("other\n").split("\n\n", 1)[1]
    assert open_note(forged, [log.verifier])[1] == ("log.example",)
    with pytest.raises(NoteError, match=r"witness\.example.* does not verify"):
        open_note(forged, [log.verifier, witness.verifier])


def _signature_line(note: str) -> str:
    return note.split("\n\n", 1)[1]


@pytest.mark.parametrize(
    ("note", "message"),
    [
        (GO_TEXT, "no blank line"),
        (GO_TEXT + "\n", "no signatures"),
        (GO_NOTE[:-1], "does not end with a newline"),
        (GO_NOTE.replace(EM_DASH, "-"), "em dash"),
        (GO_NOTE.replace("PeterNeumann ", "PeterNeumann"), "no signature after"),
        (GO_NOTE.replace("x08go", "x08g!"), "not valid base64"),
        (GO_NOTE.replace("JnAM=", "JnAN="), "not canonical base64"),
        (GO_TEXT + f"\n{EM_DASH} PeterNeumann AAAA\n", "shorter than a key id"),
        (GO_NOTE.replace("problem,", "problem,\t"), r"control character U\+0009"),
        (GO_NOTE.replace("PeterNeumann ", "Peter+Neumann "), "key name"),
        (GO_NOTE + _signature_line(GO_NOTE) * 64, "more than 64"),
        (GO_NOTE.replace(" x08go", "  x08go"), "not valid base64"),
    ],
)
def test_malformed_notes_are_rejected(note: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        open_note(note, [Verifier.from_key(GO_VKEY)])


def test_note_that_is_not_utf8_is_rejected() -> None:
    with pytest.raises(NoteError, match="UTF-8"):
        open_note(GO_NOTE.encode() + b"\xff", [Verifier.from_key(GO_VKEY)])
    with pytest.raises(NoteError, match="UTF-8"):
        open_note(GO_NOTE.replace("problem,", "problem,\ud800"), [Verifier.from_key(GO_VKEY)])
    with pytest.raises(NoteError, match="UTF-8"):
        Verifier("lone\udc00surrogate", bytes(32))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


PUBLIC = base64.b64decode(GO_VKEY.rsplit("+", 1)[1])[1:]


@pytest.mark.parametrize(
    ("vkey", "message"),
    [
        ("", "three parts"),
        ("PeterNeumann", "three parts"),
        ("PeterNeumann+c74f20a3", "three parts"),
        ("+c74f20a3+" + _b64(b"\x01" + PUBLIC), "key name"),
        ("Peter Neumann+c74f20a3+" + _b64(b"\x01" + PUBLIC), "key name"),
        ("PeterNeumann+C74F20A3+" + _b64(b"\x01" + PUBLIC), "8 lowercase hex"),
        ("PeterNeumann+c74f20a+" + _b64(b"\x01" + PUBLIC), "8 lowercase hex"),
        ("PeterNeumann+c74f20a4+" + _b64(b"\x01" + PUBLIC), "does not match"),
        ("PeterNeumann+c74f20a3+" + _b64(b"\x02" + PUBLIC), "0x02"),
        ("PeterNeumann+c74f20a3+", "missing"),
        ("PeterNeumann+c74f20a3+" + _b64(b"\x01" + PUBLIC[:31]), "31 bytes"),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T", "base64"),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW\n", "base64"),
    ],
)
def test_malformed_verifier_keys_are_rejected(vkey: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        Verifier.from_key(vkey)


@pytest.mark.parametrize("key", [GO_VKEY, GO_SKEY])
def test_every_mangling_of_a_key_is_rejected(key: str) -> None:
    parse = Verifier.from_key if key == GO_VKEY else Signer.from_key
    manglings = {key[i:j] for i in range(len(key)) for j in range(i + 1, len(key) + 1)}
    manglings |= {key[:i] + chr(ord(key[i]) + 1) + key[i + 1 :] for i in range(len(key))}
    manglings.discard(key)
    for mangled in manglings:
        with pytest.raises(NoteError):
            parse(mangled)


def test_signer_refuses_bodies_it_cannot_sign_and_keeps_its_key_out_of_repr() -> None:
    signer = Signer.from_key(GO_SKEY)
    with pytest.raises(NoteError, match="end with a newline"):
        signer.sign("no newline")
    with pytest.raises(NoteError, match="control character"):
        signer.sign("bell\a\n")
    with pytest.raises(NoteError, match="key name"):
        Signer("has space", Ed25519PrivateKey.generate())
    assert repr(signer) == "Signer(name='PeterNeumann')"


ROOT = _b64(leaf_hash(b"root"))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (f"log\n7\n{ROOT}", "newline"),
        ("log\n7\n", "origin, tree size and root hash"),
        (f"\n7\n{ROOT}\n", "origin line"),
        (f"log\n07\n{ROOT}\n", "tree size '07'"),
        (f"log\n-1\n{ROOT}\n", "tree size"),
        (f"log\n+7\n{ROOT}\n", "tree size"),
        (f"log\n 7\n{ROOT}\n", "tree size"),
        (f"log\n\u0667\n{ROOT}\n", "tree size"),
        (f"log\n{2**64}\n{ROOT}\n", "not a uint64"),
        (f"log\n{'9' * 5000}\n{ROOT}\n", "tree size"),
        ("log\n7\nAAAA\n", "3 bytes, want 32"),
        ("log\n7\nnot base64!\n", "not valid base64"),
        (f"log\n7\n{ROOT}\n\n", "extension line"),
        (f"log\n7\n{ROOT}\next\x01\n", "control character"),
    ],
)
def test_malformed_checkpoints_are_rejected(body: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        Checkpoint.parse(body)


def test_checkpoint_extensions_and_largest_size_round_trip() -> None:
    largest = Checkpoint("log", 2**64 - 1, EMPTY_ROOT, ("a", "b c"))
    assert Checkpoint.parse(largest.to_body()) == largest
    assert largest.to_body().endswith("\na\nb c\n")
