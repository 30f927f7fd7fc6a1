"""The whole system in one command: the scenarios played end to end.

    python -m partners.demo [SCENARIO ...] [--target HOST:PORT --data-dir DIR] [--own-stack]

With ``--own-stack`` it starts ``coopgate up`` on free loopback ports with a
temporary data dir; otherwise it plays against a stack already running (``make
run``), whose data dir holds the CA. Certificates come from ``coopgate ca
issue``; the reference partners run as separate processes (``python -m
partners.reference``) over gRPC with mTLS. At the end every process it started
is stopped by pid. Exit status 0 when every scenario ended as scripted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from partners.channel import PartnerCredentials
from partners.client import PartnerClient
from partners.errors import GatewayError, Unimplemented
from partners.narration import RichNarrator
from partners.processes import Child, Children
from partners.reference import COMPANIES
from partners.scenarios import (
    ADMIN_PARTNER,
    SCENARIOS,
    Cast,
    Outcome,
    Scenario,
    ScenarioFailed,
    Stage,
    perform,
)

ROLES_PER_COMPANY = ("partner", "advisor")
COMPLIANCE = (ADMIN_PARTNER, "compliance")


class DemoError(Exception):
    """The demo cannot go on; the message says why."""


def _coopgate() -> str:
    """The ``coopgate`` command installed beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / "coopgate"
    if beside.exists():
        return str(beside)
    found = shutil.which("coopgate")
    if found is None:
        raise DemoError("the `coopgate` command is not installed (make setup)")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stack_partners(data_dir: Path) -> dict[str, int]:
    """The reference partners `coopgate up` runs for ``data_dir`` (its pid files), alive."""
    alive: dict[str, int] = {}
    for pid_file in (data_dir / "partners").glob("*.pid"):
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            continue
        alive[pid_file.stem] = pid
    return alive


