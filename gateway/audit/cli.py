"""`coopgate audit`: offline checks for someone who does not trust the gateway.

They use only what is on the command line, never the gateway or its store. Exit 0 when
the check holds, 1 when it fails or an argument is malformed, 2 on a usage error.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from gateway.audit.merkle import HASH_SIZE, ProofError, verify_consistency, verify_inclusion
from gateway.audit.note import Checkpoint, NoteError, Verifier, open_note

audit_app = typer.Typer(
    no_args_is_help=True, help="Check the audit log's proofs and checkpoints offline."
)
verify_proof_app = typer.Typer(
    no_args_is_help=True, help="Verify a Merkle proof; hashes are standard base64."
)
audit_app.add_typer(verify_proof_app, name="verify-proof")

Proof = Annotated[
    list[str] | None,
    typer.Option(
        "--proof", help="One proof hash; repeat in proof order (none for an empty proof)."
    ),
]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _hash(what: str, value: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        _fail(f"{what} is not valid base64: {value!r}")
    if len(raw) != HASH_SIZE:
        _fail(f"{what} is {len(raw)} bytes, want {HASH_SIZE}")
    return raw


def _proof(values: list[str] | None) -> list[bytes]:
    return [_hash(f"--proof #{n}", value) for n, value in enumerate(values or [], start=1)]


@verify_proof_app.command("inclusion")
def verify_inclusion_command(
    index: Annotated[int, typer.Option(help="The leaf's index, from 0.")],
    size: Annotated[int, typer.Option(help="The size of the tree the root is for.")],
    leaf_hash: Annotated[str, typer.Option(help="The leaf hash, SHA-256(0x00 || entry).")],
    root: Annotated[str, typer.Option(help="The tree's root hash.")],
    proof: Proof = None,
) -> None:
    """Check that a leaf is in the tree of a given size and root."""
    leaf, root_hash, hashes = _hash("--leaf-hash", leaf_hash), _hash("--root", root), _proof(proof)
    try:
        verify_inclusion(leaf, index, size, hashes, root_hash)
    except ProofError as exc:
        _fail(f"inclusion proof does not verify: {exc}")
    typer.echo(f"OK: leaf {index} is in the tree of size {size} with root {root}")


@verify_proof_app.command("consistency")
def verify_consistency_command(
    size1: Annotated[int, typer.Option(help="The older tree size.")],
    size2: Annotated[int, typer.Option(help="The newer tree size.")],
    root1: Annotated[str, typer.Option(help="The older tree's root hash.")],
    root2: Annotated[str, typer.Option(help="The newer tree's root hash.")],
    proof: Proof = None,
) -> None:
    """Check that the older tree is a prefix of the newer one (the log only appended)."""
    old, new, hashes = _hash("--root1", root1), _hash("--root2", root2), _proof(proof)
    try:
        verify_consistency(size1, size2, hashes, old, new)
    except ProofError as exc:
        _fail(f"consistency proof does not verify: {exc}")
    typer.echo(f"OK: the tree of size {size1} is a prefix of the tree of size {size2}")


@audit_app.command("verify-checkpoint")
def verify_checkpoint_command(
    file: Annotated[Path, typer.Argument(help="The signed checkpoint note.")],
    key: Annotated[
        list[str], typer.Option("--key", help="A trusted verifier key; repeat for several.")
    ],
) -> None:
    """Check a signed checkpoint against verifier keys and print what it commits to."""
    try:
        verifiers = [Verifier.from_key(vkey) for vkey in key]
    except NoteError as exc:
        _fail(f"--key: {exc}")
    try:
        note = file.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {file}: {exc.strerror}")
    try:
        body, _ = open_note(note, verifiers)
        checkpoint = Checkpoint.parse(body)
    except NoteError as exc:
        _fail(f"{file}: {exc}")
    root = base64.b64encode(checkpoint.root_hash).decode()
    typer.echo(f"origin: {checkpoint.origin}\nsize: {checkpoint.size}\nroot: {root}")
