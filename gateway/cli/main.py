"""The `coopgate` command line."""

from __future__ import annotations

import asyncio
import difflib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from gateway.cli.audit import audit_app
from gateway.cli.case import case_app
from gateway.cli.consent import agreement_app, consent_app
from gateway.cli.observe import stats, trace
from gateway.core.caller import Role
from gateway.crypto.pki import CertificateAuthority
from gateway.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="The Coopgate gateway.")
ca_app = typer.Typer(no_args_is_help=True, help="The gateway's certificate authority.")
app.add_typer(ca_app, name="ca")
secrets_app = typer.Typer(
    no_args_is_help=True, help="The gateway's keys, the same on every replica and worker."
)
app.add_typer(secrets_app, name="secrets")
app.add_typer(audit_app, name="audit")
app.add_typer(case_app, name="case")
app.add_typer(consent_app, name="consent")
app.add_typer(agreement_app, name="agreement")
app.command()(trace)
app.command()(stats)

err = Console(stderr=True)
_T = TypeVar("_T")

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="State directory (default: $COOPGATE_DATA_DIR or ./var)."),
]


def _settings(data_dir: Path | None) -> Settings:
    settings = Settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    return settings


def _logging(settings: Settings) -> None:
    """Readable lines (or JSON: COOPGATE_LOG_FORMAT=json), each with its trace and span."""
    from gateway.telemetry import configure_logging

    configure_logging(settings.log_format, os.environ.get("COOPGATE_LOG_LEVEL", "INFO").upper())


