"""Benchmark: a gateway replica's resident memory with many open cases and live
watchers (target: at most 300 MB with 10,000 open cases and 1,000 watchers).

A `coopgate gateway` process of its own (configured by settings only, as a replica
is) on a fresh store and a Temporal dev server with no worker, so every case stays
open. The cases are opened by this process through the domain's own `open_case` (as
another replica would), without starting their workflows (`--via domain`, the
default: on a shared machine the dev server starts about 10 a second, and Temporal's
memory is not what is measured), or through the measured gateway's API
(`--via api`, workflows started). Its RSS is read (psutil) after start (the
baseline, measured in the same run), after the cases were opened, after every
case's combined view was read once (the view cache holds one per case and reader),
and with the watchers attached and woken once each. The machine is shared: RSS is
not a timing, but the baseline is still what the other figures are read against.

    python -m tests.benchmarks.memory [--cases 10000] [--watchers 1000]
        [--concurrency 32] [--backend sqlite|postgres] [--json PATH]

The figures also go to ``--json`` (default var/bench/memory-BACKEND.json), with the
watches that failed by status: a watch that fails is a failed run, whatever the RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections import Counter
from functools import partial
from pathlib import Path

import grpc
import psutil
from coopgate.v1 import cases_pb2, common_pb2
from pydantic import SecretStr
from temporalio.testing import WorkflowEnvironment

from gateway.core.caller import Caller, Role
from gateway.orchestration.devserver import DEV_SERVER_TUNING
from gateway.settings import Settings
from gateway.stack import ensure_pki, open_runtime
from partners import PartnerCredentials
from tests.benchmarks.common import database, run_and_exit
from tests.scale.cluster import Cluster, keys_environment, open_request, with_retries
from tests.scale.conftest import seed

BIN = Path(sys.executable).parent
FAILURES: Counter[tuple[str, str]] = Counter()
MB = 1024 * 1024
TARGET_MB = 300


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / MB


class Unstarted:
    """Cases opened for this benchmark have no workflow: it measures the gateway."""

    async def ensure_started(self, case_id: str, service_id: str, first_contact: str) -> None:
        return None


async def open_in_domain(cluster: Cluster, n: int) -> list[str]:
    """``n`` cases opened by this process's own domain on the shared store."""
    values = {k.removeprefix("COOPGATE_").lower(): SecretStr(v) for k, v in cluster.keys.items()}
    settings = Settings(
        data_dir=cluster.workdir / "opener",
        database_url=cluster.database_url,
        temporal_address=cluster.temporal_address,
        checkpoint_interval_seconds=0,
        workflow_start_sweep_seconds=0,
    ).model_copy(update=values)
    tag = uuid.uuid4().hex[:8]
    bank = Caller("bank-a", Role.ADVISOR, "bench")
    opened: list[str] = []
    async with open_runtime(settings, create_secrets=False) as runtime:
        intake = runtime.domain.cases.intake
        intake.incidents = Unstarted()  # type: ignore[assignment]
        for i in range(n):
            request = open_request("nfc-payment", f"mem-{tag}-{i}", f"cust-{tag}-{i}")
            opened.append((await intake.open_case(bank, request)).case_id)
    return opened


async def open_cases(cluster: Cluster, n: int, concurrency: int) -> list[str]:
    apis = [cluster.api("bank-a", Role.ADVISOR) for _ in range(4)]
    tag = uuid.uuid4().hex[:8]
    opened: list[str] = []
    queue = iter(range(n))

    async def opener(k: int) -> None:
        api = apis[k % len(apis)]
        for i in queue:
            request = open_request("nfc-payment", f"mem-{tag}-{i}", f"cust-{tag}-{i}")
            reply = await with_retries(partial(api.cases.OpenCase, request, timeout=60))
            assert isinstance(reply, cases_pb2.OpenCaseResponse)
            opened.append(reply.case_id)

    await asyncio.gather(*(opener(k) for k in range(concurrency)))
    return opened


async def read_views(cluster: Cluster, case_ids: list[str], concurrency: int) -> None:
    apis = [cluster.api("bank-a", Role.ADVISOR) for _ in range(4)]
    queue = iter(case_ids)

    async def reader(k: int) -> None:
        api = apis[k % len(apis)]
        for case_id in queue:
            request = cases_pb2.GetCaseViewRequest(case_id=case_id, purpose="incident-resolution")
            await with_retries(partial(api.cases.GetCaseView, request, timeout=60))

    await asyncio.gather(*(reader(k) for k in range(concurrency)))


