"""What `coopgate up` prints once the stack serves."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from gateway.settings import Settings


def announce_stack(settings: Settings, port: int, *, embedded: bool) -> None:
    host = settings.listen.rsplit(":", 1)[0]
    table = Table.grid(padding=(0, 2))
    table.add_row("gateway (gRPC, mTLS)", f"{host}:{port}")
    table.add_row("temporal", settings.effective_temporal_address)
    if embedded:
        table.add_row("temporal UI", f"http://127.0.0.1:{settings.temporal_dev_ui_port}")
    table.add_row("store", settings.effective_database_url)
    table.add_row("CA certificate", str(settings.pki_dir / "ca.pem"))
    table.add_row("data dir", str(settings.data_dir.resolve()))
    table.add_row(
        "client certificate",
        "coopgate ca issue --partner bank-a --role partner",
    )
    Console(stderr=True).print(
        Panel(table, title="Coopgate is up", subtitle="Ctrl-C stops everything")
    )
