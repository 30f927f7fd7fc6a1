"""A workflow for the tracing interceptor's tests (its own module, as the sandbox wants):
a step per name it is given, then it waits to be told something."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

#: What a failing step's error says: a message that must reach no span.
SECRET = "Jeanne Martin, card 4970 1234"


@activity.defn
async def step(name: str) -> str:
    if name == "fail":
        raise RuntimeError(SECRET)
    return name


@workflow.defn
class Traced:
    def __init__(self) -> None:
        self.told: list[str] = []

    @workflow.run
    async def run(self, steps: list[str]) -> list[str]:
        done = [
            await workflow.execute_activity(
                step,
                name,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
            for name in steps
        ]
        await workflow.wait_condition(lambda: bool(self.told))
        return done + self.told

    @workflow.signal
    def tell(self, what: str) -> None:
        self.told.append(what)