async def attach_watchers(
    cluster: Cluster, case_ids: list[str], n: int, concurrency: int, per_connection: int = 100
) -> tuple[list[grpc.aio.UnaryStreamCall[cases_pb2.WatchCaseRequest, object]], float, int]:
    """``n`` watches on ``n`` cases (``per_connection`` per connection, all opened at
    once), each woken by one change (written ``concurrency`` at a time); returns the
    calls, the seconds until every watcher had its change (or failed) and how many had
    it. A watch that fails is counted in ``FAILURES`` by status and message."""
    apis = [
        cluster.api("bank-a", Role.ADVISOR)
        for _ in range((n + per_connection - 1) // per_connection)
    ]
    calls = []
    woken = 0
    done = asyncio.Event()
    watched = case_ids[:n]

    async def watch(k: int, case_id: str) -> None:
        nonlocal woken
        call = apis[k // per_connection].cases.WatchCase(
            cases_pb2.WatchCaseRequest(case_id=case_id, purpose="incident-resolution")
        )
        calls.append(call)
        try:
            async for response in call:
                if response.item.HasField("interaction") and "woken" in (
                    response.item.interaction.summary
                ):
                    woken += 1
                    if woken + sum(FAILURES.values()) >= len(watched):
                        done.set()
        except grpc.aio.AioRpcError as exc:
            FAILURES[(exc.code().name, exc.details() or "")] += 1
            if sum(FAILURES.values()) + woken >= len(watched):
                done.set()

    tasks = [asyncio.create_task(watch(k, case_id)) for k, case_id in enumerate(watched)]
    await asyncio.sleep(2)  # every watch caught up with its case's past
    writers = [cluster.api("bank-a", Role.ADVISOR) for _ in range(4)]
    start = time.perf_counter()
    pending = iter(enumerate(watched))

    async def wake(k: int) -> None:
        for i, case_id in pending:
            change = cases_pb2.AppendInteractionRequest(
                idempotency_key=f"wake-{case_id}",
                case_id=case_id,
                interaction=cases_pb2.Interaction(
                    channel=common_pb2.CHANNEL_PHONE, summary=f"woken {i}"
                ),
            )
            writer = writers[k % len(writers)]
            await with_retries(partial(writer.cases.AppendInteraction, change, timeout=30))

    await asyncio.gather(*(wake(k) for k in range(concurrency)))
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - start
    for task in tasks:
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
    return calls, elapsed, woken  # type: ignore[return-value]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--per-connection", type=int, default=100, help="watches per channel")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--via", choices=["domain", "api"], default="domain")
    parser.add_argument("--json", type=Path, help="default var/bench/memory-BACKEND.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        pki = ensure_pki(Settings(data_dir=workdir / "ca"))
        clients = workdir / "clients"
        cached: dict[tuple[str, Role], PartnerCredentials] = {}

        def credentials(partner: str, role: Role) -> PartnerCredentials:
            if (partner, role) not in cached:
                files = pki.ca.issue_client(clients, partner, role)
                cached[(partner, role)] = PartnerCredentials(files.cert, files.key, files.ca)
            return cached[(partner, role)]

        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(BIN / "temporal"),
            dev_server_extra_args=list(DEV_SERVER_TUNING),
        )
        try:
            async with database(args.backend, tmp) as url:
                cluster = Cluster(
                    workdir=workdir,
                    database_url=url,
                    temporal_address=env.client.service_client.config.target_host,
                    task_queue=f"tq-{uuid.uuid4()}",  # no worker: the cases stay open
                    tls=pki.server,
                    keys=keys_environment(workdir / "vault"),
                    credentials=credentials,
                    # No sweep either: it would start the workflows this benchmark leaves out.
                    extra_env={
                        "COOPGATE_DATABASE_POOL_SIZE": "32",
                        "COOPGATE_WORKFLOW_START_SWEEP_SECONDS": "0",
                    },
                )
                await seed(cluster)
                gateway = cluster.add_gateway()
                gateway.start()
                try:
                    await cluster.serving(gateway)
                    assert gateway.popen is not None
                    pid = gateway.popen.pid
                    await asyncio.sleep(1)
                    base = rss_mb(pid)
                    print(f"gateway RSS at start (baseline): {base:7.1f} MB")
                    start = time.perf_counter()
                    if args.via == "api":
                        case_ids = await open_cases(cluster, args.cases, args.concurrency)
                    else:
                        case_ids = await open_in_domain(cluster, args.cases)
                    took = time.perf_counter() - start
                    opened = rss_mb(pid)
                    print(
                        f"after {len(case_ids)} cases opened ({args.via}, "
                        f"{len(case_ids) / took:.0f}/s): "
                        f"{opened:7.1f} MB (+{opened - base:.1f})"
                    )
                    await read_views(cluster, case_ids, args.concurrency)
                    viewed = rss_mb(pid)
                    print(
                        f"after one view of each case:    {viewed:7.1f} MB (+{viewed - base:.1f})"
                    )
                    calls, woke, woken = await attach_watchers(
                        cluster, case_ids, args.watchers, args.concurrency, args.per_connection
                    )
                    watched = rss_mb(pid)
                    print(
                        f"with {len(calls)} live watchers (all woken in {woke:.1f} s): "
                        f"{watched:7.1f} MB (+{watched - base:.1f})"
                    )
                    failed = sum(FAILURES.values())
                    print(
                        f"watchers woken {woken}/{len(calls)}, failed {failed}"
                        + (f": {dict(FAILURES)}" if failed else "")
                    )
                    verdict = "within" if watched <= TARGET_MB and not failed else "OVER"
                    print(
                        f"=> {args.cases} open cases, {args.watchers} watchers: {watched:.0f} MB "
                        f"resident, {verdict} the {TARGET_MB} MB target ({watched / base:.2f}x "
                        "the idle gateway; machine shared)"
                    )
                    summary = {
                        "backend": args.backend,
                        "via": args.via,
                        "cases": len(case_ids),
                        "watchers": len(calls),
                        "watchers_woken": woken,
                        "watch_failures": {f"{c}: {d}": n for (c, d), n in FAILURES.items()},
                        "rss_mb": {
                            "baseline": round(base, 1),
                            "after_cases": round(opened, 1),
                            "after_views": round(viewed, 1),
                            "with_watchers": round(watched, 1),
                        },
                        "with_watchers_over_baseline": round(watched / base, 2),
                        "target_mb": TARGET_MB,
                        "within_target": watched <= TARGET_MB and not failed,
                        "seconds_to_wake_all": round(woke, 1),
                    }
                    out = args.json or Path("var/bench") / f"memory-{args.backend}.json"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps(summary, indent=1))
                    print(f"summary in {out}")
                    for call in calls:
                        call.cancel()
                finally:
                    await cluster.close()
        finally:
            await env.shutdown()


if __name__ == "__main__":
    run_and_exit(main())
