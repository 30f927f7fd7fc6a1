"""What tracing costs, counted in instructions: a measure the machine's noise does not
move (`tests.benchmarks.tracing` measures throughput and latency, whose rounds on a
shared 2-core machine spread over 25-40 points).

For each mode, one gateway stack in a process of its own (``--serve MODE``), run under
``valgrind --tool=callgrind`` with counting switched off until the stack is built and
warmed up: ``off`` (no OpenTelemetry provider, no per-call measures: what
``OTEL_SDK_DISABLED=true`` gives), ``on`` (every trace sampled, spans and metrics to the
embedded store, as `coopgate up` keeps them), ``spans`` (on, without the per-call
measures), ``nostore`` (on without the embedded store: spans to an exporter that keeps
nothing, measures read by none), ``notemporal`` (on, without the Temporal tracing
interceptor, `gateway.orchestration.tracing`). The stack's worker runs in that
process, the incidents' partners in one of their own
(`tests.benchmarks.tracing.incidents_served`).

The load (``--load``): ``view``, `tests.benchmarks.case_view`'s load generator (a
process outside valgrind) calling the case view at ``--callers`` concurrent callers for
``--seconds``; or ``incident``, ``--incidents`` incidents one after another (OpenCase
until the owner's acceptance, as in `tests.benchmarks.tracing`). Counting is switched
on for an idle window and for the load's window (followed by a pause for the span
exporter's last batch); each is dumped (``callgrind_control``), and a unit's count is

    (load window's instructions - idle rate x its length) / units done in it

over the whole process (every thread: the event loop, gRPC's, the exporters', the
worker's).

    python -m tests.benchmarks.tracing_instructions [--load view|incident]
        [--modes off,on] [--callers 16] [--seconds 40] [--incidents 20] [--warmup N]
        [--json var/bench/tracing_instructions.json] [--keep DIR]

(``--keep``: each mode's load-window dump, for ``callgrind_annotate``.) Valgrind runs
the gateway 30-60 times slower: a mode takes 3-5 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from gateway.core.caller import Role
from gateway.orchestration.devserver import DEV_SERVER_TUNING
from gateway.settings import Settings
from gateway.stack import ensure_pki, freeze_heap
from gateway.telemetry import configure
from tests.benchmarks.common import run_and_exit
from tests.benchmarks.span_cost import Discard
from tests.benchmarks.tracing import incident, incidents_served, side

MODES = ("off", "on", "spans", "nostore", "notemporal")
_TOTALS = re.compile(rb"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


async def serve(mode: str, load: str, temporal: str, workdir: Path) -> None:
    """The child under valgrind: one stack, its address and case on stdout; then, for
    each ``incidents N`` line on stdin, N incidents one after another (for the
    incident ``load`` only: the stack's worker here, its partners in a process of
    their own), ``done`` when they are over; it ends when stdin closes."""
    on = mode != "off"
    if on:
        os.environ["OTEL_TRACES_SAMPLER"] = "always_on"
        if mode == "nostore":
            nowhere = [Discard()]
            configure(Settings(data_dir=workdir, telemetry_store=False), span_exporters=nowhere)
        else:
            configure(Settings(data_dir=workdir))
    env = WorkflowEnvironment.from_client(await Client.connect(temporal))
    pki = ensure_pki(Settings(data_dir=workdir))
    built = side(
        mode,
        on,
        env,
        pki,
        workdir,
        temporal_tracing=mode != "notemporal",
        measures=False if mode == "spans" else None,  # None: as ``on``
    )
    async with built as one:
        one.use()
        out = workdir / "clients"
        files = pki.ca.issue_client(out, "bank-a", Role.ADVISOR)
        async with contextlib.AsyncExitStack() as served:
            if load == "incident":
                advisors = await served.enter_async_context(
                    incidents_served([one], pki, out, warmup=0)
                )
            freeze_heap()
            print(
                json.dumps(
                    {
                        "target": one.target,
                        "case_id": one.case_id,
                        "tls": [
                            "--cert", str(files.cert), "--key", str(files.key),
                            "--ca", str(files.ca),
                        ],
                    }
                ),
                flush=True,
            )  # fmt: skip
            loop = asyncio.get_running_loop()
            while line := await loop.run_in_executor(None, sys.stdin.readline):
                for _ in range(int(line.split()[1])):
                    await incident(one, advisors[one.name])
                print("done", flush=True)


async def load(served: dict[str, object], callers: int, seconds: float) -> float:
    """Calls made by the load generator in ``seconds`` (every call, none uncounted)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.benchmarks.case_view", "--client", "load",
        "--method", "view", "--target", str(served["target"]),
        "--case-id", str(served["case_id"]), "--concurrency", str(callers),
        "--seconds", str(seconds), "--warmup", "0", *served["tls"],  # type: ignore[misc]
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate()
    # The two calls before the timed ones (one parsed, one sized) count too.
    return float(json.loads(out.decode().splitlines()[-1])["rps"]) * seconds + 2


