"""Benchmark: an incident from OpenCase to its owner's acceptance visible in the case
view, on the embedded stack as `make run` starts it, next to a bare Temporal workflow
(four parallel no-op activities) on the same dev server with the same worker settings.

The stack is `coopgate up` itself (a process of its own: gateway and worker, with the
dev server it spawns with its tuned flags; SQLite, or PostgreSQL with ``--backend
postgres``), and the four reference partners of nfc-payment answer as `coopgate up`
runs them (``--demo-faults``), with room for every case the run opens (``--capacity``;
the default 25 would make the bank decline past its 25th case and change the path).
The bare workflow's worker is a process of its own too (tests/benchmarks/bare_workflow.py).

Rounds interleave the two: one at a time (latency, OpenCase to the header naming the
owner on a WatchCase stream, as an advisor sees it), then 50 and 100 opened at once
(incidents per second, and the CPU of each process per incident).

    python -m tests.benchmarks.incident [--backend sqlite|postgres] [--rounds 3]
        [--samples 15] [--json PATH] [--no-drills]

``--no-drills`` runs the partners with the same model faults (same findings, decision
and owner) but without the demo's behaviour faults: the acquirer's malformed finding
first and the handset maker's dropped stream are drills of a misbehaving partner, and
the first waits out the SDK's redelivery backoff (0.25-0.5 s) in every incident.
`make bench` runs both: the orchestration's own row (no drills) first, then the one
with the drills, as `coopgate up` runs its partners.

What each change gained, run by run, is in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from gateway.admin.reference import ReferencePartners, issue_reference_certificates
from gateway.core.caller import Role
from gateway.settings import Settings
from gateway.stack import ensure_pki
from tests.benchmarks.common import database, run_and_exit

#: The partners of the nfc-payment chain (the bank is first contact and owner).
NFC_PARTNERS = ("telco-a", "bank-a", "acquirer-a", "handset-a")
BARE = "bare"
#: An incident's calls are retried (same idempotency key) on these, as partners' SDKs do.
_RETRIED = frozenset({"UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED"})
_ATTEMPTS = 4
COOPGATE = "coopgate"


def partner_argv(reference: ReferencePartners, partner: str, drills: bool) -> list[str]:
    """How the benchmark runs ``partner``: as `coopgate up` does (``--demo-faults``), or,
    without ``drills``, with the same model faults standing (the same findings, decision
    and owner) but none of the behaviour faults (the acquirer's garbage finding first,
    refused and redelivered after the SDK's redelivery backoff, 0.25-0.5 s; the handset
    maker dropping its stream on every new item)."""
    argv = [*reference.argv(partner), "--capacity", "1000000"]
    if drills:
        return argv
    from partners.reference import company
    from partners.reference.__main__ import _demo_faults
    from partners.reference.backend import Faults

    behaviour = {name.partition("[")[0] for name in Faults.BEHAVIOUR}
    model = [f for f in _demo_faults(company(partner).kind) if f.partition(":")[0] not in behaviour]
    at = argv.index("--demo-faults")
    argv[at : at + 1] = ["--standing-faults", *(f"--fault={f}" for f in model)]
    return argv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


@dataclass
class Stack:
    """`coopgate up`, its dev server, the nfc-payment partners and the bare worker."""

    settings: Settings
    up: asyncio.subprocess.Process
    partners: list[asyncio.subprocess.Process] = field(default_factory=list)
    bare: asyncio.subprocess.Process | None = None
    dev_server: psutil.Process | None = None

    def cpu(self) -> dict[str, float]:
        """Seconds of CPU each process (group) has used so far."""
        return {
            "gateway+worker": _cpu(psutil.Process(self.up.pid)),
            "dev server": _cpu(self.dev_server),
            "partners": sum(_cpu(psutil.Process(p.pid)) for p in self.partners),
            "bare worker": _cpu(psutil.Process(self.bare.pid)) if self.bare else 0.0,
            "bench client": _cpu(psutil.Process()),
        }


async def _wait_port(port: int, process: asyncio.subprocess.Process, log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        if process.returncode is not None:
            raise SystemExit(f"coopgate up exited ({process.returncode}); see {log}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"coopgate up did not serve within 120 s; see {log}")
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def running_stack(
    workdir: Path, database_url: str | None, logs_to: Path | None = None, *, drills: bool = True
) -> AsyncIterator[Stack]:
    """Every process is started before this process makes any gRPC object."""
    data_dir = workdir / "var"
    gateway_port = _free_port()
    env = dict(
        os.environ,
        COOPGATE_LISTEN=f"127.0.0.1:{gateway_port}",
        COOPGATE_TEMPORAL_DEV_PORT=str(_free_port()),
        COOPGATE_TEMPORAL_DEV_UI_PORT=str(_free_port()),
        COOPGATE_REFERENCE_PARTNERS="false",  # started below, with room for every case
        COOPGATE_LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    if database_url:
        env["COOPGATE_DATABASE_URL"] = database_url
    for key in ("COOPGATE_DATA_DIR", "COOPGATE_TASK_QUEUE"):
        env.pop(key, None)
    settings = Settings(
        data_dir=data_dir,
        listen=env["COOPGATE_LISTEN"],
        temporal_dev_port=int(env["COOPGATE_TEMPORAL_DEV_PORT"]),
        database_url=database_url,
    )
    ensure_pki(settings)
    issue_reference_certificates(settings)
    log = workdir / "up.log"
    coopgate = Path(sys.executable).parent / "coopgate"
    with log.open("ab") as sink:
        up = await asyncio.create_subprocess_exec(
            str(coopgate), "up", "--data-dir", str(data_dir), "--no-partners",
            env=env, stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink,
            start_new_session=True,
        )  # fmt: skip
    stack = Stack(settings, up)
    try:
        await _wait_port(gateway_port, up, log)
        children = psutil.Process(up.pid).children(recursive=True)
        stack.dev_server = next((c for c in children if "temporal" in c.name()), None)
        reference = ReferencePartners(settings, gateway_port)
        logs = []
        for partner in NFC_PARTNERS:
            logs.append(workdir / f"{partner}.log")
            with logs[-1].open("ab") as sink:
                child = await asyncio.create_subprocess_exec(
                    *partner_argv(reference, partner, drills),
                    env=env, stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink,
                    start_new_session=True,
                )  # fmt: skip
                stack.partners.append(child)
        stack.bare = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.benchmarks.bare_workflow",
            "--address", settings.effective_temporal_address, "--task-queue", "bench-bare",
            env=env, stdout=asyncio.subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        assert stack.bare.stdout is not None
        ready = await asyncio.wait_for(stack.bare.stdout.readline(), 60)
        assert ready.strip() == b"ready", ready
        deadline = time.monotonic() + 60
        while not all(" ready " in p.read_text(errors="replace") for p in logs):
            if time.monotonic() > deadline:
                raise SystemExit(f"the reference partners did not connect; see {workdir}")
            await asyncio.sleep(0.2)
        yield stack
    finally:
        for process in [*stack.partners, stack.bare, up]:
            if process is not None and process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 20)
                except TimeoutError:
                    process.kill()
                    await process.wait()
        if logs_to is not None:  # what the stack said, kept for a look after the run
            logs_to.mkdir(parents=True, exist_ok=True)
            for found in [log, *workdir.glob("*-a.log"), data_dir / "temporal.log"]:
                if found.exists():
                    shutil.copy(found, logs_to / found.name)


class Clients:
    """The bank's advisor on the gateway, and a Temporal client for the bare workflow."""

    def __init__(self, stack: Stack) -> None:
        import grpc
        from coopgate.v1 import cases_pb2_grpc

        pki = stack.settings.pki_dir
        stem = pki / "clients" / f"bank-a-{Role.ADVISOR.value}"
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(pki / "ca.pem").read_bytes(),
            private_key=stem.with_suffix(".key").read_bytes(),
            certificate_chain=stem.with_suffix(".pem").read_bytes(),
        )
        self.channel = grpc.aio.secure_channel(
            stack.settings.listen,
            credentials,
            options=[("grpc.ssl_target_name_override", stack.settings.server_name)],
        )
        self.cases = cases_pb2_grpc.CaseServiceStub(self.channel)
        self.address = stack.settings.effective_temporal_address
        self.owners: dict[str, int] = {}
        self.retries: dict[str, int] = {}

    async def connect(self) -> None:
        from temporalio.client import Client

        self.temporal = await Client.connect(self.address)

    async def incident(self) -> float:
        """Seconds from OpenCase to the header naming the owner on the advisor's watch."""
        import grpc
        from coopgate.v1 import cases_pb2, common_pb2

        request = cases_pb2.OpenCaseRequest(
            idempotency_key=uuid.uuid4().hex,
            service_id="nfc-payment",
            customer_local_id=f"bench-{uuid.uuid4().hex[:12]}",
            channel=common_pb2.CHANNEL_PHONE,
            summary="Cannot pay by phone at a restaurant",
        )
        t0 = time.perf_counter()
        for attempt in range(_ATTEMPTS):
            # As a partner's SDK does: a call that failed on the way is retried with the
            # same idempotency key (counted in the results: `retries`).
            try:
                opened = await self.cases.OpenCase(request, timeout=120)
                watch = self.cases.WatchCase(
                    cases_pb2.WatchCaseRequest(
                        case_id=opened.case_id, purpose="incident-resolution"
                    ),
                    timeout=300,
                )
                async for event in watch:
                    if event.header.relationship_owner_id:
                        elapsed = time.perf_counter() - t0
                        owner = event.header.relationship_owner_id
                        self.owners[owner] = self.owners.get(owner, 0) + 1
                        watch.cancel()
                        return elapsed
                raise RuntimeError(f"the watch of {opened.case_id} ended without an owner")
            except grpc.aio.AioRpcError as exc:
                if exc.code().name not in _RETRIED or attempt == _ATTEMPTS - 1:
                    raise
                key = exc.code().name
                self.retries[key] = self.retries.get(key, 0) + 1
                await asyncio.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    async def bare(self) -> float:
        from tests.benchmarks.bare_workflow import BareInput, BareWorkflow

        t0 = time.perf_counter()
        result = await self.temporal.execute_workflow(
            BareWorkflow.run, BareInput(), id=f"bare-{uuid.uuid4()}", task_queue="bench-bare"
        )
        assert result == 4, result
        return time.perf_counter() - t0

    async def close(self) -> None:
        await self.channel.close()


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def _burst(
    stack: Stack, one: Callable[[], Awaitable[float]], n: int, settle: float
) -> dict[str, Any]:
    """``n`` started at once: per second, and CPU per item of each process."""
    before = stack.cpu()
    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    elapsed = time.perf_counter() - t0
    await asyncio.sleep(settle)  # what each run finishes after it is seen (same for both)
    after = stack.cpu()
    return {
        "n": n,
        "seconds": elapsed,
        "per_s": n / elapsed,
        "cpu_ms": {k: (after[k] - before[k]) * 1000 for k in before},
    }


