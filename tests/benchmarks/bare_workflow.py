"""The incident benchmark's anchor: a bare Temporal workflow of four parallel no-op
activities, on the same dev server and with the same worker settings as the gateway's
worker. Run as a process of its own, so that its CPU is measured apart:

    python -m tests.benchmarks.bare_workflow --address 127.0.0.1:7233 --task-queue Q

It prints ``ready`` once polling, and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow

#: The four activities, as many as the incident's diagnosis requests fan out to.
FAN_OUT = 4


@dataclass(slots=True, frozen=True)
class NoopInput:
    index: int


@dataclass(slots=True, frozen=True)
class BareInput:
    fan_out: int = FAN_OUT


@activity.defn(name="bare_noop")
async def noop(arg: NoopInput) -> int:
    return arg.index


@workflow.defn
class BareWorkflow:
    @workflow.run
    async def run(self, arg: BareInput) -> int:
        done = await asyncio.gather(
            *(
                workflow.execute_activity(
                    noop, NoopInput(i), start_to_close_timeout=timedelta(seconds=10)
                )
                for i in range(arg.fan_out)
            )
        )
        return len(done)


async def serve(address: str, namespace: str, task_queue: str) -> None:
    # Imported here: the workflow module above stays free of anything but temporalio.
    from temporalio.client import Client
    from temporalio.worker import Worker

    from gateway.orchestration.temporal import WORKER_OPTIONS

    # By its module's name (this file also runs as __main__, a module of its own).
    from tests.benchmarks import bare_workflow

    client = await Client.connect(address, namespace=namespace)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[bare_workflow.BareWorkflow],
        activities=[bare_workflow.noop],
        **WORKER_OPTIONS,
    ):
        print("ready", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--task-queue", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.address, args.namespace, args.task_queue))


if __name__ == "__main__":
    main()
