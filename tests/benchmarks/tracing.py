"""What tracing costs: the case view's throughput and an incident's latency with tracing
off and on (every trace sampled, spans and metrics to the embedded store, as `coopgate up`
keeps them), side by side in one run.

Four stacks in this process, built off, on, on, off (`LAYOUT`: a stack built later runs
a little slower), with telemetry off (no OpenTelemetry or Temporal tracing interceptor,
no per-call measure) or on, over one Temporal dev server; each round runs all four,
starting one further on each time, so the machine's noise falls on both modes. The
process's switches (`set_tracing`) follow the stack: off means what
`OTEL_SDK_DISABLED=true` gives.

- view: `tests.benchmarks.case_view`'s load generator (a child process) on a case of 200
  items, at 1 and 16 concurrent callers;
- incident: OpenCase until the owner's AcceptOwnership returned, the four partners
  answering their diagnosis requests at once through the SDK (work streams, findings,
  the workflow's decision, the offer), incidents one after another. The partners run
  in a process of their own, as other companies' systems do, with no OpenTelemetry
  SDK: they pass the trace context on and record nothing, so what is measured is the
  gateway's tracing. ``--partners-in-process`` runs them in this process instead, where
  their consumer spans go to the gateway's store and their work shares its loop.

    python -m tests.benchmarks.tracing [--seconds 3] [--rounds 7] [--incidents 8]
        [--partners-in-process] [--json var/bench/tracing.json]

Each figure is the median over rounds of that round's on over its off (each mode's two
stacks together), with the rounds' lowest and highest. The figures measured, and what
changed between them, are in docs/BENCHMARKS.md ("Tracing's cost").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from gateway.core.caller import Role
from gateway.orchestration.devserver import DEV_SERVER_TUNING
from gateway.orchestration.temporal import create_worker
from gateway.orchestration.tracing import client_interceptors
from gateway.settings import Settings
from gateway.stack import (
    Pki,
    Runtime,
    ensure_pki,
    freeze_heap,
    open_runtime,
    start_gateway,
)
from gateway.telemetry import configure, set_tracing
from partners import (
    Channel,
    DiagnosisRequest,
    FindingStatus,
    OwnershipOffer,
    PartnerClient,
    PartnerCredentials,
    WorkItem,
)
from tests.benchmarks.case_view import run_child, seed_case
from tests.benchmarks.common import run_and_exit

NFC = {
    "sim-secure-element": "telco-a",
    "card-token": "bank-a",
    "payment-terminal": "acquirer-a",
    "nfc-stack": "handset-a",
}


@dataclass
class Side:
    """One stack: its gateway's address, its seeded case, its incidents' clocks."""

    name: str
    on: bool
    runtime: Runtime
    target: str
    client: Client
    settings: Settings
    case_id: str = ""
    owned: dict[str, asyncio.Event] = field(default_factory=dict)
    #: Per-call and KPI measures while this stack runs (with tracing, unless told).
    measures: bool = False

    def use(self) -> None:
        """The process's switches as this stack was built (they are read per call)."""
        set_tracing(self.on, metrics=self.measures)


@contextlib.asynccontextmanager
async def side(
    name: str,
    on: bool,
    env: WorkflowEnvironment,
    pki: Pki,
    workdir: Path,
    *,
    temporal_tracing: bool = True,
    measures: bool | None = None,
) -> AsyncIterator[Side]:
    """A stack built with telemetry ``on`` or off (interceptors are chosen when built);
    without ``temporal_tracing``, its Temporal client has no tracing interceptor;
    ``measures`` false: no per-call or KPI measures (default: as ``on``)."""
    measures = on if measures is None else measures
    set_tracing(on, metrics=measures)  # as `Side.use`: the interceptors are chosen now
    client = await Client.connect(
        env.client.service_client.config.target_host,
        namespace=env.client.namespace,
        interceptors=client_interceptors() if temporal_tracing else [],
    )
    data_dir = workdir / name
    data_dir.mkdir()
    settings = Settings(
        data_dir=data_dir,
        listen="127.0.0.1:0",
        database_url=f"sqlite:///{data_dir / 'coopgate.db'}",
        task_queue=f"bench-{name}-{uuid.uuid4().hex[:8]}",
        checkpoint_interval_seconds=0,
    )
    async with open_runtime(settings, client=client, seed=True) as runtime:
        case_id, _ = await seed_case(runtime, "nfc-payment")
        gateway = await start_gateway(runtime, pki)
        try:
            target = f"127.0.0.1:{gateway.port}"
            yield Side(
                name,
                on,
                runtime,
                target,
                client,
                settings,
                case_id,
                measures=measures,
            )
        finally:
            await gateway.stop(0)


