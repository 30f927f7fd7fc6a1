"""The console's parts that need no running gateway: its proof checks against the
gateway's own Merkle tree and signed notes, its accounts, and its web layer in front of
an unreachable gateway (security headers, CSRF, sign-in, sessions, the "gateway down"
page), served by uvicorn on a free port."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import uvicorn

from gateway.audit import merkle
from gateway.audit.note import Checkpoint, Signer
from gateway.core.caller import Role
from partners import PartnerCredentials
from partners.console import Accounts, ConsoleSettings, create_app, proofs
from tests.partners.console_stack import Browserless, sign_in_without_browser

# -- proofs -------------------------------------------------------------------------


def test_proofs_check_what_the_gateway_proves_and_refuse_a_tampered_log() -> None:
    leaves = [merkle.leaf_hash(os.urandom(16)) for _ in range(21)]
    tree = merkle.MemoryTree(leaves)
    for size in (1, 2, 7, 8, 13, 21):
        root = merkle.root(tree, size)
        for index in range(size):
            proof = merkle.inclusion_proof(tree, index, size)
            proofs.check_inclusion(leaves[index], index, size, proof, root)
        for size1 in range(1, size + 1):
            proof = merkle.consistency_proof(tree, size1, size)
            proofs.check_consistency(size1, size, proof, merkle.root(tree, size1), root)
    proof = merkle.inclusion_proof(tree, 5, 21)
    with pytest.raises(proofs.ProofFailed):
        proofs.check_inclusion(leaves[6], 5, 21, proof, merkle.root(tree, 21))
    other = merkle.MemoryTree([*leaves[:9], merkle.leaf_hash(b"rewritten"), *leaves[10:]])
    with pytest.raises(proofs.ProofFailed):
        proofs.check_consistency(
            8,
            21,
            merkle.consistency_proof(other, 8, 21),
            merkle.root(tree, 8),
            merkle.root(tree, 21),
        )
    assert proofs.leaf_hash(b"entry") == merkle.leaf_hash(b"entry")


def test_checkpoint_opens_only_with_the_pinned_key() -> None:
    signer, stranger = (
        Signer.generate("coopgate.test/audit"),
        Signer.generate("coopgate.test/audit"),
    )
    note = signer.sign(Checkpoint("coopgate.test/audit", 42, bytes(range(32))).to_body())
    opened = proofs.open_checkpoint(note, proofs.VerifierKey.parse(signer.verifier.to_key()))
    assert (opened.origin, opened.size, opened.root) == (
        "coopgate.test/audit",
        42,
        bytes(range(32)),
    )
    with pytest.raises(proofs.ProofFailed, match="no signature by"):
        proofs.open_checkpoint(note, proofs.VerifierKey.parse(stranger.verifier.to_key()))
    forged = note.replace("\n42\n", "\n43\n")
    with pytest.raises(proofs.ProofFailed, match="does not verify"):
        proofs.open_checkpoint(forged, proofs.VerifierKey.parse(signer.verifier.to_key()))


def test_accounts_check_argon2_hashes(tmp_path: Path) -> None:
    path = tmp_path / "accounts.toml"
    Accounts.write(path, {"lea": ("advisor", "s3cret-pass")})
    assert path.stat().st_mode & 0o777 == 0o600
    assert "s3cret-pass" not in path.read_text()
    accounts = Accounts.load(path)
    person = accounts.check("lea", "s3cret-pass")
    assert person is not None
    assert (person.person_id, person.role) == ("lea", "advisor")
    assert accounts.check("lea", "wrong") is None
    assert accounts.check("nobody", "s3cret-pass") is None
    path.write_text('[accounts.eve]\nrole = "root"\npassword = "$argon2id$x"\n')
    with pytest.raises(ValueError, match="role"):
        Accounts.load(path)


# -- the web layer, the gateway down ----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def offline_console(
    tmp_path: Path, credentials: Callable[[str, Role], PartnerCredentials]
) -> AsyncIterator[Browserless]:
    """A console whose gateway does not answer (nothing listens on its port)."""
    accounts = tmp_path / "accounts.toml"
    Accounts.write(
        accounts, {"lea": ("advisor", "lea-pass-1"), "cora": ("compliance", "cora-pass-1")}
    )
    settings = ConsoleSettings(
        partner_id="bank-a",
        target=f"127.0.0.1:{_free_port()}",
        advisor=credentials("bank-a", Role.ADVISOR),
        compliance=credentials("bank-a", Role.COMPLIANCE),
        accounts=accounts,
        call_deadline=1.0,
        idle_seconds=2,
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield Browserless(sock.getsockname()[1])
    finally:
        server.should_exit = True
        await task
        sock.close()


async def test_pages_carry_the_csp_and_every_post_needs_the_csrf_token(
    offline_console: Browserless,
) -> None:
    client = offline_console
    status, headers, page = await client.get("/sign-in")
    assert status == 200
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert '<script src="/static/console.js"' in page
    assert not re.search(r"<script>|\son\w+=", page)  # nothing inline for the CSP to refuse
    refused, _, _ = await client.post("/sign-in", {"person": "lea", "password": "lea-pass-1"})
    assert refused == 403
    assert await sign_in_without_browser(client, "lea", "wrong") == 401
    assert await sign_in_without_browser(client, "lea", "lea-pass-1") == 303
    assert (await client.post("/sign-out", {}))[0] == 403  # signed in, still no token


async def test_gateway_down_is_a_page_and_sessions_expire(offline_console: Browserless) -> None:
    client = offline_console
    status, headers, _ = await client.get("/cases")
    assert (status, headers["location"]) == (303, "/sign-in?next=/cases")
    assert await sign_in_without_browser(client, "lea", "lea-pass-1") == 303
    status, _, page = await client.get("/cases")
    assert status == 503
    assert "The gateway cannot be reached" in page
    status, _, page = await client.get("/audit")
    assert status == 403  # an advisor is not a compliance officer
    await asyncio.sleep(2.5)  # idle past the session's limit
    status, headers, _ = await client.get("/cases")
    assert (status, headers["location"]) == (303, "/sign-in?next=/cases")
