"""Benchmark: the consent-filtered view of a case with 200 timeline items from 4
partners, served over mTLS, at 1, 16 and 64 concurrent callers, next to a bare
grpc.aio echo server (same mTLS, same response size) measured in the same run;
then 1,000 concurrent watchers, each timed from an event to its delivery.

The load runs in a separate process, so client and server each have a core; both
clients take the reply as bytes (the server is what is measured). Each run is preceded
by `--warmup` seconds of the same load, not counted. A third server, the
gateway's own interceptors around the same fixed reply, shows what any gateway method
costs before it does anything (the floor the view stands on).

    python -m tests.benchmarks.case_view [--seconds 5] [--warmup 0.5] [--rounds 3]
        [--watchers 1000]
        [--backend sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from coopgate.v1 import admin_pb2, cases_pb2, cases_pb2_grpc, common_pb2, consents_pb2
from temporalio.testing import WorkflowEnvironment

from gateway.api.interceptors import GatewayInterceptor
from gateway.core.caller import Caller, Role
from gateway.orchestration.devserver import DEV_SERVER_TUNING
from gateway.settings import Settings
from gateway.stack import (
    Runtime,
    ensure_pki,
    freeze_heap,
    open_runtime,
    start_gateway,
)
from gateway.telemetry import tracing_on
from gateway.telemetry.server import ServerSpans
from tests.benchmarks.common import database, run_and_exit, summarize

ECHO_METHOD = "/bench.Echo/Get"
PARTNERS = ("bank-a", "telco-a", "acquirer-a", "handset-a")
CATEGORIES = {
    "bank-a": "interaction.history",
    "telco-a": "device.sim",
    "acquirer-a": "payment.transactions",
    "handset-a": "device.handset",
}


def _channel(target: str, cert: str, key: str, ca: str) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes(),
        certificate_chain=Path(cert).read_bytes(),
    )
    return grpc.aio.secure_channel(
        target, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    )


async def client_load(args: argparse.Namespace) -> None:
    """The load generator (child process): prints one JSON line of results."""
    channel = _channel(args.target, args.cert, args.key, args.ca)
    if args.method in ("echo", "floor"):
        echo: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(ECHO_METHOD)

        async def one() -> int:
            return len(await echo(b"x"))

    else:
        request = cases_pb2.GetCaseViewRequest(case_id=args.case_id, purpose="incident-resolution")
        # Like the echo client, the load takes the reply as bytes: what is measured is the
        # server, not the client's parsing. The first reply is parsed and checked.
        view: grpc.aio.UnaryUnaryMultiCallable[cases_pb2.GetCaseViewRequest, bytes] = (
            channel.unary_unary(
                "/coopgate.v1.CaseService/GetCaseView",
                request_serializer=cases_pb2.GetCaseViewRequest.SerializeToString,
            )
        )
        first = cases_pb2.GetCaseViewResponse.FromString(await view(request))
        assert len(first.view.timeline) >= 200, len(first.view.timeline)

        async def one() -> int:
            return len(await view(request))

    size = await one()
    # The load generator's own collector stays out of what it measures (timeit turns it
    # off for the same reason): what it made to start is frozen, none of it walked.
    gc.collect()
    gc.freeze()
    samples: list[int] = []
    # All callers start at once: their first calls (connection windows, the server's
    # first batch of them) are a warm-up, run but not counted.
    measured_from = time.perf_counter_ns() + int(args.warmup * 1e9)
    deadline_ns = measured_from + int(args.seconds * 1e9)

    async def caller() -> None:
        while (t0 := time.perf_counter_ns()) < deadline_ns:
            await one()
            if t0 >= measured_from:
                samples.append(time.perf_counter_ns() - t0)

    await asyncio.gather(*(caller() for _ in range(args.concurrency)))
    latency = summarize(samples)
    print(
        json.dumps(
            {
                # calls started in the measured window, over its length
                "rps": len(samples) / args.seconds,
                "p50_ms": latency.p50_us / 1000,
                "p99_ms": latency.p99_us / 1000,
                "bytes": size,
            }
        ),
        flush=True,
    )
    await channel.close()


async def client_watchers(args: argparse.Namespace) -> None:
    """Open N watches; report when each received the marker event (child process)."""
    channels = [_channel(args.target, args.cert, args.key, args.ca) for _ in range(8)]
    ready = 0
    arrivals: list[float] = []
    all_ready = asyncio.Event()

    async def watcher(i: int) -> None:
        nonlocal ready
        stub = cases_pb2_grpc.CaseServiceStub(channels[i % len(channels)])
        call = stub.WatchCase(
            cases_pb2.WatchCaseRequest(
                case_id=args.case_id, purpose="incident-resolution", after_sequence=args.after
            )
        )
        first = True
        async for response in call:
            if first:
                first = False
                ready += 1
                if ready == args.watchers:
                    all_ready.set()
            if response.item.interaction.summary == "marker":
                arrivals.append(time.time())
                call.cancel()
                return

    tasks = [asyncio.create_task(watcher(i)) for i in range(args.watchers)]
    await asyncio.wait_for(all_ready.wait(), 120)
    print("READY", flush=True)
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
    print(json.dumps({"arrivals": arrivals}), flush=True)
    for channel in channels:
        await channel.close()


def echo_server(payload: bytes, *, gateway_interceptors: bool = False) -> grpc.aio.Server:
    """The bare echo server; with ``gateway_interceptors``, the gateway's own server stack
    (tracing, the caller from the certificate, error mapping) around the same fixed reply:
    what any gateway method costs before it does anything."""

    async def get(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return payload

    spans = ServerSpans() if tracing_on() else None
    server = grpc.aio.server(
        interceptors=[GatewayInterceptor(spans=spans)] if gateway_interceptors else None
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "bench.Echo", {"Get": grpc.unary_unary_rpc_method_handler(get)}
            )
        ]
    )
    return server


async def seed_case(runtime: Runtime, service_id: str) -> tuple[str, int]:
    """A case at the bank with 200 items from 4 partners; the bank may see all of it."""
    domain = runtime.domain
    admin = Caller("coopgate", Role.ADMIN)
    for partner in PARTNERS[1:]:
        await domain.agreements.define_sharing_agreement(
            admin,
            admin_pb2.DefineSharingAgreementRequest(
                idempotency_key=uuid.uuid4().hex,
                agreement=admin_pb2.SharingAgreement(
                    source_partner_id=partner,
                    recipient_partner_id="bank-a",
                    service_id=service_id,
                    categories=[CATEGORIES[partner]],
                    purposes=["incident-resolution"],
                ),
            ),
        )
    bank = Caller("bank-a", Role.ADVISOR, "bench")
    opened = await domain.cases.intake.open_case(
        bank,
        cases_pb2.OpenCaseRequest(
            idempotency_key=uuid.uuid4().hex,
            service_id=service_id,
            customer_local_id="bench-customer",
            channel=common_pb2.CHANNEL_PHONE,
            summary="cannot pay by phone",
        ),
    )
    for partner in PARTNERS[1:]:
        await domain.consents.grant(
            bank,
            consents_pb2.GrantConsentRequest(
                idempotency_key=uuid.uuid4().hex,
                customer_local_id="bench-customer",
                source_partner_id=partner,
                recipient_partner_ids=["bank-a"],
                categories=[CATEGORIES[partner]],
                purposes=["incident-resolution"],
                channel=common_pb2.CHANNEL_PHONE,
                notice_version="bench",
            ),
        )
    count = 0
    while True:
        view = await domain.cases.views.get_view(
            bank,
            cases_pb2.GetCaseViewRequest(case_id=opened.case_id, purpose="incident-resolution"),
        )
        count = len(view.view.timeline)
        if count >= 200:
            return opened.case_id, view.view.position
        for i in range(200 - count):
            partner = PARTNERS[i % 4]
            await domain.cases.intake.append_interaction(
                Caller(partner, Role.ADVISOR, "bench"),
                cases_pb2.AppendInteractionRequest(
                    idempotency_key=uuid.uuid4().hex,
                    case_id=opened.case_id,
                    interaction=cases_pb2.Interaction(
                        channel=common_pb2.CHANNEL_CHAT,
                        summary=f"{partner} note {i}: checked component state, nothing unusual",
                        category=CATEGORIES[partner],
                    ),
                ),
            )


def _median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median throughput (its latencies come with it)."""
    return sorted(runs, key=lambda run: run["rps"])[len(runs) // 2]


async def run_child(args: list[str]) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.benchmarks.case_view", *args, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await process.communicate()
    return stdout.decode().strip().splitlines()[-1]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of load not counted")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--client", choices=["load", "watchers"])
    parser.add_argument("--method", choices=["view", "echo", "floor"], default="view")
    parser.add_argument("--target")
    parser.add_argument("--case-id")
    parser.add_argument("--after", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--ca")
    args = parser.parse_args()
    if args.client == "load":
        await client_load(args)
        return
    if args.client == "watchers":
        await client_watchers(args)
        return

    with tempfile.TemporaryDirectory() as workdir:
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
            dev_server_extra_args=list(DEV_SERVER_TUNING),
        )
        async with database(args.backend, workdir) as url:
            settings = Settings(
                data_dir=Path(workdir),
                listen="127.0.0.1:0",
                database_url=url,
                task_queue=f"bench-{uuid.uuid4()}",
            )
            pki = ensure_pki(settings)
            files = pki.ca.issue_client(Path(workdir) / "clients", "bank-a", Role.ADVISOR)
            tls = ["--cert", str(files.cert), "--key", str(files.key), "--ca", str(files.ca)]
            async with open_runtime(settings, client=env.client, seed=True) as runtime:
                # No worker: the case stays as seeded, the view is what is measured.
                case_id, position = await seed_case(runtime, "nfc-payment")
                gateway = await start_gateway(runtime, pki)
                freeze_heap()  # as `coopgate up` and `coopgate gateway` do once serving
                target = f"127.0.0.1:{gateway.port}"
                probe = await runtime.domain.cases.views.get_view(
                    Caller("bank-a", Role.ADVISOR),
                    cases_pb2.GetCaseViewRequest(case_id=case_id, purpose="incident-resolution"),
                )
                payload = probe.SerializeToString()
                echo = echo_server(payload)
                echo_port = echo.add_secure_port("127.0.0.1:0", pki.server.credentials())
                await echo.start()
                floor = echo_server(payload, gateway_interceptors=True)
                floor_port = floor.add_secure_port("127.0.0.1:0", pki.server.credentials())
                await floor.start()
                print(
                    f"[{args.backend}] view of {len(probe.view.timeline)} items, "
                    f"{len(payload)} bytes; withheld {len(probe.view.withheld)} groups"
                )
                for concurrency in (1, 16, 64):
                    # Echo and view alternate, `--rounds` times each: the machine's noise
                    # falls on both, and the medians are reported.
                    runs: dict[str, list[dict[str, float]]] = {"echo": [], "floor": [], "view": []}
                    for _ in range(args.rounds):
                        for method, where in (
                            ("echo", f"127.0.0.1:{echo_port}"),
                            ("floor", f"127.0.0.1:{floor_port}"),
                            ("view", target),
                        ):
                            line = await run_child(
                                [
                                    "--client", "load", "--method", method, "--target", where,
                                    "--case-id", case_id, "--concurrency", str(concurrency),
                                    "--seconds", str(args.seconds),
                                    "--warmup", str(args.warmup), *tls,
                                ]
                            )  # fmt: skip
                            runs[method].append(json.loads(line))
                    view, bare = _median_run(runs["view"]), _median_run(runs["echo"])
                    fixed = _median_run(runs["floor"])
                    ratios = sorted(
                        v["rps"] / e["rps"] for v, e in zip(runs["view"], runs["echo"], strict=True)
                    )
                    print(
                        f"  {concurrency:>2} callers: view {view['rps']:7.0f} rps "
                        f"p50 {view['p50_ms']:6.2f} ms p99 {view['p99_ms']:6.2f} ms | "
                        f"echo {bare['rps']:7.0f} rps p50 {bare['p50_ms']:6.2f} ms "
                        f"p99 {bare['p99_ms']:6.2f} ms | view/echo {view['rps'] / bare['rps']:.0%} "
                        f"(rounds: {', '.join(f'{r:.0%}' for r in ratios)})\n"
                        f"      gateway stack, fixed reply: {fixed['rps']:7.0f} rps "
                        f"p50 {fixed['p50_ms']:6.2f} ms p99 {fixed['p99_ms']:6.2f} ms "
                        f"({fixed['rps'] / bare['rps']:.0%} of echo)"
                    )
                await echo.stop(0)
                await floor.stop(0)

                if args.watchers > 0:
                    watchers = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "tests.benchmarks.case_view", "--client", "watchers",
                        "--target", target, "--case-id", case_id, "--after", str(position - 1),
                        "--watchers", str(args.watchers), *tls,
                        stdout=asyncio.subprocess.PIPE,
                    )  # fmt: skip
                    assert watchers.stdout is not None
                    ready = await asyncio.wait_for(watchers.stdout.readline(), 180)
                    assert ready.strip() == b"READY", ready
                    sent = time.time()
                    await runtime.domain.cases.intake.append_interaction(
                        Caller("bank-a", Role.ADVISOR),
                        cases_pb2.AppendInteractionRequest(
                            idempotency_key=uuid.uuid4().hex,
                            case_id=case_id,
                            interaction=cases_pb2.Interaction(
                                channel=common_pb2.CHANNEL_CHAT, summary="marker"
                            ),
                        ),
                    )
                    result = json.loads((await watchers.stdout.readline()).decode())
                    await watchers.wait()
                    delays = sorted(t - sent for t in result["arrivals"])
                    within = sum(d <= 1.0 for d in delays)
                    print(
                        f"  {args.watchers} watchers: {len(delays)} received the event; "
                        f"{within} within 1 s; p50 {delays[len(delays) // 2] * 1000:.0f} ms, "
                        f"max {delays[-1] * 1000:.0f} ms"
                    )
                await gateway.stop(0)
        await env.shutdown()


if __name__ == "__main__":
    run_and_exit(main())
