"""The CLI's own gRPC client: an mTLS channel from certificates issued by
`coopgate ca issue`, and readable reporting of gRPC errors."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import grpc
import typer
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rich.console import Console
from rich.measure import Measurement
from rich.status import Status
from rich.table import Table
from rich.text import Text

from gateway.core.caller import Role
from gateway.settings import Settings

T = TypeVar("T")
err = Console(stderr=True)

#: After this long a wait shows progress; a gateway not connected to after
#: `CONNECT_TIMEOUT` ends the command.
PROGRESS_AFTER = 1.0
CONNECT_TIMEOUT = 5.0
#: Without a terminal, a line every this many seconds while a wait goes on.
PLAIN_EVERY = 10.0
#: The channels this command opened, with their addresses (see `call`).
_opened: list[tuple[str, grpc.aio.Channel]] = []
#: Channel states in which nothing is waited for.
_SETTLED = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.SHUTDOWN)


class GatewaySilent(Exception):
    """The gateway did not answer within `CONNECT_TIMEOUT`."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.address = address


@dataclass(slots=True, frozen=True)
class ClientOptions:
    settings: Settings
    partner: str
    role: Role
    target: str | None = None
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    def files(self) -> tuple[Path, Path, Path]:
        clients = self.settings.pki_dir / "clients"
        stem = f"{self.partner}-{self.role.value}"
        return (
            self.cert or clients / f"{stem}.pem",
            self.key or clients / f"{stem}.key",
            self.ca or self.settings.pki_dir / "ca.pem",
        )

    def channel(self) -> grpc.aio.Channel:
        cert, key, ca = self.files()
        for path in (cert, key, ca):
            if not path.exists():
                err.print(
                    f"[red]error:[/red] {path} not found; issue it with "
                    f"`coopgate ca issue --partner {self.partner} --role {self.role.value}`"
                )
                raise typer.Exit(1)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca.read_bytes(),
            private_key=key.read_bytes(),
            certificate_chain=cert.read_bytes(),
        )
        address = self.target or self.settings.listen
        channel = grpc.aio.secure_channel(
            address,
            credentials,
            options=[("grpc.ssl_target_name_override", self.settings.server_name)],
        )
        _opened.append((address, channel))
        return channel


def client_options(
    data_dir: Path | None,
    partner: str,
    role: Role,
    target: str | None,
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
) -> ClientOptions:
    """Client options from the common CLI flags, over the configured settings."""
    settings = Settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    return ClientOptions(settings, partner, role, target, cert, key, ca)


DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Gateway state directory.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
PartnerOpt = Annotated[str, typer.Option("--as", help="Act as this partner (certificate O).")]
RoleOpt = Annotated[Role, typer.Option("--role", help="Certificate role (OU).")]
TargetOpt = Annotated[str | None, typer.Option(help="Gateway address (default: COOPGATE_LISTEN).")]
CertOpt = Annotated[Path | None, typer.Option("--cert", help="Client certificate PEM.")]
KeyOpt = Annotated[Path | None, typer.Option("--key", help="Client key PEM.")]
CaOpt = Annotated[Path | None, typer.Option("--ca", help="Gateway CA PEM.")]


class PlainTable(Table):
    """A table whose text cells are shown as written: partners' texts (a milestone
    "[received]", a note holding "[bold]" or "[link=…]") are data, never rich markup
    (which would swallow or restyle them)."""

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        super().add_row(*(Text(r) if isinstance(r, str) else r for r in renderables), **kwargs)


def fold_table(*headers: str, expand: bool = False) -> Table:
    """A table that cuts nothing: a cell too long for its column wraps, and a word
    longer than the column folds onto the next line instead of being cut."""
    made = PlainTable(*headers, expand=expand)
    for column in made.columns:
        column.overflow = "fold"
    return made


#: A width no table reaches: a table measured at it takes its natural width.
_UNBOUNDED = 100_000


def print_table(console: Console, table: Table, *, empty: str) -> None:
    """The table where it fits the terminal; where it does not (at 80 columns, often),
    each row as a block of its own, so that no id is cut or folded: its first cell whole
    on a line after its header, then each other cell after its. With no row, ``empty``
    says so."""
    if not table.row_count:
        console.print(empty, markup=False, highlight=False)
        return
    unbounded = console.options.update_width(_UNBOUNDED)
    if Measurement.get(console, unbounded, table).maximum <= console.width:
        console.print(table)
        return
    headers = [str(column.header) for column in table.columns]
    width = max(len(header) for header in headers)
    rows = zip(*(list(column.cells) for column in table.columns), strict=True)
    for n, (first, *rest) in enumerate(rows):
        if n:
            console.print()
        console.print(Text.assemble(f"{headers[0]} ", (str(first), "bold")), soft_wrap=True)
        for header, cell in zip(headers[1:], rest, strict=True):
            console.print(Text(f"  {header:<{width}}  {cell}"), highlight=False)


