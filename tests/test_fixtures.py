"""The fixtures' own guarantees: a stack's teardown ends the runs left open on its task
queue before its worker stops."""

from __future__ import annotations

import asyncio
import uuid

from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from tests.conftest import end_open_runs


async def test_end_open_runs_terminates_each_run_left_on_the_queue(
    temporal_env: WorkflowEnvironment,
) -> None:
    client = temporal_env.client
    queue = f"no-worker-{uuid.uuid4().hex}"  # nothing polls it: the runs stay open
    handles = [
        await client.start_workflow("Nothing", id=f"left-{uuid.uuid4().hex}", task_queue=queue)
        for _ in range(2)
    ]
    elsewhere = await client.start_workflow(
        "Nothing", id=f"kept-{uuid.uuid4().hex}", task_queue=f"{queue}-other"
    )
    query = f'TaskQueue="{queue}" AND ExecutionStatus="Running"'
    for _ in range(100):  # visibility lags the start a little
        if len([e async for e in client.list_workflows(query)]) == 2:
            break
        await asyncio.sleep(0.1)

    assert await end_open_runs(client, queue) == 2

    for handle in handles:
        assert (await handle.describe()).status == WorkflowExecutionStatus.TERMINATED
    assert (await elsewhere.describe()).status == WorkflowExecutionStatus.RUNNING
    await elsewhere.terminate("test finished")