async def control(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "callgrind_control", *args, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    if await process.wait() != 0:
        raise RuntimeError(f"callgrind_control {' '.join(args)} failed")


def dumped(out: Path, before: set[Path], keep: Path | None = None) -> int:
    """The instructions in the dump written since ``before`` was listed (the dump copied
    into ``keep``, if given, for ``callgrind_annotate``)."""
    made = sorted(set(out.parent.glob(out.name + "*")) - before, key=lambda p: p.stat().st_mtime)
    if not made:
        raise RuntimeError("callgrind wrote no dump")
    found = _TOTALS.search(made[-1].read_bytes())
    if found is None:
        raise RuntimeError(f"no totals in {made[-1]}")
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(made[-1], keep / out.name)
    return int(found.group(1))


async def measure(
    mode: str, temporal: str, workdir: Path, args: argparse.Namespace
) -> dict[str, float]:
    out = workdir / f"callgrind.{mode}"
    child = await asyncio.create_subprocess_exec(
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
        sys.executable, "-m", "tests.benchmarks.tracing_instructions",
        "--serve", mode, "--load", args.load, "--temporal", temporal,
        "--workdir", str(workdir / mode),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert child.stdin is not None
    assert child.stdout is not None
    pid = str(child.pid)
    try:
        line = await asyncio.wait_for(child.stdout.readline(), timeout=1200)
        if not line:
            raise RuntimeError(f"{mode}: the stack under valgrind did not start")
        served = json.loads(line)

        async def work(amount: float) -> float:
            """The load's unit of work done ``amount`` times (seconds of view calls, or
            incidents); how many units that was."""
            if args.load == "view":
                return await load(served, args.callers, amount)
            assert child.stdin is not None
            assert child.stdout is not None
            child.stdin.write(f"incidents {int(amount)}\n".encode())
            await child.stdin.drain()
            if (await child.stdout.readline()).strip() != b"done":
                raise RuntimeError(f"{mode}: the incidents did not finish")
            return int(amount)

        await work(args.warmup)  # not counted
        await asyncio.sleep(args.tail)  # its spans exported before the idle window
        await control("-i", "on", pid)
        idle_started = time.monotonic()
        await asyncio.sleep(args.idle)
        before = set(workdir.glob(out.name + "*"))
        await control("-d", pid)
        idle = dumped(out, before) / (time.monotonic() - idle_started)
        window_started = time.monotonic()
        calls = await work(args.seconds if args.load == "view" else args.incidents)
        await asyncio.sleep(args.tail)  # the span exporter's last batch (5 s schedule)
        before = set(workdir.glob(out.name + "*"))
        await control("-d", pid)
        window = time.monotonic() - window_started
        total = dumped(out, before, args.keep)
        return {
            "calls": calls,
            "window_s": window,
            "instructions": total,
            "idle_per_s": idle,
            "per_call": (total - idle * window) / calls,
        }
    finally:
        child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), timeout=120)
        except TimeoutError:
            child.kill()
            await child.wait()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--load", choices=["view", "incident"], default="view")
    parser.add_argument("--modes", default="off,on")
    parser.add_argument("--callers", type=int, default=16, help="view: concurrent callers")
    parser.add_argument("--seconds", type=float, default=40, help="view: the load's length")
    parser.add_argument("--incidents", type=int, default=20, help="incident: how many")
    parser.add_argument(
        "--warmup", type=float, help="seconds of view load (default 20) or incidents (3)"
    )
    parser.add_argument("--idle", type=float, default=10)
    parser.add_argument("--tail", type=float, default=6)
    parser.add_argument("--json", type=Path, default=Path("var/bench/tracing_instructions.json"))
    parser.add_argument("--keep", type=Path, help="copy each mode's load-window dump here")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--temporal", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        args.workdir.mkdir(parents=True)
        await serve(args.serve, args.load, args.temporal, args.workdir)
        return
    if args.warmup is None:
        args.warmup = 20 if args.load == "view" else 3
    modes = args.modes.split(",")
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; known: {', '.join(MODES)}")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        parser.error("valgrind (with callgrind_control) is needed")
    results: dict[str, object] = {"args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory() as tmp:
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
            dev_server_extra_args=list(DEV_SERVER_TUNING),
        )
        try:
            temporal = env.client.service_client.config.target_host
            unit = "call" if args.load == "view" else "incident"
            print(
                f"instructions per view call at {args.callers} callers (whole gateway process)"
                if args.load == "view"
                else "instructions per incident, OpenCase to owner accepted (whole gateway "
                "process: its worker included, not the partners)"
            )
            for mode in modes:
                got = await measure(mode, temporal, Path(tmp), args)
                results[mode] = got
                line = (
                    f"  {mode:10s} {got['per_call'] / 1e3:8.0f} k per {unit} "
                    f"({got['calls']:.0f} in {got['window_s']:.0f} s; "
                    f"idle {got['idle_per_s'] / 1e6:.1f} M/s)"
                )
                if mode != "off" and "off" in results:
                    base = results["off"]["per_call"]  # type: ignore[index]
                    line += f"  {got['per_call'] / base - 1:+.1%} over off"
                print(line, flush=True)
        finally:
            await env.shutdown()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    run_and_exit(main())