def _cpu_per_item(bursts: list[dict[str, Any]]) -> dict[str, float]:
    count = sum(b["n"] for b in bursts)
    keys = bursts[0]["cpu_ms"].keys()
    return {k: sum(b["cpu_ms"][k] for b in bursts) / count for k in keys}


async def measure(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    clients = Clients(stack)
    await clients.connect()
    runs = {BARE: clients.bare, COOPGATE: clients.incident}
    latency: dict[str, list[float]] = {BARE: [], COOPGATE: []}
    bursts: dict[str, dict[int, list[dict[str, Any]]]] = {
        name: {n: [] for n in args.bursts} for name in runs
    }
    for one in runs.values():  # warm-up, not counted (the first cases repair faults)
        for _ in range(args.warmup):
            await one()
    for round_no in range(args.rounds):
        for name, one in runs.items():
            for _ in range(args.samples):
                latency[name].append(await one())
        for n in args.bursts:
            for name, one in runs.items():
                bursts[name][n].append(await _burst(stack, one, n, args.settle))
        print(
            f"  round {round_no + 1}/{args.rounds}: "
            + "; ".join(
                f"{name} p50 {statistics.median(latency[name]) * 1000:.0f} ms, "
                + ", ".join(f"{n}: {bursts[name][n][-1]['per_s']:.1f}/s" for n in args.bursts)
                for name in runs
            ),
            flush=True,
        )
    await clients.close()
    summary: dict[str, Any] = {}
    for name in runs:
        summary[name] = {
            "p50_ms": statistics.median(latency[name]) * 1000,
            "p99_ms": _percentile(latency[name], 0.99) * 1000,
            "per_s": {
                n: statistics.median(b["per_s"] for b in bursts[name][n]) for n in args.bursts
            },
            "cpu_ms_per_item": _cpu_per_item([b for n in args.bursts for b in bursts[name][n]]),
        }
    bare, ours = summary[BARE], summary[COOPGATE]
    bare_cpu = bare["cpu_ms_per_item"]["bare worker"] + bare["cpu_ms_per_item"]["dev server"]
    our_cpu = ours["cpu_ms_per_item"]["gateway+worker"] + ours["cpu_ms_per_item"]["dev server"]
    summary["ratios"] = {
        "latency_p50": ours["p50_ms"] / bare["p50_ms"],
        "latency_p99": ours["p99_ms"] / bare["p99_ms"],
        **{f"throughput_{n}": ours["per_s"][n] / bare["per_s"][n] for n in args.bursts},
        "cpu_per_incident": our_cpu / bare_cpu,
    }
    summary["owners"] = clients.owners
    summary["retries"] = clients.retries
    summary["samples_ms"] = {k: [round(v * 1000, 1) for v in vs] for k, vs in latency.items()}
    summary["bursts"] = bursts
    return summary


def report(backend: str, summary: dict[str, Any], bursts: list[int]) -> None:
    bare, ours, ratios = summary[BARE], summary[COOPGATE], summary["ratios"]
    print(f"[{backend}] incident: OpenCase -> owner visible | bare: 4 parallel no-op activities")
    print(
        f"  latency p50 {ours['p50_ms']:6.0f} ms vs {bare['p50_ms']:5.0f} ms "
        f"({ratios['latency_p50']:.1f}x, target <= 3x); p99 {ours['p99_ms']:6.0f} ms vs "
        f"{bare['p99_ms']:5.0f} ms ({ratios['latency_p99']:.1f}x, target <= 3x)"
    )
    for n in bursts:
        print(
            f"  {n:>3} at once: {ours['per_s'][n]:5.1f}/s vs {bare['per_s'][n]:5.1f}/s "
            f"({ratios[f'throughput_{n}']:.0%}, target >= 50%)"
        )
    cpu, bcpu = ours["cpu_ms_per_item"], bare["cpu_ms_per_item"]
    print(
        f"  CPU per incident: gateway+worker {cpu['gateway+worker']:.0f} ms, dev server "
        f"{cpu['dev server']:.0f} ms (partners {cpu['partners']:.0f}, client "
        f"{cpu['bench client']:.0f}) | bare: worker {bcpu['bare worker']:.0f} ms, dev server "
        f"{bcpu['dev server']:.0f} ms (client {bcpu['bench client']:.0f}) -> "
        f"{ratios['cpu_per_incident']:.1f}x (target <= 3x)"
    )
    print(f"  owners: {summary['owners']}; calls retried: {summary['retries'] or 'none'}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=15, help="one-at-a-time runs per round")
    parser.add_argument("--bursts", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--settle", type=float, default=0.5, help="seconds after each burst")
    parser.add_argument("--json", type=Path, help="default var/bench/incident-BACKEND.json")
    parser.add_argument(
        "--no-drills",
        action="store_true",
        help="partners without the demo's behaviour faults (model faults kept)",
    )
    args = parser.parse_args()
    drills = "" if args.no_drills else "-drills"
    out = args.json or Path("var/bench") / f"incident-{args.backend}{drills}.json"
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        async with (
            database(args.backend, tmp) as url,
            running_stack(
                workdir,
                url if args.backend == "postgres" else None,
                out.with_suffix(".logs"),
                drills=not args.no_drills,
            ) as stack,
        ):
            summary = await measure(stack, args)
    label = ", no drills" if args.no_drills else ", with the demo's partner drills"
    report(args.backend + label, summary, args.bursts)
    summary["backend"] = args.backend
    summary["drills"] = not args.no_drills
    summary["machine"] = {"cpus": os.cpu_count(), "load_avg": os.getloadavg()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1, default=str))
    print(f"  written to {out}")


if __name__ == "__main__":
    run_and_exit(main())