def new_key() -> str:
    """A fresh idempotency key for one CLI invocation."""
    return f"cli-{uuid.uuid4().hex}"


class Progress:
    """Shows that a wait goes on once it has lasted `PROGRESS_AFTER`: a spinner with the
    seconds waited on a terminal; otherwise plain lines (the first, then one every
    `PLAIN_EVERY` seconds), on stderr, so that stdout keeps only the answer."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or err
        self._what: str | None = None
        self._since = 0.0
        self._said: float | None = None
        self._status: Status | None = None

    def waiting(self, what: str, *, restart: bool = True) -> None:
        """A wait for ``what`` begins (or, without ``restart``, goes on under that name)."""
        if restart or self._what is None:
            self.clear()
            self._since = time.monotonic()
        self._what = what

    def clear(self) -> None:
        """The wait ended: nothing is shown any more."""
        if self._status is not None:
            self._status.stop()
            self._status = None
        self._what, self._said = None, None

    def update(self) -> None:
        """Called while waiting (every tenth of a second or so)."""
        if self._what is None:
            return
        waited = time.monotonic() - self._since
        if waited < PROGRESS_AFTER:
            return
        if self.console.is_terminal:
            text = f"waiting for {self._what}… {waited:.0f} s"
            if self._status is None:
                self._status = self.console.status(text)
                self._status.start()
            else:
                self._status.update(text)
        elif self._said is None or waited - self._said >= PLAIN_EVERY:
            still = "still " if self._said is not None else ""
            self.console.print(
                f"… {still}waiting for {self._what} ({waited:.0f} s)", markup=False, highlight=False
            )
            self._said = waited


#: What this command is waiting for, shown by `call` once it lasts (see `Progress`).
progress = Progress()


def call(coro: Awaitable[T], *, waiting: str | None = "the gateway's answer") -> T:
    """Run one client call; a gRPC error becomes a readable message and exit 1. A wait
    longer than `PROGRESS_AFTER` shows progress (`Progress`): for the connection while
    the gateway is not connected to, then for ``waiting`` (None: the command shows its
    own, as `case watch` does); a gateway that does not answer within `CONNECT_TIMEOUT`
    ends the command."""

    async def run() -> T:
        task = asyncio.ensure_future(coro)
        silent: list[str] = []
        watchdog = asyncio.create_task(_watch(task, silent, waiting))
        try:
            return await task
        except asyncio.CancelledError:
            if silent:
                raise GatewaySilent(silent[0]) from None
            raise
        finally:
            watchdog.cancel()
            progress.clear()

    _opened.clear()
    try:
        return asyncio.run(run())
    except GatewaySilent as exc:
        err.print(
            f"[red]error:[/red] the gateway at {exc.address} does not answer "
            f"(nothing within {CONNECT_TIMEOUT:.0f} s); is it running (`make run`), "
            "and is --target right?"
        )
        raise typer.Exit(1) from None
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE and _opened:
            err.print(f"[red]error:[/red] the gateway at {_opened[-1][0]} does not answer:")
        err.print(f"[red]{exc.code().name}[/red]: {exc.details()}")
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
        for detail in status.details if status is not None else ():
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                for violation in bad.field_violations:
                    err.print(f"  {violation.field}: {violation.description}")
        raise typer.Exit(1) from None


async def _watch(task: asyncio.Future[Any], silent: list[str], waiting: str | None) -> None:
    """While ``task`` runs: while a channel of this command is not connected, progress
    for the connection, and after `CONNECT_TIMEOUT` its address in ``silent`` and
    ``task`` cancelled; once connected, progress for ``waiting``."""
    started = time.monotonic()
    connected = False
    while not task.done():
        await asyncio.sleep(0.1)
        pending = [a for a, c in _opened if c.get_state() not in _SETTLED]
        if pending and not connected:
            if time.monotonic() - started >= CONNECT_TIMEOUT:
                silent.append(pending[0])
                task.cancel()
                return
            progress.waiting(f"the gateway at {pending[0]} to connect", restart=False)
        elif _opened and not connected:
            connected = True
            if waiting is None:
                progress.clear()
            else:
                progress.waiting(waiting, restart=False)
        progress.update()
