"""`coopgate audit …` against the running gateway over mTLS, as a compliance officer and
a partner run it; what the gateway hands out is then checked offline."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from coopgate.v1 import audit_pb2
from typer.testing import CliRunner

from gateway.audit import leaf_hash
from gateway.audit.export import ExportedEntry, parse_line
from gateway.cli.main import app
from gateway.core.caller import Role
from tests.conftest import Stack
from tests.gateway.conftest import Disclosure, audit_stub, client_args, coopgate
from tests.helpers import run_coopgate


async def saved_checkpoint(stack: Stack, tmp_path: Path) -> tuple[Path, str]:
    note, vkey = tmp_path / "checkpoint.note", tmp_path / "gateway.vkey"
    code, out, err = await coopgate(
        "audit", "checkpoint", *client_args(stack, "coopgate", Role.COMPLIANCE),
        "--out", str(note), "--key-out", str(vkey),
    )  # fmt: skip
    assert code == 0, err
    assert out == ""
    return note, vkey.read_text().strip()


async def test_a_checkpoint_verifies_with_only_the_published_key(
    stack: Stack, tmp_path: Path
) -> None:
    note, vkey = await saved_checkpoint(stack, tmp_path)
    assert vkey.startswith("coopgate.dev/audit/localhost+")
    code, out, err = offline("verify-checkpoint", "--key", vkey, str(note))
    assert code == 0, err
    origin, size, root = out.splitlines()
    assert origin == "origin: coopgate.dev/audit/localhost"
    assert int(size.removeprefix("size: ")) > 0
    assert root.startswith("root: ")

    forged = tmp_path / "forged.note"
    text = note.read_text()
    forged.write_text(text.replace(f"\n{size.removeprefix('size: ')}\n", "\n1\n", 1))
    code, out, err = offline("verify-checkpoint", "--key", vkey, str(forged))
    assert code == 1
    assert "does not verify" in err
    assert "Traceback" not in err


def offline(*args: str) -> tuple[int, str, str]:
    """An offline `coopgate audit` check, run in this process: it never touches the network."""
    result = CliRunner().invoke(app, ["audit", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.exit_code, result.stdout, result.stderr


def verify_log(export: Path, vkey: str, note: Path) -> tuple[int, str, str]:
    return offline("verify-log", "--key", vkey, "--checkpoint", str(note), str(export))


async def test_an_export_replays_against_the_checkpoint_and_tampering_is_located(
    stack: Stack, disclosure: Disclosure, tmp_path: Path
) -> None:
    latest = await audit_stub(stack.api("telco-a", Role.PARTNER)).GetCheckpoint(
        audit_pb2.GetCheckpointRequest()
    )
    note, vkey, size = tmp_path / "checkpoint.note", latest.verifier_key, latest.tree_size
    note.write_text(latest.signed_note)
    export = tmp_path / "log.jsonl"
    code, out, err = await coopgate(
        "audit", "export", *client_args(stack, "coopgate", Role.COMPLIANCE),
        "--size", str(size), "--out", str(export),
    )  # fmt: skip
    assert code == 0, err
    lines = export.read_text().splitlines()
    assert len(lines) == size
    entries = [parse_line(line) for line in lines]
    assert [e.index for e in entries] == list(range(size))
    assert all(e.leaf_hash == leaf_hash(e.canonical) for e in entries)

    code, out, err = verify_log(export, vkey, note)
    assert code == 0, err
    assert out.startswith(f"OK: entries 0..{size - 1} match checkpoint")

    k = size // 2
    edited = entries[k].canonical.replace(b'"v":1', b'"v":2')
    assert edited != entries[k].canonical
    tampered = {
        "edited": [
            *lines[:k],
            ExportedEntry(k, edited, entries[k].leaf_hash).to_line(),
            *lines[k + 1 :],
        ],
        "deleted": [*lines[:k], *lines[k + 1 :]],
        "reordered": [*lines[:k], lines[k + 1], lines[k], *lines[k + 2 :]],
        "inserted": [*lines[:k], ExportedEntry(k, b"{}", leaf_hash(b"{}")).to_line(), *lines[k:]],
        "truncated": lines[:k],
    }
    for what, changed in tampered.items():
        path = tmp_path / f"{what}.jsonl"
        path.write_text("\n".join(changed) + "\n")
        code, out, err = verify_log(path, vkey, note)
        assert code == 1, what
        assert out == ""
        assert err.startswith(f"error: {path} does not match the checkpoint: index {k}: "), err
        assert "Traceback" not in err

    code, out, err = verify_log(export, "not-a-key", note)
    assert (code, "--key" in err) == (1, True)


async def test_query_prove_and_subject_report_from_the_command_line(
    stack: Stack, disclosure: Disclosure, tmp_path: Path
) -> None:
    query, report, refused, usage = await asyncio.gather(
        coopgate(
            "audit", "query", *client_args(stack, "coopgate", Role.COMPLIANCE),
            "--case", disclosure.case_id, "--kind", "access", "--decision", "allow", "--json",
        ),
        coopgate(
            "audit", "subject-report", *client_args(stack, "bank-a", Role.ADVISOR),
            "--customer", disclosure.customer, "--json",
        ),
        coopgate("audit", "query", *client_args(stack, "bank-a", Role.PARTNER)),
        coopgate(
            "audit", "query", *client_args(stack, "coopgate", Role.COMPLIANCE), "--kind", "gossip"
        ),
    )  # fmt: skip
    code, out, err = query
    assert code == 0, err
    allowed = json.loads(out)
    assert allowed
    assert {e["caseId"] for e in allowed} == {disclosure.case_id}
    assert {e["decision"] for e in allowed} == {"DECISION_ALLOW"}

    code, out, err = report
    assert code == 0, err
    assert [
        (d["recipientPartnerId"], d["sourcePartnerId"], d["categories"], d["purpose"])
        for d in json.loads(out)
    ] == [("bank-a", "telco-a", ["device.sim"], "incident-resolution")]
    assert json.loads(out)[0]["consentId"] == disclosure.consent_id

    code, out, err = refused
    assert code == 1
    assert "PERMISSION_DENIED" in err
    assert "Traceback" not in err
    code, out, err = usage
    assert code == 2
    assert "gossip" in err

    # An inclusion proof of the allowed read, against the latest checkpoint, checked offline.
    index = allowed[0]["index"]
    code, out, err = await coopgate(
        "audit", "prove", *client_args(stack, "bank-a", Role.PARTNER), "--index", str(index)
    )  # fmt: skip
    assert code == 0, err
    args = out.split()
    assert args[:2] == ["--index", str(index)]
    code, out, err = offline("verify-proof", "inclusion", *args)
    assert code == 0, err
    assert out.startswith(f"OK: leaf {index} is in the tree")
    wrong_root = list(args)
    wrong_root[args.index("--root") + 1] = args[args.index("--leaf-hash") + 1]
    code, out, err = offline("verify-proof", "inclusion", *wrong_root)
    assert code == 1
    assert "does not verify" in err


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["audit", "verify-log", "--key", "x", "missing.jsonl"], 2),
        (["audit", "subject-report", "--as", "bank-a"], 2),
        (["audit", "prove", "--as", "bank-a"], 2),
    ],
)
def test_usage_errors_exit_2(args: list[str], code: int) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == code, result.output


async def test_query_at_80_columns_shows_whole_ids_and_an_empty_report_says_so(
    stack: Stack, disclosure: Disclosure
) -> None:
    code, out, err = await run_coopgate(
        "audit", "query", *client_args(stack, "coopgate", Role.COMPLIANCE),
        "--case", disclosure.case_id, "--kind", "access", "--decision", "allow",
        columns=80,
    )  # fmt: skip
    assert code == 0, err
    assert disclosure.case_id in out
    assert max(len(line) for line in out.splitlines()) <= 80

    code, out, err = await run_coopgate(
        "audit", "subject-report", *client_args(stack, "bank-a", Role.ADVISOR),
        "--customer", disclosure.customer, "--since", "2999-01-01T00:00:00Z",
        columns=80,
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == "no disclosures found"

    code, out, err = await run_coopgate(
        "audit", "query", *client_args(stack, "coopgate", Role.COMPLIANCE),
        "--case", "case-none", columns=80,
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == "no audit entries match"
