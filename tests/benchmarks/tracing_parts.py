"""Which part of tracing an incident costs: stacks with parts of the telemetry switched
off, side by side with stacks where it is all off, incidents only (as in
`tests.benchmarks.tracing`, whose stacks, partners and incident this reuses).

Variants (``--variants``, one stack each, in that order; ``off`` at least once):

- ``off``: no telemetry (what ``OTEL_SDK_DISABLED=true`` gives);
- ``on``: everything, as `coopgate up` has it (every trace sampled, the embedded store);
- ``notemporal``: everything but the Temporal tracing interceptor (client and worker,
  `gateway.orchestration.tracing`);
- ``nometrics``: spans, no per-call or KPI measures.

    python -m tests.benchmarks.tracing_parts [--variants off,on,notemporal,off,notemporal,on]
        [--rounds 9] [--incidents 5] [--partners-in-process]

Each round runs every stack's incidents, starting one stack further on each time; a
variant's figure is the median over rounds of its latency (and this process's CPU per
incident) over the ``off`` stacks' in the same round. The machine's noise is often as
large as a part's cost: read the spread, and compare runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from gateway.orchestration.devserver import DEV_SERVER_TUNING
from gateway.settings import Settings
from gateway.stack import ensure_pki, freeze_heap
from gateway.telemetry import configure
from tests.benchmarks import tracing
from tests.benchmarks.common import run_and_exit

VARIANTS = ("off", "on", "notemporal", "nometrics")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default="off,on,notemporal,off,notemporal,on")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--incidents", type=int, default=5, help="per stack and round")
    parser.add_argument("--partners-in-process", action="store_true")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if "off" not in variants or not set(variants) <= set(VARIANTS):
        parser.error(f"--variants: from {', '.join(VARIANTS)}, off at least once")
    os.environ.setdefault("OTEL_TRACES_SAMPLER", "always_on")

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
            dev_server_extra_args=list(DEV_SERVER_TUNING),
        )
        telemetry = configure(Settings(data_dir=workdir))
        pki = ensure_pki(Settings(data_dir=workdir))
        out = workdir / "clients"
        async with contextlib.AsyncExitStack() as built:
            sides: list[tracing.Side] = []
            variant_of: dict[str, str] = {}
            for n, variant in enumerate(variants):
                one = await built.enter_async_context(
                    tracing.side(
                        f"{variant}-{n}",
                        variant != "off",
                        env,
                        pki,
                        workdir,
                        temporal_tracing=variant != "notemporal",
                        measures=variant in ("on", "notemporal"),
                    )
                )
                sides.append(one)
                variant_of[one.name] = variant
            advisors = await built.enter_async_context(
                tracing.incidents_served(
                    sides, pki, out, partners_in_process=args.partners_in_process, warmup=2
                )
            )
            freeze_heap()
            latency: dict[str, list[float]] = {v: [] for v in variants}
            cpu: dict[str, list[float]] = {v: [] for v in variants}
            for round_ in range(args.rounds):
                took: dict[str, list[float]] = {v: [] for v in variants}
                used: dict[str, float] = dict.fromkeys(variants, 0.0)
                for one in tracing.ordered(sides, round_):
                    one.use()
                    before = time.process_time()
                    variant = variant_of[one.name]
                    for _ in range(args.incidents):
                        took[variant].append(await tracing.incident(one, advisors[one.name]))
                    used[variant] += time.process_time() - before
                for variant in took:
                    latency[variant].append(statistics.median(took[variant]))
                    cpu[variant].append(used[variant] / len(took[variant]))
        partners = "in this process" if args.partners_in_process else "in their own"
        print(f"incident, each variant against off ({args.rounds} rounds, partners {partners})")
        print(f"  off: p50 {statistics.median(latency['off']) * 1000:.0f} ms")
        for variant in dict.fromkeys(variants):
            if variant == "off":
                continue
            print(
                f"  {variant:>10}: latency "
                f"{tracing.pct(tracing.paired(latency[variant], latency['off']))} "
                f"({tracing.spread(latency[variant], latency['off'])}), CPU per incident "
                f"{tracing.pct(tracing.paired(cpu[variant], cpu['off']))}"
            )
        telemetry.shutdown()
        await env.shutdown()


if __name__ == "__main__":
    run_and_exit(main())
