"""`coopgate audit verify-*`: the offline checks, for someone who does not trust the
gateway: they use only what is on the command line and in the files named there. Exit 0
when a check succeeds, 1 when it fails or an argument or file is malformed, 2 on a usage
error. The commands that ask the gateway are in `gateway.cli.audit`, on the same
`audit_app`.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from gateway.audit.export import ReplayError, replay
from gateway.audit.merkle import HASH_SIZE, ProofError, verify_consistency, verify_inclusion
from gateway.audit.note import Checkpoint, NoteError, Verifier, open_note

audit_app = typer.Typer(
    no_args_is_help=True,
    help="Query and export the audit log; check its proofs and checkpoints offline.",
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


VerifierKeyOpt = Annotated[
    list[str],
    typer.Option(
        "--key",
        help="A trusted verifier key (name+keyid+key, as `checkpoint` prints it), or a file "
        "holding it (as `checkpoint --key-out` writes it); repeat for several.",
    ),
]


@audit_app.command("verify-checkpoint")
def verify_checkpoint_command(
    file: Annotated[Path, typer.Argument(help="The signed checkpoint note.")],
    key: VerifierKeyOpt,
) -> None:
    """Check a signed checkpoint against verifier keys and print what it commits to."""
    checkpoint = _verified_checkpoint(file, key)
    root = base64.b64encode(checkpoint.root_hash).decode()
    typer.echo(f"origin: {checkpoint.origin}\nsize: {checkpoint.size}\nroot: {root}")


@audit_app.command("verify-log")
def verify_log_command(
    export: Annotated[Path, typer.Argument(help="JSON Lines written by `coopgate audit export`.")],
    key: VerifierKeyOpt,
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="The signed checkpoint the export must match.")
    ],
) -> None:
    """Replay an export against a signed checkpoint: recompute every leaf, rebuild the tree,
    and name the first entry that was edited, deleted, moved, inserted or cut off."""
    signed = _verified_checkpoint(checkpoint, key)
    try:
        with export.open(encoding="utf-8", errors="strict") as lines:
            result = replay(lines, signed)
    except OSError as exc:
        _fail(f"cannot read {export}: {exc.strerror}")
    except UnicodeDecodeError:
        _fail(f"{export} is not UTF-8 text")
    except ReplayError as exc:
        _fail(f"{export} does not match the checkpoint: {exc}")
    root = base64.b64encode(signed.root_hash).decode()
    if result.newer:
        typer.echo(
            f"note: {result.newer} entries after index {result.covered - 1} are newer than "
            "the checkpoint and not covered by it",
            err=True,
        )
    covered = f"entries 0..{result.covered - 1}" if result.covered else "no entries"
    typer.echo(f"OK: {covered} match checkpoint {signed.origin} size {signed.size} root {root}")


def _verified_checkpoint(file: Path, keys: list[str]) -> Checkpoint:
    """The checkpoint in a signed note, once a trusted key's signature on it verifies."""
    try:
        verifiers = [Verifier.from_key(vkey) for key in keys for vkey in _key_texts(key)]
    except NoteError as exc:
        _fail(f"--key: {exc}")
    try:
        note = file.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {file}: {exc.strerror}")
    try:
        body, _ = open_note(note, verifiers)
        return Checkpoint.parse(body)
    except NoteError as exc:
        _fail(f"{file}: {exc}")


def _key_texts(key: str) -> list[str]:
    """The verifier key given as text, or the keys (one a line) in the file it names."""
    text = key.strip()
    if _VERIFIER_KEY.fullmatch(text):
        return [text]
    path = Path(key)
    if not path.is_file():
        return [text]  # not a key, not a file: `Verifier.from_key` says what is wrong
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"--key: cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
    keys = [line.strip() for line in lines if line.strip()]
    if not keys:
        _fail(f"--key: {path} holds no key")
    return keys


#: The shape of a verifier key given as text (`Verifier.from_key` checks the rest).
_VERIFIER_KEY = re.compile(r"[^+\s]+\+[0-9a-f]{8}\+\S+")
