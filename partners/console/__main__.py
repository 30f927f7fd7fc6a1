"""Run a partner's web console until SIGINT/SIGTERM.

    python -m partners.console --partner bank-a --certs var/pki/clients --ca var/pki/ca.pem \\
        --accounts console-accounts.toml --target 127.0.0.1:7443 --listen 127.0.0.1:8080

The certificates are ``<partner>-advisor``, ``<partner>-compliance`` and, when present,
``<partner>-partner`` (ownership offers and consent prompts for the partner's people)
in ``--certs``. ``python -m partners.console hash-password`` prints an Argon2id hash
for an accounts file.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import secrets
import socket
import sys
from pathlib import Path

import uvicorn

from partners.channel import PartnerCredentials
from partners.console.accounts import Accounts, hash_password
from partners.console.app import create_app
from partners.console.settings import ConsoleSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m partners.console")
    parser.add_argument("--partner", required=True, help="the partner whose console this is")
    parser.add_argument("--certs", type=Path, required=True, help="folder of its client certs")
    parser.add_argument("--ca", type=Path, required=True, help="the gateway's CA (PEM)")
    parser.add_argument("--target", default="127.0.0.1:7443", help="gateway host:port")
    parser.add_argument("--server-name", default="localhost")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="host:port (port 0: any)")
    parser.add_argument("--accounts", type=Path, help="local accounts file (TOML)")
    parser.add_argument(
        "--demo-accounts",
        action="store_true",
        help="when the accounts file is missing, create an advisor and a compliance officer "
        "with random passwords, written to sign-in.txt beside it (mode 0600)",
    )
    parser.add_argument("--trusted-header", default="", help="person header set by a proxy")
    parser.add_argument("--trusted-proxy", action="append", default=[])
    parser.add_argument("--no-offers", action="store_true", help="do not take work (offers)")
    parser.add_argument(
        "--inbox",
        type=Path,
        help="SQLite file keeping the offers and consent prompts received, so a restart "
        "keeps them (default: desk.sqlite beside --accounts; without either, memory)",
    )
    parser.add_argument("--verifier-key", default="", help="pin the checkpoint verifier key")
    parser.add_argument("--https-only", action="store_true", help="secure session cookie")
    parser.add_argument("--parent-pid", type=int, help="stop when this process is gone")
    return parser


def demo_accounts(accounts: Path) -> None:
    """First sign-ins for a development console: ``advisor`` and ``officer``."""
    if accounts.exists():
        return
    accounts.parent.mkdir(parents=True, exist_ok=True)
    people = {
        "advisor": ("advisor", secrets.token_urlsafe(12)),
        "officer": ("compliance", secrets.token_urlsafe(12)),
    }
    Accounts.write(accounts, people)
    sign_in = accounts.parent / "sign-in.txt"
    sign_in.touch(mode=0o600)
    sign_in.write_text("".join(f"{p} / {pw} ({role})\n" for p, (role, pw) in people.items()))


def _credentials(certs: Path, partner: str, role: str, ca: Path) -> PartnerCredentials | None:
    found = PartnerCredentials.issued(certs, partner, role, ca)
    return found if found.cert.exists() and found.key.exists() else None


async def _orphaned(parent: int | None, server: uvicorn.Server) -> None:
    while parent is not None and not server.should_exit:
        if os.getppid() != parent:
            server.should_exit = True
        await asyncio.sleep(1)


async def serve(args: argparse.Namespace) -> int:
    if not args.accounts and not args.trusted_header:
        print(
            "give --accounts FILE or --trusted-header NAME: nobody could sign in", file=sys.stderr
        )
        return 2
    if args.demo_accounts and args.accounts:
        demo_accounts(args.accounts)
    advisor = _credentials(args.certs, args.partner, "advisor", args.ca)
    if advisor is None:
        print(f"no advisor certificate for {args.partner} in {args.certs}", file=sys.stderr)
        return 2
    settings = ConsoleSettings(
        partner_id=args.partner,
        target=args.target,
        advisor=advisor,
        compliance=_credentials(args.certs, args.partner, "compliance", args.ca),
        work=None if args.no_offers else _credentials(args.certs, args.partner, "partner", args.ca),
        server_name=args.server_name,
        accounts=args.accounts,
        trusted_header=args.trusted_header.lower(),
        trusted_proxies=tuple(args.trusted_proxy) or ("127.0.0.1",),
        verifier_key=args.verifier_key,
        https_only=args.https_only,
        inbox=args.inbox or (args.accounts.parent / "desk.sqlite" if args.accounts else None),
    )
    host, _, port = args.listen.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host or "127.0.0.1", int(port)))
    config = uvicorn.Config(
        create_app(settings), log_level="warning", access_log=False, http="httptools"
    )
    server = uvicorn.Server(config)
    bound = sock.getsockname()
    print(f"console for {args.partner} at http://{bound[0]}:{bound[1]}/", flush=True)
    watcher = asyncio.create_task(_orphaned(args.parent_pid, server))
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["hash-password"]:
        print(hash_password(getpass.getpass("password: ")))
        return 0
    return asyncio.run(serve(_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