def credentials(pki: Pki, out: Path, partner: str, role: Role) -> PartnerCredentials:
    files = pki.ca.issue_client(out, partner, role)
    return PartnerCredentials(cert=files.cert, key=files.key, ca=files.ca)


#: A partner's client certificate, key and CA, as paths.
Files = dict[str, list[str]]


def partner_files(pki: Pki, out: Path) -> Files:
    """Each partner of the NFC chain's credentials, as files a child process reads."""
    files: Files = {}
    for partner in sorted(set(NFC.values())):
        made = credentials(pki, out, partner, Role.PARTNER)
        files[partner] = [str(made.cert), str(made.key), str(made.ca)]
    return files


async def partners_answering(
    target: str, files: Files, owned: Callable[[str], None]
) -> contextlib.AsyncExitStack:
    """Each partner of the NFC chain answers its diagnosis requests at once (the SIM is
    faulty); the bank accepts ownership, which ends the incident's clock (``owned``
    is told the case)."""
    stack = contextlib.AsyncExitStack()
    for _, (cert, key, ca) in sorted(files.items()):
        client = PartnerClient(target, PartnerCredentials(Path(cert), Path(key), Path(ca)))
        stack.push_async_callback(client.close)  # after its stream ends (last in, first out)

        async def handle(item: WorkItem, client: PartnerClient = client) -> None:
            work = item.payload
            if isinstance(work, DiagnosisRequest):
                faulty = work.component == "sim-secure-element"
                await client.submit_finding(
                    work.case_id,
                    request_id=work.request_id,
                    component=work.component,
                    status=FindingStatus.FAULTY if faulty else FindingStatus.OK,
                    confidence=0.9 if faulty else 0.95,
                    fault_code="SE_LOCKED" if faulty else "",
                    idempotency_key=f"f-{work.request_id}",
                )
            elif isinstance(work, OwnershipOffer):
                await client.accept_ownership(
                    work.case_id, work.offer_id, idempotency_key=f"a-{work.offer_id}"
                )
                owned(work.case_id)

        await stack.enter_async_context(client.subscribe(handle))
    return stack


def owned_in(one: Side) -> Callable[[str], None]:
    return lambda case_id: one.owned.setdefault(case_id, asyncio.Event()).set()


async def partners_child(spec: str) -> None:
    """The partners' own process (``--partners-for SPEC``): every stack's partners
    answer; each accepted ownership is one line, ``owned STACK CASE``, on stdout; the
    process ends when its stdin closes. No OpenTelemetry SDK here: the partners pass
    the trace context on (as the SDK does without one) and record nothing."""
    wanted = json.loads(spec)
    async with contextlib.AsyncExitStack() as stack:
        for name, target in wanted["targets"].items():

            def owned(case_id: str, name: str = name) -> None:
                print(f"owned {name} {case_id}", flush=True)

            await stack.enter_async_context(
                await partners_answering(target, wanted["files"], owned)
            )
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