@dataclass(slots=True, frozen=True)
class Plan:
    """What to play and which companies must run, with which faults."""

    scenarios: tuple[Scenario, ...]
    faults: dict[str, tuple[str, ...]]

    @classmethod
    def of(cls, names: Sequence[str]) -> Plan:
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            raise DemoError(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
        chosen = tuple(SCENARIOS[n] for n in (names or list(SCENARIOS)))
        faults: dict[str, tuple[str, ...]] = {}
        for scenario in chosen:
            for kind in scenario.companies:
                wanted = faults.get(kind, ()) + tuple(scenario.faults.get(kind, ()))
                faults[kind] = tuple(dict.fromkeys(wanted))
        return cls(chosen, faults)


class Demo:
    def __init__(self, console: Console, workdir: Path, *, server_name: str) -> None:
        self.console = console
        self.narrator = RichNarrator(console)
        self.workdir = workdir
        self.certs = workdir / "certs"
        self.children = Children()
        self.server_name = server_name
        self.coopgate = _coopgate()

    # -- the stack -------------------------------------------------------------

    async def own_stack(self) -> tuple[str, Path, Child]:
        """``coopgate up`` on free loopback ports in a temporary data dir."""
        data_dir = self.workdir / "stack"
        data_dir.mkdir()
        port, dev_port, ui_port = _free_port(), _free_port(), _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("COOPGATE_")}
        env |= {
            "COOPGATE_LISTEN": f"127.0.0.1:{port}",
            "COOPGATE_TEMPORAL_DEV_PORT": str(dev_port),
            "COOPGATE_TEMPORAL_DEV_UI_PORT": str(ui_port),
            "COOPGATE_CONSOLE_LISTEN": f"127.0.0.1:{_free_port()}",
        }
        log = self.workdir / "coopgate-up.log"
        child = await self.children.start(
            "coopgate up",
            # The demo runs its own reference partners, with each scenario's faults.
            [self.coopgate, "up", "--data-dir", str(data_dir), "--no-partners"],
            env=env,
            cwd=self.workdir,
            log=log,
        )
        self.narrator.step(
            f"Started `coopgate up` (pid {child.pid}): gateway 127.0.0.1:{port}, Temporal dev "
            f"server 127.0.0.1:{dev_port}, data in {data_dir}"
        )
        ca = data_dir / "pki" / "ca.pem"
        async with asyncio.timeout(60):
            while not ca.exists():
                if not child.running:
                    tail = log.read_text(errors="replace")[-1500:]
                    raise DemoError(f"coopgate up exited ({child.process.returncode}):\n{tail}")
                await asyncio.sleep(0.2)
        return f"127.0.0.1:{port}", data_dir, child

    async def issue(self, data_dir: Path, wanted: Iterable[tuple[str, str]]) -> None:
        """Client certificates from the stack's CA, through ``coopgate ca issue``."""
        self.certs.mkdir(exist_ok=True)
        limit = asyncio.Semaphore(4)

        async def one(partner: str, role: str) -> None:
            async with limit:
                process = await asyncio.create_subprocess_exec(
                    self.coopgate,
                    "ca",
                    "issue",
                    "--partner",
                    partner,
                    "--role",
                    role,
                    "--out",
                    str(self.certs),
                    "--data-dir",
                    str(data_dir),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                )
                output, _ = await process.communicate()
                if process.returncode != 0:
                    raise DemoError(f"coopgate ca issue {partner}/{role}: {output.decode()}")

        pairs = sorted(set(wanted))
        await asyncio.gather(*(one(p, r) for p, r in pairs))
        self.narrator.step(f"Issued {len(pairs)} client certificates with `coopgate ca issue`.")

    async def wait_ready(self, target: str, ca: Path, stack: Child | None) -> None:
        """Until the gateway answers (the catalogue is seeded before it listens)."""
        creds = PartnerCredentials.issued(self.certs, ADMIN_PARTNER, "admin", ca)
        async with PartnerClient(target, creds, server_name=self.server_name) as admin:
            deadline = time.monotonic() + 90
            while True:
                try:
                    services = await admin.list_services(deadline=3)
                    break
                except GatewayError as exc:
                    if stack is not None and not stack.running:
                        # The log goes with the demo's temporary directory: show its end.
                        log = self.workdir / "coopgate-up.log"
                        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                        raise DemoError(f"coopgate up exited:\n{tail}") from exc
                    if time.monotonic() > deadline:
                        raise DemoError(f"the gateway at {target} does not answer: {exc}") from exc
                    await asyncio.sleep(0.3)
        names = ", ".join(s.service_id for s in services)
        self.narrator.step(f"The gateway at {target} answers over mTLS; services: {names}.")

    # -- the partners ------------------------------------------------------------

    async def start_partners(
        self, plan: Plan, target: str, ca: Path, running: Iterable[str] = ()
    ) -> list[Child]:
        """One process per company, each with its own certificate and faults; none for
        the partners in ``running`` (the stack's own, run with the same faults)."""
        started: list[Child] = []
        ready: dict[str, asyncio.Event] = {}
        for kind, faults in plan.faults.items():
            company = COMPANIES[kind]
            partner = company.partner_id
            if partner in running:
                continue
            creds = PartnerCredentials.issued(self.certs, partner, "partner", ca)
            argv = [sys.executable, "-m", "partners.reference", kind]
            argv += ["--cert", str(creds.cert), "--key", str(creds.key), "--ca", str(ca)]
            argv += ["--target", target, "--server-name", self.server_name]
            for fault in faults:
                argv += ["--fault", fault]
            ready[partner] = asyncio.Event()
            started.append(
                await self.children.start(
                    partner, argv, on_line=self._partner_output(partner, ready[partner])
                )
            )
        try:
            async with asyncio.timeout(60):
                await asyncio.gather(*(event.wait() for event in ready.values()))
        except TimeoutError:
            late = [p for p, e in ready.items() if not e.is_set()]
            raise DemoError(f"reference partners did not connect: {', '.join(late)}") from None
        if started:
            self.narrator.step(
                f"{len(started)} reference partners run as separate processes (pids "
                f"{', '.join(str(c.pid) for c in started)})."
            )
        return started

    def _partner_output(self, partner: str, ready: asyncio.Event) -> Callable[[str], None]:
        def show(line: str) -> None:
            if " ready " in line:
                ready.set()
            self.narrator.partner_line(partner, line)

        return show

    # -- the audit checkpoint --------------------------------------------------------

    async def _coopgate_cli(self, *args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            self.coopgate,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        return process.returncode or 0, output.decode(errors="replace").rstrip()

    async def checkpoint(self, stage: Stage, target: str, ca: Path) -> str:
        """Fetch the audit log's signed checkpoint — with `coopgate audit checkpoint` when
        this install has it, else over the API — and verify it offline."""
        self.console.rule("[bold]Audit checkpoint[/bold]")
        note, key_file = self.workdir / "checkpoint.note", self.workdir / "verifier.key"
        code, usage = await self._coopgate_cli("audit", "checkpoint", "--help")
        if code == 0 and "--key-out" in usage:
            creds = PartnerCredentials.issued(self.certs, *COMPLIANCE, ca)
            code, output = await self._coopgate_cli(
                "audit",
                "checkpoint",
                "--as",
                COMPLIANCE[0],
                "--role",
                COMPLIANCE[1],
                "--target",
                target,
                "--cert",
                str(creds.cert),
                "--key",
                str(creds.key),
                "--ca",
                str(ca),
                "--out",
                str(note),
                "--key-out",
                str(key_file),
            )
            if code != 0:
                self.narrator.step(f"`coopgate audit checkpoint` failed: {output}")
                return "FAILED to fetch"
            fetched_with = "`coopgate audit checkpoint`"
            key = key_file.read_text().strip()
        else:
            try:
                checkpoint = await stage.client(*COMPLIANCE).get_checkpoint()
            except Unimplemented:
                self.narrator.step("this gateway serves no audit checkpoint yet (skipped)")
                return "skipped"
            note.write_text(checkpoint.signed_note)
            fetched_with, key = "AuditService.GetCheckpoint", checkpoint.verifier_key
        code, output = await self._coopgate_cli(
            "audit", "verify-checkpoint", str(note), "--key", key
        )
        verdict = "verified" if code == 0 else "FAILED verification"
        self.narrator.step(
            f"Signed checkpoint fetched with {fetched_with} as a compliance officer, {verdict} "
            f"offline by `coopgate audit verify-checkpoint` with the published key {key}:"
        )
        self.console.print(output, highlight=False)
        return verdict


async def run(args: argparse.Namespace, console: Console) -> int:
    plan = Plan.of(args.scenarios)
    began = time.monotonic()
    outcomes: list[tuple[Outcome, float]] = []
    failures: list[str] = []
    verdict = ""
    with tempfile.TemporaryDirectory(prefix="coopgate-demo-") as tmp:
        demo = Demo(console, Path(tmp), server_name=args.server_name)
        try:
            stack: Child | None = None
            if args.own_stack:
                target, data_dir, stack = await demo.own_stack()
            else:
                target, data_dir = args.target, Path(args.data_dir)
                if not (data_dir / "pki" / "ca.pem").exists():
                    raise DemoError(f"no CA in {data_dir / 'pki'}: is the stack (make run) up?")
            ca = data_dir / "pki" / "ca.pem"
            wanted = [(ADMIN_PARTNER, "admin"), COMPLIANCE]
            wanted += [
                (COMPANIES[kind].partner_id, role)
                for kind in plan.faults
                for role in ROLES_PER_COMPANY
            ]
            await demo.issue(data_dir, wanted)
            await demo.wait_ready(target, ca, stack)
            running = {} if args.own_stack else stack_partners(data_dir)
            if running:
                demo.narrator.step(
                    f"The stack runs its reference partners ({', '.join(sorted(running))}; "
                    f"logs in {data_dir / 'partners'}): the demo plays with them."
                )
            partners = await demo.start_partners(plan, target, ca, running)
            stage = Stage(
                target,
                lambda partner, role: PartnerCredentials.issued(demo.certs, partner, role, ca),
                cast=Cast(),
                narrator=demo.narrator,
                server_name=args.server_name,
            )
            try:
                for scenario in plan.scenarios:
                    started = time.monotonic()
                    with console.status(f"playing {scenario.name}…"):
                        try:
                            outcomes.append(
                                (await perform(scenario, stage), time.monotonic() - started)
                            )
                        except (ScenarioFailed, GatewayError) as exc:
                            failures.append(f"{scenario.name}: {exc}")
                            demo.narrator.step(f"{scenario.name} did not end as scripted: {exc}")
                verdict = await demo.checkpoint(stage, target, ca)
            finally:
                await stage.close()
                await demo.children.stop_many(partners)
        except DemoError as exc:
            console.print(f"[red]demo stopped:[/red] {exc}")
            failures.append(str(exc))
        finally:
            with console.status("stopping every process the demo started…"):
                await demo.children.stop_all()
    _summary(console, outcomes, verdict, time.monotonic() - began)
    for failure in failures:
        console.print(f"[red]✗[/red] {failure}")
    return 1 if failures else 0


def _summary(
    console: Console, outcomes: list[tuple[Outcome, float]], verdict: str, took: float
) -> None:
    table = Table(title="Scenarios", show_lines=False)
    for column in ("scenario", "case", "status", "owner", "resolvers", "escalations", "time"):
        table.add_column(column)
    for outcome, seconds in outcomes:
        table.add_row(
            outcome.scenario,
            outcome.case_id[:13],
            outcome.status.name,
            outcome.owner,
            ", ".join(outcome.resolvers) or "—",
            "; ".join(outcome.escalations) or "—",
            f"{seconds:.1f} s",
        )
    console.print()
    console.print(table)
    if verdict:
        console.print(f"audit checkpoint: {verdict}")
    console.print(f"demo finished in {took:.1f} s; every process it started is stopped.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m partners.demo", description=__doc__)
    parser.add_argument(
        "scenarios", nargs="*", metavar="SCENARIO", help=f"any of {', '.join(SCENARIOS)} (all)"
    )
    parser.add_argument(
        "--target",
        default=os.environ.get("COOPGATE_LISTEN", "127.0.0.1:7443"),
        help="the running gateway (default: $COOPGATE_LISTEN or 127.0.0.1:7443)",
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("COOPGATE_DATA_DIR", "var"),
        help="the running stack's data dir, for its CA (default: $COOPGATE_DATA_DIR or var)",
    )
    parser.add_argument(
        "--own-stack", action="store_true", help="start a throwaway stack for the demo"
    )
    parser.add_argument("--server-name", default="localhost", help="name in the gateway's cert")
    args = parser.parse_args(argv)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    try:
        return asyncio.run(run(args, console))
    except DemoError as exc:
        console.print(f"[red]demo stopped:[/red] {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
