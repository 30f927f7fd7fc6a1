"""Run one reference partner backend against a gateway, until SIGINT/SIGTERM.

    python -m partners.reference operator --cert telco-a-partner.pem \\
        --key telco-a-partner.key --ca ca.pem --target 127.0.0.1:7443 \\
        --fault payment-applet-locked --fault slow:1.5

NAME is a company kind (operator, bank, acquirer, handset, transport, energy,
thermostat, isp) or its catalogue partner id (telco-a, …). Everything it does
is printed, one line per event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from partners.channel import PartnerCredentials
from partners.client import PartnerClient
from partners.errors import GatewayError
from partners.reference import COMPANIES, ReferenceBackend, company
from partners.reference.backend import Faults


def _parser() -> argparse.ArgumentParser:
    kinds = ", ".join(f"{c.kind} ({c.partner_id})" for c in COMPANIES.values())
    parser = argparse.ArgumentParser(
        prog="python -m partners.reference",
        description=f"Run a reference partner backend. Companies: {kinds}.",
    )
    parser.add_argument("name", help="company kind or catalogue partner id")
    parser.add_argument("--partner", help="partner id (default: the catalogue's for NAME)")
    parser.add_argument("--cert", type=Path, help="client certificate (PEM)")
    parser.add_argument("--key", type=Path, help="client key (PEM)")
    parser.add_argument("--ca", type=Path, help="the gateway's CA (PEM)")
    parser.add_argument(
        "--target",
        default="127.0.0.1:7443",
        help="gateway host:port, or several replicas comma-separated (round robin)",
    )
    parser.add_argument("--server-name", default="localhost", help="name in the gateway's cert")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        help="a fault to switch on (repeat); --list-faults shows them",
    )
    parser.add_argument(
        "--demo-faults",
        action="store_true",
        help="also switch on the faults the demo's scenarios give this company, standing "
        "(what `coopgate up` runs its reference partners with)",
    )
    parser.add_argument(
        "--standing-faults",
        action="store_true",
        help="injected faults come back after each repair, for the next case "
        "(implied by --demo-faults)",
    )
    parser.add_argument(
        "--parent-pid",
        type=int,
        help="stop when this process (the one that started it) is gone",
    )
    parser.add_argument("--capacity", type=int, default=25, help="open cases it agrees to own")
    parser.add_argument("--list-faults", action="store_true", help="list the faults and exit")
    return parser


async def serve(args: argparse.Namespace, faults: Faults) -> int:
    chosen = company(args.name)
    credentials = PartnerCredentials(cert=args.cert, key=args.key, ca=args.ca)
    async with PartnerClient(
        args.target, credentials, server_name=args.server_name, key_prefix=chosen.kind
    ) as client:
        backend = ReferenceBackend(
            chosen,
            client,
            partner_id=args.partner,
            faults=faults,
            capacity=args.capacity,
            out=lambda line: print(line, flush=True),
            standing_faults=args.standing_faults or args.demo_faults,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        orphaned = asyncio.create_task(_orphaned(args.parent_pid, stop))
        try:
            await client.list_services(deadline=30)
        except GatewayError as exc:
            print(f"cannot reach the gateway at {args.target}: {exc}", file=sys.stderr, flush=True)
            return 1
        switched = ", ".join(sorted([*faults.model, *_behaviour(faults)]))
        drill = f"injected faults (a drill, expected): {switched}" if switched else "faults: none"
        backend.say("ready", f"{backend.partner_id} ({chosen.display_name}); {drill}")
        running = asyncio.create_task(backend.run())
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        backend.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        stopping.cancel()
        orphaned.cancel()
        if running in done and running.exception() is not None:
            print(f"subscription refused: {running.exception()}", file=sys.stderr, flush=True)
            return 1
        backend.say("stopped", backend.partner_id)
        return 0


async def _orphaned(parent_pid: int | None, stop: asyncio.Event) -> None:
    """Stops the backend once the process that started it is gone (never orphaned)."""
    while parent_pid is not None:
        if os.getppid() != parent_pid:
            stop.set()
            return
        await asyncio.sleep(1)


def _behaviour(faults: Faults) -> list[str]:
    names = [f"slow:{faults.slow:g}"] if faults.slow else []
    names += [
        n for n, on in (("drop-stream", faults.drop_stream), ("garbage", faults.garbage)) if on
    ]
    return names + (["silent"] if faults.silent else [])


def _demo_faults(kind: str) -> list[str]:
    """The faults the demo's scenarios switch on for the company ``kind``."""
    from partners.scenarios import SCENARIOS

    wanted = [f for scenario in SCENARIOS.values() for f in scenario.faults.get(kind, ())]
    return list(dict.fromkeys(wanted))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        chosen = company(args.name)
    except KeyError:
        print(f"unknown company {args.name!r}", file=sys.stderr)
        return 2
    if args.list_faults:
        for name, description in {**chosen.faults, **Faults.BEHAVIOUR}.items():
            print(f"{name:<24} {description}")
        return 0
    if not (args.cert and args.key and args.ca):
        print("--cert, --key and --ca are required", file=sys.stderr)
        return 2
    wanted = [*_demo_faults(chosen.kind), *args.fault] if args.demo_faults else args.fault
    try:
        faults = Faults.parse(wanted, chosen.faults)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s.%(msecs)03d sdk        %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
    )
    return asyncio.run(serve(args, faults))


if __name__ == "__main__":
    sys.exit(main())
