"""The reference partners beside the embedded stack: `coopgate up` issues a client
certificate for every reference partner in every role, and runs the reference
partner backends (``python -m partners.reference``, with the demo's faults) as
separate processes — the gateway never imports partners/, it only starts them.

Each backend answers diagnosis requests, accepts or declines ownership offers and
relays consent prompts, as in the demo; its output goes to
``DATA_DIR/partners/<partner>.log``, its pid to ``<partner>.pid`` while it runs. They
are started once the gateway serves and stopped by pid (SIGTERM, then SIGKILL) before
it stops; should `coopgate up` die, each stops by itself within a second
(``--parent-pid``), so none outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from gateway.admin.catalog import BOOTSTRAP, PARTNERS
from gateway.core.caller import Role
from gateway.crypto.pki import CertificateAuthority
from gateway.settings import Settings
from gateway.store import create_store
from gateway.store.schema import partners as partners_table

#: The reference partner whose web console `coopgate up` runs (``python -m partners.console``).
CONSOLE_PARTNER = "bank-a"

#: The administrator's and compliance officer's identity in the dev certificates.
OPERATOR_PARTNER = BOOTSTRAP.partner_id
OPERATOR_ROLES = (Role.ADMIN, Role.COMPLIANCE)


def reference_identities() -> list[tuple[str, Role]]:
    """Every reference partner in every role, and the gateway operator's own."""
    pairs = [(partner_id, role) for partner_id, _, _ in PARTNERS for role in Role]
    return pairs + [(OPERATOR_PARTNER, role) for role in OPERATOR_ROLES]


async def known_partners(settings: Settings) -> set[str]:
    """The partners a certificate may name: those registered in the data dir's store (read
    only, when there is one), those of the reference catalogue `coopgate up` registers,
    and the gateway operator's own identity."""
    known = {partner_id for partner_id, _, _ in PARTNERS} | {OPERATOR_PARTNER}
    if settings.database_url is None and not (settings.data_dir / "coopgate.db").exists():
        return known
    store = create_store(settings.effective_database_url, pool_size=1)
    try:
        async with store.read() as conn:
            rows = await conn.execute(select(partners_table.c.partner_id))
            known |= {row.partner_id for row in rows}
    except (SQLAlchemyError, OSError):
        pass  # no registry yet (not migrated, or unreachable): the catalogue's
    finally:
        await store.close()
    return known


def issue_reference_certificates(settings: Settings) -> list[Path]:
    """Client certificates for :func:`reference_identities` in ``DATA_DIR/pki/clients``,
    where the CLI looks by default; one already there is kept. Returns the new ones."""
    ca = CertificateAuthority(settings.pki_dir)
    clients = settings.pki_dir / "clients"
    issued = []
    for partner_id, role in reference_identities():
        stem = clients / f"{partner_id}-{role.value}"
        if stem.with_suffix(".pem").exists() and stem.with_suffix(".key").exists():
            continue
        issued.append(ca.issue_client(clients, partner_id, role).cert)
    return issued


@dataclass(slots=True)
class PartnerProcess:
    """One reference partner backend: its process and where its output goes."""

    partner_id: str
    process: asyncio.subprocess.Process
    log: Path

    @property
    def state(self) -> str:
        if self.process.returncode is not None:
            return f"exited ({self.process.returncode}), see {self.log}"
        try:
            said = self.log.read_text(errors="replace")
        except OSError:
            said = ""
        return "ready" if " ready " in said or " at http" in said else "connecting"


class ReferencePartners:
    """The reference partner backends of the reference catalogue, as child processes."""

    def __init__(self, settings: Settings, port: int) -> None:
        host = settings.listen.rpartition(":")[0].strip("[]")
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        self.target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.settings = settings
        self.log_dir = settings.data_dir / "partners"
        self.children: list[PartnerProcess] = []
        #: The console's accounts file; ``sign-in.txt`` beside it holds the first sign-ins.
        self.accounts = settings.data_dir / "console" / "accounts.toml"

    def argv(self, partner_id: str) -> list[str]:
        clients = self.settings.pki_dir / "clients"
        stem = f"{partner_id}-{Role.PARTNER.value}"
        return [
            sys.executable,
            "-m",
            "partners.reference",
            partner_id,
            *("--cert", str(clients / f"{stem}.pem"), "--key", str(clients / f"{stem}.key")),
            *("--ca", str(self.settings.pki_dir / "ca.pem")),
            *("--target", self.target, "--server-name", self.settings.server_name),
            "--demo-faults",
            *("--parent-pid", str(os.getpid())),
        ]

    def console_argv(self) -> list[str]:
        """The web console of :data:`CONSOLE_PARTNER`, for its advisors and compliance
        officer, with accounts made on first run (``--demo-accounts``)."""
        return [
            sys.executable,
            "-m",
            "partners.console",
            *("--partner", CONSOLE_PARTNER, "--certs", str(self.settings.pki_dir / "clients")),
            *("--ca", str(self.settings.pki_dir / "ca.pem")),
            *("--target", self.target, "--server-name", self.settings.server_name),
            *("--listen", self.settings.console_listen, "--accounts", str(self.accounts)),
            "--demo-accounts",
            *("--parent-pid", str(os.getpid())),
        ]

    @property
    def console(self) -> PartnerProcess | None:
        return next((c for c in self.children if c.partner_id == "console"), None)

    def console_url(self) -> str:
        """The address the console printed once it served (empty before)."""
        child = self.console
        if child is None:
            return ""
        with contextlib.suppress(OSError):
            for line in child.log.read_text(errors="replace").splitlines():
                if " at http" in line:
                    return line.rpartition(" at ")[2].strip()
        return ""

    def console_sign_ins(self) -> list[str]:
        """``person / password (role)`` lines of the accounts the console made first."""
        with contextlib.suppress(OSError):
            return (self.accounts.parent / "sign-in.txt").read_text().splitlines()
        return []

    async def start(self, *, patience: float = 30.0) -> None:
        """Start one backend per reference partner; wait (up to ``patience`` s) until
        each says it is ready or has exited."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        runs = [(partner_id, self.argv(partner_id)) for partner_id, _, _ in PARTNERS]
        for partner_id, argv in [*runs, ("console", self.console_argv())]:
            log = self.log_dir / f"{partner_id}.log"
            with log.open("ab") as sink:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=sink,
                    stderr=sink,
                    env=env,
                    # A terminal's Ctrl-C reaches `up` alone, which stops them in order. No
                    # preexec_fn: the gateway's gRPC threads run, a plain fork would warn.
                    start_new_session=True,
                )
            self.children.append(PartnerProcess(partner_id, process, log))
            # So that `coopgate demo` plays with them rather than start its own.
            (self.log_dir / f"{partner_id}.pid").write_text(f"{process.pid}\n")
        deadline = asyncio.get_running_loop().time() + patience
        while any(child.state == "connecting" for child in self.children):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM by pid, SIGKILL after ``grace`` seconds: no backend outlives `up`."""
        await asyncio.gather(*(_stop(child.process, grace) for child in self.children))
        for child in self.children:
            (self.log_dir / f"{child.partner_id}.pid").unlink(missing_ok=True)
        self.children.clear()


async def _stop(process: asyncio.subprocess.Process, grace: float) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        await process.wait()
