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

Figures (2 Dec 2026, SQLite, this 2-core machine shared with three other sessions at load
average 9-16: the bare anchor itself moved 3.1-12.7 workflows/s between runs, so only
differences well beyond that mean anything; ``--rounds 2 --samples 10`` unless said):

| run | p50 | p99 | 50 / 100 at once | CPU (gateway+worker, dev server) |
|---|---|---|---|---|
| before (b93ad48), drills, 3 x 15 | 870 ms, 5.3x | 2019 ms, 2.6x | 31% / 33% | 350 + 121 ms, 4.4x |
| after (e0625ee), drills | 813 ms, 5.8x | 1113 ms, 2.9x | 22% / 20% | 293 + 104 ms, 4.8x |
| before, ``--no-drills`` | 579 ms, 3.0x | 1301 ms, 2.7x | 44% / 34% | 336 + 109 ms, 4.2x |
| after, ``--no-drills`` | 1115 ms, 4.4x | 1515 ms, 1.5x | 29% / 29% | 324 + 119 ms, 4.1x |
| PG before, no drills, 2 x 8 | 882 ms, 7.1x | 1525 ms, 5.4x | 24% / 6% | 383 + 125 ms, 5.5x |
| PG after, no drills, 2 x 8 | 690 ms, 5.7x | 1103 ms, 1.0x | 17% / 15% | 368 + 117 ms, 5.4x |

On PostgreSQL 100 at once went from 0.7 to 1.9 incidents/s (the bare anchor 11.0 and
12.5): the bank's in-flight window of 32 fills there, and each acknowledgement that
opened it used to wait for the stream's next safety read, a second later.

Counted rather than timed (same stack, ``--no-drills`` partners): Acknowledge calls per
incident 10.0 -> 9.6 one at a time and 10.1 -> 6.1 with 50 opened at once (the SDK's
shared acknowledgements), for 10 work items each.

Fewer transactions and statements (branch speed3; SQLite, ``--no-drills``, 2 x 10, the
same load; 6c8689f before, 8dc1503 after):

| run | p50 | p99 | 50 / 100 at once | CPU (gateway+worker, dev server) |
|---|---|---|---|---|
| before | 337 ms, 3.6x | 464 ms, 2.5x | 38% / 24% | 280 + 102 ms, 4.4x |
| after | 357 ms, 3.4x | 494 ms, 1.9x | 22% / 28% | 260 + 102 ms, 4.2x |
| after, drills, 3 x 15 | 736 ms, 6.0x | 1974 ms, 4.0x | 26% / 32% | 296 + 115 ms, 4.2x |

