"""What `coopgate up` prints once the stack serves: what runs where, and what to try."""

from __future__ import annotations

import shlex

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gateway.admin.reference import ReferencePartners
from gateway.settings import Settings


def first_commands(settings: Settings) -> list[str]:
    """The first three commands to try against this stack (as given, from the clone)."""
    extra = "" if settings.data_dir.as_posix() == "var" else f" --data-dir {settings.data_dir}"
    coopgate = ".venv/bin/coopgate"
    return [
        f"CASE=$({coopgate} case open --as bank-a --service nfc-payment --customer bank-cust-42"
        f" --summary {shlex.quote('Cannot pay by phone at a restaurant')}{extra})",
        f"{coopgate} case watch $CASE --as bank-a{extra}   # diagnosed and owned; Ctrl-C ends",
        f"{coopgate} case show $CASE --as bank-a{extra}",
    ]


def announce_stack(
    settings: Settings, port: int, *, embedded: bool, partners: ReferencePartners | None = None
) -> None:
    host = settings.listen.rsplit(":", 1)[0]
    table = Table.grid(padding=(0, 2))
    table.add_row("gateway (gRPC, mTLS)", f"{host}:{port}")
    table.add_row("temporal", settings.effective_temporal_address)
    if embedded:
        table.add_row("temporal UI", f"http://127.0.0.1:{settings.temporal_dev_ui_port}")
    table.add_row("store", settings.effective_database_url)
    table.add_row("CA certificate", str(settings.pki_dir / "ca.pem"))
    table.add_row("data dir", str(settings.data_dir.resolve()))
    parts: list[object] = [table]
    if partners is not None:
        table.add_row("client certificates", f"{settings.pki_dir / 'clients'} (every role)")
        table.add_row("partner logs", str(partners.log_dir / "<partner>.log"))
        if partners.console_url():
            table.add_row("console (bank-a)", partners.console_url())
            for line in partners.console_sign_ins():
                table.add_row("  sign in as", line)
        running = Table("reference partner", "pid", "state", box=None, padding=(0, 2))
        for child in partners.children:
            running.add_row(child.partner_id, str(child.process.pid), child.state)
        parts += [Text(""), running, Text("\nTry:", style="bold")]
        parts += [Text(f"  {command}", style="cyan") for command in first_commands(settings)]
    else:
        table.add_row(
            "client certificate",
            "coopgate ca issue --partner bank-a --role partner",
        )
    Console(stderr=True).print(
        Panel(Group(*parts), title="Coopgate is up", subtitle="Ctrl-C stops everything")  # type: ignore[arg-type]
    )