@contextlib.asynccontextmanager
async def partners_process(sides: list[Side], files: Files) -> AsyncIterator[None]:
    """The partners in a process of their own (`partners_child`) for the block: they are
    other companies' systems, whose work and tracing are not the gateway's."""
    spec = json.dumps({"targets": {one.name: one.target for one in sides}, "files": files})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.benchmarks.tracing", "--partners-for", spec,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None
    assert process.stdout is not None
    stdout = process.stdout
    try:
        ready = await asyncio.wait_for(stdout.readline(), 60)
        if ready.strip() != b"ready":
            raise RuntimeError(f"the partners' process did not start: {ready[:200]!r}")
        by_name = {one.name: one for one in sides}

        async def read() -> None:
            async for line in stdout:
                _, name, case_id = line.decode().split()
                owned_in(by_name[name])(case_id)

        reading = asyncio.create_task(read())
        try:
            yield
        finally:
            reading.cancel()
    finally:
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def incidents_served(
    sides: list[Side],
    pki: Pki,
    out: Path,
    *,
    partners_in_process: bool = False,
    warmup: int = 1,
) -> AsyncIterator[dict[str, PartnerClient]]:
    """Each stack's worker and answering partners (`partners_process`, or here), and an
    advisor per stack (by name), each stack having run ``warmup`` incidents not counted
    (connections, caches)."""
    async with contextlib.AsyncExitStack() as served:
        for one in sides:
            one.use()
            await served.enter_async_context(
                create_worker(one.client, one.settings.task_queue, one.runtime.activities)
            )
        answering = partner_files(pki, out)
        if partners_in_process:
            for one in sides:
                one.use()
                await served.enter_async_context(
                    await partners_answering(one.target, answering, owned_in(one))
                )
        else:
            await served.enter_async_context(partners_process(sides, answering))
        advisors: dict[str, PartnerClient] = {}
        for one in sides:
            advisor = PartnerClient(
                one.target, credentials(pki, out, "bank-a", Role.ADVISOR), person="bench"
            )
            served.push_async_callback(advisor.close)
            advisors[one.name] = advisor
        for one in sides:
            one.use()
            for _ in range(warmup):
                await incident(one, advisor=advisors[one.name])
        yield advisors


async def incident(one: Side, advisor: PartnerClient) -> float:
    started = time.perf_counter()
    opened = await advisor.open_case(
        service_id="nfc-payment",
        customer_local_id=f"bench-{uuid.uuid4().hex[:8]}",
        channel=Channel.PHONE,
        summary="cannot pay by phone",
    )
    owned = one.owned.setdefault(opened.case_id, asyncio.Event())
    await asyncio.wait_for(owned.wait(), 60)
    return time.perf_counter() - started


def pct(ratio: float) -> str:
    return f"{ratio - 1:+.1%}"


#: The stacks, built in this order (off, on, on, off): a stack built later ran a few
#: percent slower than one built before it in the same process, whatever its telemetry
#: (measured: on vs off at 16 callers -13.3% built off-then-on, -10.1% on-then-off), and
#: in this order each mode's mean place is the same.
LAYOUT = (("off-1", False), ("on-1", True), ("on-2", True), ("off-2", False))


def ordered(sides: list[Side], round_: int) -> list[Side]:
    """Each round starts one stack further on: a machine getting busier or quieter
    during a round weighs on every stack alike over the run."""
    start = round_ % len(sides)
    return sides[start:] + sides[:start]


def mode(one: Side) -> str:
    return "on" if one.on else "off"


def paired(on: list[float], off: list[float]) -> float:
    """The median over rounds of on / off within each round (the two ran back to back):
    steadier than the ratio of the two medians when the machine's load drifts."""
    return statistics.median(a / b for a, b in zip(on, off, strict=True))


