"""`coopgate audit`: exit 0 when a check holds, 1 when it fails or an argument is
malformed (one line on stderr, never a traceback), 2 on a usage error."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from gateway.audit import (
    Checkpoint,
    MemoryTree,
    Signer,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
)
from gateway.cli.main import app

TREE = MemoryTree(leaf_hash(i.to_bytes(2, "big")) for i in range(7))


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def run(*args: str) -> Result:
    result = CliRunner().invoke(app, ["audit", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def inclusion_args(override: dict[str, str] | None = None) -> list[str]:
    """A valid claim for leaf 3 of the tree of size 7, with some options overridden."""
    index, size = 3, 7
    args = {
        "--index": str(index),
        "--size": str(size),
        "--leaf-hash": b64(leaf_hash(index.to_bytes(2, "big"))),
        "--root": b64(root(TREE, size)),
    } | (override or {})
    flat = ["verify-proof", "inclusion", *(item for pair in args.items() for item in pair)]
    for hash_ in inclusion_proof(TREE, index, size):
        flat += ["--proof", b64(hash_)]
    return flat


def consistency_args(size1: int = 3, size2: int = 7, root2: bytes | None = None) -> list[str]:
    """The claim that the tree of size1 leads to the tree of size2, without a proof."""
    root2 = root(TREE, size2) if root2 is None else root2
    return [
        "verify-proof",
        "consistency",
        *("--size1", str(size1), "--size2", str(size2)),
        *("--root1", b64(root(TREE, size1)), "--root2", b64(root2)),
    ]


def consistency_with_proof(size1: int = 3, size2: int = 7, root2: bytes | None = None) -> list[str]:
    args = consistency_args(size1, size2, root2)
    for hash_ in consistency_proof(TREE, size1, size2):
        args += ["--proof", b64(hash_)]
    return args


def assert_fails(result: Result, message: str) -> None:
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1


def test_valid_inclusion_proof_exits_0() -> None:
    result = run(*inclusion_args())
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("OK: leaf 3 is in the tree of size 7")
    assert result.stdout.count("\n") == 1


def test_valid_consistency_proof_exits_0() -> None:
    result = run(*consistency_with_proof())
    assert result.exit_code == 0, result.output
    assert result.stdout == "OK: the tree of size 3 is a prefix of the tree of size 7\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (inclusion_args({"--root": b64(root(TREE, 6))}), "inclusion proof does not verify"),
        (inclusion_args({"--index": "4"}), "inclusion proof does not verify"),
        (inclusion_args({"--index": "-1"}), "must not be negative"),
        (inclusion_args({"--size": "12"}), "proof length is 3, want 4"),
        (inclusion_args({"--leaf-hash": "not base64!"}), "--leaf-hash is not valid base64"),
        (inclusion_args({"--root": b64(b"short")}), "--root is 5 bytes, want 32"),
        ([*inclusion_args(), "--proof", "AAAA"], "--proof #4 is 3 bytes, want 32"),
        ([*inclusion_args(), "--proof", "===="], "--proof #4 is not valid base64"),
        (consistency_with_proof(3, 7, root(TREE, 6)), "consistency proof does not verify"),
        (consistency_with_proof(2, 7)[:-2], "proof length is 1, want 2"),
        (consistency_args(0, 0), "empty tree"),
        (consistency_args(7, 3), "size1 7 is larger than size2 3"),
    ],
)
def test_invalid_proof_or_malformed_argument_exits_1(args: list[str], message: str) -> None:
    assert_fails(run(*args), message)


@pytest.mark.parametrize(
    "args",
    [
        inclusion_args()[:2] + inclusion_args()[4:],
        [*consistency_with_proof(), "--unknown", "x"],
        inclusion_args({"--index": "three"}),
        ["verify-checkpoint", "checkpoint.txt"],
    ],
    ids=["missing-option", "unknown-option", "not-an-integer", "no-key"],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert result.stdout == ""


@pytest.fixture
def signer() -> Signer:
    return Signer.generate("coopgate.example/audit")


@pytest.fixture
def signed_checkpoint(tmp_path: Path, signer: Signer) -> Path:
    checkpoint = Checkpoint("coopgate.example/audit", 7, root(TREE, 7))
    path = tmp_path / "checkpoint"
    path.write_text(signer.sign(checkpoint.to_body()), encoding="utf-8")
    return path


def test_verify_checkpoint_prints_what_it_commits_to(
    signed_checkpoint: Path, signer: Signer
) -> None:
    other = Signer.generate("other.example").verifier.to_key()
    result = run(
        "verify-checkpoint",
        "--key",
        other,
        "--key",
        signer.verifier.to_key(),
        str(signed_checkpoint),
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"origin: coopgate.example/audit\nsize: 7\nroot: {b64(root(TREE, 7))}\n"
    )


def test_verify_checkpoint_takes_the_key_from_a_file(
    signed_checkpoint: Path, signer: Signer, tmp_path: Path
) -> None:
    """As `coopgate audit checkpoint --key-out` writes it: the key and a newline."""
    vkey = tmp_path / "gateway.vkey"
    vkey.write_text(signer.verifier.to_key() + "\n", encoding="utf-8")
    result = run("verify-checkpoint", "--key", str(vkey), str(signed_checkpoint))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("origin: coopgate.example/audit\nsize: 7\n")
    empty = tmp_path / "empty.vkey"
    empty.write_text("\n", encoding="utf-8")
    assert_fails(run("verify-checkpoint", "--key", str(empty), str(signed_checkpoint)), "no key")


def test_verify_checkpoint_rejects_another_key(signed_checkpoint: Path) -> None:
    impostor = Signer.generate("coopgate.example/audit").verifier.to_key()
    result = run("verify-checkpoint", "--key", impostor, str(signed_checkpoint))
    assert_fails(result, "no signature by a known key")


def test_verify_checkpoint_rejects_a_tampered_checkpoint(
    signed_checkpoint: Path, signer: Signer
) -> None:
    text = signed_checkpoint.read_text(encoding="utf-8")
    signed_checkpoint.write_text(text.replace("\n7\n", "\n8\n", 1), encoding="utf-8")
    result = run("verify-checkpoint", "--key", signer.verifier.to_key(), str(signed_checkpoint))
    assert_fails(result, "does not verify")


def test_verify_checkpoint_rejects_a_signed_note_that_is_no_checkpoint(
    tmp_path: Path, signer: Signer
) -> None:
    path = tmp_path / "note"
    path.write_text(signer.sign("just a note\n"), encoding="utf-8")
    result = run("verify-checkpoint", "--key", signer.verifier.to_key(), str(path))
    assert_fails(result, "origin, tree size and root hash")


def test_verify_checkpoint_rejects_a_malformed_key_or_a_missing_file(
    signed_checkpoint: Path, signer: Signer
) -> None:
    assert_fails(
        run("verify-checkpoint", "--key", "name+00000000", str(signed_checkpoint)), "--key"
    )
    missing = signed_checkpoint.with_name("missing")
    assert_fails(
        run("verify-checkpoint", "--key", signer.verifier.to_key(), str(missing)), "cannot read"
    )


def test_installed_command_exits_1_without_traceback() -> None:
    """Through the real entry point, which leaves by os._exit."""
    coopgate = Path(sys.executable).parent / "coopgate"
    args = inclusion_args({"--leaf-hash": "%%%"})
    done = subprocess.run(
        [str(coopgate), "audit", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert done.stderr == "error: --leaf-hash is not valid base64: '%%%'\n"
