"""RetentionWorkflow: storage limitation (GDPR art. 5(1)(e)) on Temporal's clock.

One per task queue (workflow id ``retention-<task queue>``), started by every process of
the stack (the same run is kept). It asks the gateway to shred every case closed for
longer than the retention period before the workflow's own time (``workflow.now()``),
then sleeps on a durable timer until the next case is due or the sweep interval has
passed, whichever comes first; the period and the interval are the gateway's settings,
read at every sweep. It continues as new every ``SWEEPS_PER_RUN`` sweeps, so its
history stays bounded, and ends when retention is turned off.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import EXPIRE_CLOSED_CASES, ExpireInput, ExpireResult

RETENTION_WORKFLOW = "RetentionWorkflow"
SWEEPS_PER_RUN = 500
#: A sweep shreds in batches of a hundred cases a transaction: minutes for a backlog.
SWEEP_TIMEOUT = timedelta(minutes=10)
SWEEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=5)
)
#: The shortest wait between sweeps (a case due "now" is shredded by the next one).
MIN_WAIT_S = 1.0


@workflow.defn(name=RETENTION_WORKFLOW)
class RetentionWorkflow:
    @workflow.run
    async def run(self) -> None:
        for _ in range(SWEEPS_PER_RUN):
            result = await workflow.execute_activity(
                EXPIRE_CLOSED_CASES,
                ExpireInput(now_s=workflow.now().timestamp()),
                start_to_close_timeout=SWEEP_TIMEOUT,
                retry_policy=SWEEP_RETRY,
                result_type=ExpireResult,
            )
            if result.sweep_s <= 0:
                return  # retention is off
            wait = result.sweep_s
            if result.next_due_s is not None:
                due_in = result.next_due_s - workflow.now().timestamp()
                wait = min(wait, max(due_in, MIN_WAIT_S))
            await workflow.sleep(timedelta(seconds=wait))
        workflow.continue_as_new()