def spread(on: list[float], off: list[float]) -> str:
    """The rounds' lowest and highest on / off: how far one round's figure can be trusted."""
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    return f"rounds {pct(min(ratios))}..{pct(max(ratios))}"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--incidents", type=int, default=8, help="per stack and round")
    parser.add_argument("--json", type=Path, default=Path("var/bench/tracing.json"))
    parser.add_argument(
        "--partners-in-process",
        action="store_true",
        help="the incidents' partners in this process (their spans then count as ours)",
    )
    parser.add_argument("--partners-for", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.partners_for:
        await partners_child(args.partners_for)
        return
    os.environ.setdefault("OTEL_TRACES_SAMPLER", "always_on")
    results: dict[str, object] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "sampler": os.environ["OTEL_TRACES_SAMPLER"],
    }

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
            dev_server_extra_args=list(DEV_SERVER_TUNING),
        )
        telemetry = configure(Settings(data_dir=workdir))  # the embedded store, as `up`
        pki = ensure_pki(Settings(data_dir=workdir))
        out = workdir / "clients"
        files = pki.ca.issue_client(out, "bank-a", Role.ADVISOR)
        tls = ["--cert", str(files.cert), "--key", str(files.key), "--ca", str(files.ca)]
        async with contextlib.AsyncExitStack() as built:
            sides = [
                await built.enter_async_context(side(name, on, env, pki, workdir))
                for name, on in LAYOUT
            ]
            freeze_heap()  # as `coopgate up` does once serving
            print(
                "tracing off vs on (100% sampled, spans and metrics to the embedded store); "
                "shared machine: ratios within one run only, each round's on over its off"
            )
            for concurrency in (1, 16):
                rps: dict[str, list[float]] = {"off": [], "on": []}
                cpu: dict[str, list[float]] = {"off": [], "on": []}
                for round_ in range(args.rounds):
                    # Per mode, this round: calls, seconds, CPU seconds (both stacks).
                    sums = {"off": [0.0, 0.0, 0.0], "on": [0.0, 0.0, 0.0]}
                    for one in ordered(sides, round_):
                        one.use()
                        cpu_before = time.process_time()
                        line = await run_child(
                            [
                                "--client", "load", "--method", "view", "--target", one.target,
                                "--case-id", one.case_id, "--concurrency", str(concurrency),
                                "--seconds", str(args.seconds), "--warmup", str(args.warmup),
                                *tls,
                            ]
                        )  # fmt: skip
                        # This process's CPU per call (the gateway's work, its exporters'
                        # threads included; warm-up calls count in both modes alike):
                        # steadier than rps on a shared machine.
                        used = time.process_time() - cpu_before
                        calls = json.loads(line)["rps"] * args.seconds
                        total = sums[mode(one)]
                        total[0] += calls
                        total[1] += args.seconds
                        total[2] += used
                    for name, (calls, seconds, used) in sums.items():
                        rps[name].append(calls / seconds)
                        cpu[name].append(used / calls * 1e6)
                throughput = paired(rps["on"], rps["off"])
                per_call = paired(cpu["on"], cpu["off"])
                median = {k: statistics.median(v) for k, v in rps.items()}
                cpu_median = {k: statistics.median(v) for k, v in cpu.items()}
                results[f"view_{concurrency}"] = {
                    "rps": rps,
                    "cpu_us_per_call": cpu,
                    "throughput_on_vs_off": throughput - 1,
                    "cpu_per_call_on_vs_off": per_call - 1,
                }
                print(
                    f"  view, {concurrency:>2} callers: off {median['off']:5.0f} rps "
                    f"{cpu_median['off']:5.0f} µs CPU/call | on {median['on']:5.0f} rps "
                    f"{cpu_median['on']:5.0f} µs CPU/call\n"
                    f"      on vs off: throughput {pct(throughput)} "
                    f"({spread(rps['on'], rps['off'])}), CPU/call {pct(per_call)} "
                    f"({spread(cpu['on'], cpu['off'])})\n"
                    f"      rounds rps off {[round(r) for r in rps['off']]} "
                    f"on {[round(r) for r in rps['on']]}"
                )

            latencies: dict[str, list[list[float]]] = {"off": [], "on": []}
            async with incidents_served(
                sides, pki, out, partners_in_process=args.partners_in_process
            ) as advisors:
                for round_ in range(args.rounds):
                    took: dict[str, list[float]] = {"off": [], "on": []}
                    for one in ordered(sides, round_):
                        one.use()
                        took[mode(one)] += [
                            await incident(one, advisors[one.name]) for _ in range(args.incidents)
                        ]
                    for name, durations in took.items():
                        latencies[name].append(durations)
            p50 = {
                k: statistics.median(x for r in v for x in r) * 1000 for k, v in latencies.items()
            }
            medians = {k: [statistics.median(r) for r in v] for k, v in latencies.items()}
            ratio = paired(medians["on"], medians["off"])
            results["incident"] = {
                "seconds": latencies,
                "p50_ms": p50,
                "latency_on_vs_off": ratio - 1,
            }
            print(
                f"  incident, OpenCase to owner accepted: p50 off {p50['off']:6.0f} ms | "
                f"on {p50['on']:6.0f} ms | on vs off {pct(ratio)} "
                f"({spread(medians['on'], medians['off'])}; "
                f"n={sum(map(len, latencies['on']))} each, partners "
                f"{'in this process' if args.partners_in_process else 'in their own'})"
            )
        telemetry.shutdown()
        await env.shutdown()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(f"  figures in {args.json}")


if __name__ == "__main__":
    run_and_exit(main())