Counted with a (temporary) SQLite trace callback in `coopgate up`, per incident over the
158 of a ``--rounds 1 --samples 5`` run: transactions 65.1 -> 52.5 (work delivery's idle
reads 17.4 -> 5.9: one statement outside any transaction, a write only to deliver),
statements 472 -> 436 (executemany rows each; case-key reads 59.0 -> 37.6, work enqueue
37.2 -> 27.5). Left: WatchCase reads 16.5 and idempotency 15.3 transactions, the audit
group commit 7.3 (the watcher's audited reads), orchestration steps 4.0.

Hot statements straight on the SQLite driver (branch speed4: `statements.execute`,
`execute_in` and `DriverStatement.rows` on the inline driver; 568592a before, 64427b7
after). Interleaved on the same machine, load average 3.6-5.5 (other sessions'
benchmarks), before from a checkout of 568592a on PYTHONPATH, ``--rounds 2 --samples 10``:

| run | p50 | p99 | 50 / 100 at once | CPU (gateway+worker, dev server) |
|---|---|---|---|---|
| before, ``--no-drills`` | 147 ms, 3.7x | 301 ms, 2.4x | 27% / 23% | 118 + 49 ms, 4.1x |
| after, ``--no-drills`` | 160 ms, 2.7x | 189 ms, 1.4x | 32% / 25% | 112 + 48 ms, 3.5x |
| before, drills | 529 ms, 10.9x | 711 ms (bare 20 s) | 20% / 28% | 136 + 52 ms, 4.1x |
| after, drills | 537 ms, 11.5x | 669 ms, 3.6x | 29% / 28% | 115 + 54 ms, 3.8x |

The bare anchor moved 40-58 ms p50 and 17-42 workflows/s between bursts, and one bare
workflow in a burst now and then takes 20 s (two workflow task timeouts), so latency and
throughput ratios swing with it. CPU per incident measured apart, three interleaved pairs
(30 incidents one at a time, then two bursts of 50; no drills; load 3-9): gateway+worker
129/130/139 -> 112/111/108 ms one at a time, 119/123/128 -> 110/107/108 ms in bursts; the
dev server 47-49 -> 44-47 ms. Statements through SQLAlchemy's Core execution per
incident (counted over 23 incidents): 206 -> 66 at 22e5045 (the consent lookup's 8 went
since), and its 63 driver statements per incident now skip its execution context. With
the telemetry store off (``COOPGATE_TELEMETRY_STORE=false``, so no spans) the same stack
took 86 ms per incident (3.0x): tracing every call, activity and step costs about a
tenth of the process.

The rest of the per-incident statements on the SQLite driver, and one kept writer
connection (branch speed5: e0b18f8 before; 4cc86f7 the acknowledgement's and
delivery's ``IN`` lists, OpenCase, the key inserts, the audit node reads and the writer
connection; 28f53c6 the idempotency, incident context, owner and case view statements
too). Interleaved from checkouts on PYTHONPATH, load average 3-14, ``--rounds 2
--samples 10 --no-drills``, two runs:

| run | p50 | p99 | 50 / 100 at once | CPU (gateway+worker, dev server) |
|---|---|---|---|---|
| before, run 1 | 220 ms, 4.0x | 371 ms, 4.0x | 32% / 37% | 121 + 49 ms, 3.3x |
| 4cc86f7, run 1 | 144 ms, 3.0x | 196 ms, 2.0x | 42% / 49% | 104 + 45 ms, 2.9x |
| before, run 2 | 160 ms, 3.2x | 349 ms, 0.8x | 41% / 28% | 112 + 50 ms, 3.4x |
| 28f53c6, run 2 | 137 ms, 2.5x | 259 ms, 2.2x | 34% / 25% | 97 + 47 ms, 3.2x |

The CPU ratio moves with the bare anchor's own CPU (52 ms in run 1, 44-47 in run 2).
CPU per incident measured apart (as speed4's, gateway+worker, 30 one at a time / two
bursts of 50): before 115/112, 122/120, 112/112, 104/106 ms; after the statements alone
(c406963) 111/110, 116/116, 110/107; with the writer connection (4cc86f7) 106/102,
108/109, 101/94, 97/98; 28f53c6 96/98, 95/99 ms: 9-15% less than speed4's head
(itself 12-15% less than before it), the dev server unchanged (44-52 ms). Two of the 15
measuring clients crashed at exit (a fatal error in an extension at shutdown, base and
4cc86f7 alike) after their figures, which were lost. In py-spy's GIL-holding samples
of `coopgate up` (``--rounds 1 --samples 10``, e467dbf), stacks with a SQLAlchemy frame
fell from 16% (speed4's profile) to 10%; what is left there: the read transactions'
connect, begin and close (`Store.read`), the watch's and the header's reads, and the
idempotency record.

The drills' extra ~400 ms is the partners' (workflow histories, 8 incidents): three
findings are in by 47-90 ms, the acquirer's real one 309-538 ms after the start, after
the gateway refused its malformed first finding and the SDK's redelivery backoff
(0.25-0.5 s) ran out; from the last finding to the owner takes 45-70 ms, as without
drills.

PostgreSQL's hot statements on asyncpg itself, and its reads in autocommit (branch
speed8: df2624a before, 7ea9427 after; `statements.execute`/`execute_in`/
`DriverStatement.rows` on the transaction's asyncpg connection, no BEGIN/COMMIT around
reads, the NOTIFY and the work locks on the driver). ``--backend postgres --rounds 2
--samples 10 --no-drills``, interleaved from checkouts on PYTHONPATH (load average at
each run's start and end):

| run | p50 | p99 | 50 / 100 at once | CPU (gateway+worker, dev server) | load |
|---|---|---|---|---|---|
| before 1 | 280 ms, 3.8x | 557 ms, 4.9x | 18% / 22% | 185 + 63 ms, 4.2x | 3.3-8.3 |
| after 1 | 298 ms, 4.3x | 636 ms, 3.5x | 42% / 25% | 155 + 61 ms, 3.8x | 8.3-6.4 |
| before 2 | 359 ms, 4.4x | 612 ms, 3.3x | 13% / 15% | 222 + 79 ms, 5.2x | 6.4-5.3 |
| after 2 | 247 ms, 4.6x | 410 ms, 3.6x | 21% / 21% | 163 + 63 ms, 4.6x | 5.3-9.2 |
| before 3 | 336 ms, 3.6x | 643 ms, 2.1x | 23% / 18% | 210 + 73 ms, 4.4x | 9.2-6.8 |
| after 3 | 307 ms, 4.8x | 473 ms, 5.0x | 21% / 24% | 153 + 60 ms, 4.2x | 6.8-6.0 |
| before 4 | 363 ms, 5.7x | 550 ms, 5.6x | 15% / 17% | 203 + 71 ms, 5.0x | 6.0-4.4 |
| after 4 | 346 ms, 2.8x | 828 ms, 1.5x | 38% / 23% | 179 + 69 ms, 4.3x | 4.4-9.0 |

Gateway+worker CPU per incident 185-222 (median 207) -> 153-179 ms (median 159), the
dev server 63-79 -> 60-69 ms; latency and throughput ratios move with the bare anchor
(p50 69-82 ms, 9.5-24 workflows/s) more than with the change. In py-spy's samples of
`coopgate up` (80 s of a run each) stacks with a SQLAlchemy frame fell from 30% to 13%;
a fifth of the samples are still in the socket writes of a statement's round trip to
PostgreSQL (one per statement, and BEGIN and COMMIT per write); Temporal's
worker has 21% and OpenTelemetry 11%. Left on SQLAlchemy's execution (2% of samples):
the audit append (`exec_driver_sql` inside `run_sync`, on the driver since 94fd670),
OpenCase's new subject and link inserts, the escalation step and `CaseFeed`'s poll.

With the audit append on the driver too (94fd670), two more pairs while another
session's benchmark ran (load 5.5-10.7): 250 + 84 / 242 + 86 ms before, 240 + 94 /
198 + 79 ms after (CPU per incident inflates with the load on both sides).
SQLite (the same checkouts, two pairs, ``--backend sqlite``, load 1.6-10): 135 + 61 /
126 + 66 ms before, 151 + 81 / 136 + 74 ms after; the dev server, which nothing here
touches, moved as much, and SQLite's path only gained a method call per statement.
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
    out = args.json or Path("var/bench") / f"incident-{args.backend}.json"
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
    report(args.backend + ("" if not args.no_drills else ", no drills"), summary, args.bursts)
    summary["backend"] = args.backend
    summary["drills"] = not args.no_drills
    summary["machine"] = {"cpus": os.cpu_count(), "load_avg": os.getloadavg()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1, default=str))
    print(f"  written to {out}")


if __name__ == "__main__":
    run_and_exit(main())