def _run(coro: object) -> None:
    from gateway.crypto.keyfiles import KeyFileError
    from gateway.orchestration.devserver import DevServerError
    from gateway.stack import StackError

    try:
        asyncio.run(coro)  # type: ignore[arg-type]
    except (StackError, KeyFileError, DevServerError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


@app.command()
def up(
    data_dir: DataDir = None,
    seed: Annotated[bool, typer.Option(help="Load the reference catalogue.")] = True,
    partners: Annotated[
        bool | None,
        typer.Option(
            "--partners/--no-partners",
            help="Also run the reference partner backends, with their certificates "
            "(default: $COOPGATE_REFERENCE_PARTNERS, true); --no-partners: the bare stack.",
        ),
    ] = None,
) -> None:
    """Run the whole system in the foreground: Temporal dev server, gateway, worker, and
    the reference partners of the reference catalogue (unless --no-partners)."""
    from gateway.stack import run_up

    settings = _settings(data_dir)
    _logging(settings)
    if partners is not None:
        settings = settings.model_copy(update={"reference_partners": partners})
    _run(run_up(settings, seed=seed, observe=True))


@app.command()
def gateway(data_dir: DataDir = None) -> None:
    """Run one gateway replica against the configured store and Temporal."""
    from gateway.stack import run_gateway

    settings = _settings(data_dir)
    _logging(settings)
    _run(run_gateway(settings, observe=True))


@app.command()
def worker(data_dir: DataDir = None) -> None:
    """Run a Temporal worker alone against the configured store and Temporal."""
    from gateway.stack import run_worker

    settings = _settings(data_dir)
    _logging(settings)
    _run(run_worker(settings, observe=True))


@app.command()
def migrate(data_dir: DataDir = None) -> None:
    """Bring the store's schema up to date."""
    from gateway.crypto.keyfiles import KeyFileError
    from gateway.crypto.keyset import GatewayKeys
    from gateway.store import create_store
    from gateway.store import migrate as do_migrate

    async def go() -> None:
        settings = _settings(data_dir)
        try:
            keys = GatewayKeys.load(settings, create=False).for_migrations()
        except KeyFileError:
            keys = None  # a migration that needs them says so
        store = create_store(settings.effective_database_url)
        try:
            await do_migrate(store, secrets_dir=settings.secrets_dir, keys=keys)
        finally:
            await store.close()

    _run(go())
    err.print("schema is up to date")


@secrets_app.command("init")
def secrets_init(data_dir: DataDir = None) -> None:
    """Create the keys missing in the secrets directory (COOPGATE_SECRETS_DIR, default
    DATA_DIR/secrets), mode 0600; existing ones are kept."""
    from gateway.crypto.keyset import GatewayKeys

    settings = _settings(data_dir)
    _run_sync(lambda: GatewayKeys.load(settings, create=True))
    err.print(f"keys in {settings.secrets_dir}")


@secrets_app.command("env")
def secrets_env(data_dir: DataDir = None) -> None:
    """Print the keys as COOPGATE_*_KEY settings (KEY=base64 lines) for a deployment's
    secret store; never creates one."""
    from gateway.crypto.keyset import GatewayKeys

    settings = _settings(data_dir)
    keys = _run_sync(lambda: GatewayKeys.load(settings, create=False))
    for name, value in keys.as_environment().items():
        typer.echo(f"{name}={value}")


def _run_sync(make: Callable[[], _T]) -> _T:
    from gateway.crypto.keyfiles import KeyFileError

    try:
        return make()
    except KeyFileError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@ca_app.command("init")
def ca_init(data_dir: DataDir = None) -> None:
    """Create the certificate authority in DATA_DIR/pki."""
    settings = _settings(data_dir)
    ca = CertificateAuthority(settings.pki_dir)
    try:
        ca.init()
    except FileExistsError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    err.print(f"CA created: {ca.cert_path}")


@ca_app.command("issue")
def ca_issue(
    partner: Annotated[str, typer.Option(help="Partner id, written as the certificate's O.")],
    role: Annotated[Role, typer.Option(help="Role, written as the certificate's OU.")],
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default DATA_DIR/pki/clients).")
    ] = None,
    data_dir: DataDir = None,
    unregistered: Annotated[
        bool,
        typer.Option(
            "--unregistered",
            help="Issue it even though the partner is unknown to the registry "
            "(e.g. before registering it).",
        ),
    ] = False,
) -> None:
    """Issue a client certificate for a partner and role (a partner of the registry)."""
    from gateway.admin.reference import known_partners
    from gateway.core.errors import InvalidArgument
    from gateway.crypto.keyfiles import KeyFileError

    settings = _settings(data_dir)
    if not unregistered:
        known = asyncio.run(known_partners(settings))
        if partner not in known:
            close = difflib.get_close_matches(partner, sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            err.print(
                f"[red]error:[/red] partner {partner!r} is unknown to the registry of "
                f"{settings.data_dir} (known: {', '.join(sorted(known))}).{hint} "
                "Register it first, or pass --unregistered to issue it anyway."
            )
            raise typer.Exit(2)
    ca = CertificateAuthority(settings.pki_dir)
    try:
        files = ca.issue_client(out or settings.pki_dir / "clients", partner, role)
    except (FileNotFoundError, KeyFileError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    except InvalidArgument as exc:
        err.print(f"[red]error:[/red] {exc.violations[0].description}")
        raise typer.Exit(2) from None
    print(f"cert: {files.cert}\nkey:  {files.key}\nca:   {files.ca}")


@ca_app.command("revoke")
def ca_revoke(
    cert: Annotated[Path, typer.Argument(help="The client certificate (PEM) to revoke.")],
    data_dir: DataDir = None,
) -> None:
    """Revoke a client certificate: every gateway refuses it from its next call on."""
    from gateway.crypto.keyfiles import KeyFileError

    settings = _settings(data_dir)
    ca = CertificateAuthority(settings.pki_dir)
    try:
        serial = ca.revoke(cert.read_bytes())
    except (FileNotFoundError, ValueError, KeyFileError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    err.print(f"revoked serial {serial:x}; listed in {settings.pki_dir / 'crl.pem'}")


@app.command()
def vocabulary(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """The data categories and purposes the gateway knows, with what each means
    ($COOPGATE_VOCABULARY, or the built-in vocabulary)."""
    import json

    from rich.table import Table

    from gateway.consent.vocabulary import Vocabulary

    known = Vocabulary.load(_settings(data_dir).vocabulary)
    if as_json:
        purposes = {
            p.name: {"dpv": p.dpv, "description": p.description, "separate": p.separate}
            for p in known.purposes.values()
        }
        typer.echo(json.dumps({"categories": known.categories, "purposes": purposes}, indent=2))
        return
    out = Console()
    categories = Table("category", "what it holds", title="data categories", title_justify="left")
    for name, description in known.categories.items():
        categories.add_row(name, description)
    purposes_table = Table(
        "purpose", "what for", "DPV concept", title="purposes", title_justify="left"
    )
    for p in known.purposes.values():
        alone = " (consented to on its own, never with another purpose)" if p.separate else ""
        purposes_table.add_row(p.name, p.description + alone, p.dpv)
    for table in (categories, purposes_table):
        table.columns[0].no_wrap = True
        for column in table.columns[1:]:
            column.overflow = "fold"
    out.print(categories)
    out.print(purposes_table)


@app.command()
def demo(
    scenarios: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="SCENARIO", help="nfc-payment, smart-heating, transit-pass (default: all)."
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Play scenarios against the stack `make run` started, with the reference partners.

    Runs `python -m partners.demo` as a subprocess: the gateway never imports partners.
    """
    import socket
    import subprocess

    settings = _settings(data_dir)
    # Fail fast when no stack runs, instead of each scenario waiting out its timeouts.
    host, _, port = settings.listen.rpartition(":")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=3).close()
    except (OSError, ValueError) as exc:
        err.print(
            f"[red]error:[/red] the gateway at {settings.listen} does not answer ({exc}); "
            "start the stack with `make run` (or `coopgate up`) first."
        )
        raise typer.Exit(1) from None
    command = [sys.executable, "-m", "partners.demo", *(scenarios or [])]
    command += ["--target", settings.listen, "--data-dir", str(settings.data_dir)]
    command += ["--server-name", settings.server_name]
    raise typer.Exit(subprocess.run(command, check=False).returncode)


@app.command()
def console(
    partner: Annotated[str, typer.Option("--as", help="The partner whose console it is.")],
    listen: Annotated[str, typer.Option(help="host:port to serve on.")] = "127.0.0.1:8080",
    accounts: Annotated[
        Path | None, typer.Option(help="Local accounts file (TOML, Argon2id hashes).")
    ] = None,
    trusted_header: Annotated[
        str, typer.Option(help="Sign people in by this header, set by a trusted proxy.")
    ] = "",
    inbox: Annotated[
        Path | None,
        typer.Option(
            help="SQLite file keeping the offers and consent prompts the console received "
            "(default: desk.sqlite beside --accounts)."
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Serve a partner's web console for its advisors and compliance officers.

    Runs `python -m partners.console` as a subprocess (the gateway never imports
    partners), with the partner's certificates from DATA_DIR/pki/clients.
    """
    import subprocess

    settings = _settings(data_dir)
    command = [sys.executable, "-m", "partners.console", "--partner", partner]
    command += [
        "--certs",
        str(settings.pki_dir / "clients"),
        "--ca",
        str(settings.pki_dir / "ca.pem"),
    ]
    command += ["--target", settings.listen, "--server-name", settings.server_name]
    command += ["--listen", listen]
    if accounts is not None:
        command += ["--accounts", str(accounts)]
    if trusted_header:
        command += ["--trusted-header", trusted_header]
    if inbox is not None:
        command += ["--inbox", str(inbox)]
    raise typer.Exit(subprocess.run(command, check=False).returncode)


def main() -> None:
    """Entry point; ends through one explicit exit path (temporalio sdk-python#300)."""
    code: int = 0
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
