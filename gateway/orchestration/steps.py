"""`run_steps`: a milestone's steps in one activity (the workflow's coarse runs).

Each step is one of the other activities with its input, run here in order as that
activity would run alone, and all of them in one write transaction (each activity's
own write joins it, `Store.one_write`): the batch lands whole or not at all, with one
commit. Each step is idempotent by the ids the workflow gave it, so a batch retried, or
run again after a crash, records and sends nothing twice.

When the process traces, each step is a span of its own under the batch's, named as the
activity would be alone (``RunActivity:request_diagnosis``) and carrying the same case,
partner, rule and outcome: an incident's trace reads the same whether its workflow ran
steps one activity each (histories from before the coarse runs) or in batches.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from temporalio import activity

from gateway.orchestration.tracing import activity_attributes
from gateway.store import Store
from gateway.telemetry import tracer, tracing_on
from gateway.telemetry.spans import named, step_span
from workflows.contracts import RUN_STEPS, StepsInput

#: Made once, as `work.delivery`'s: a step no longer asks the provider for its tracer.
_tracer = tracer(__name__)


class StepActivities:
    def __init__(
        self, store: Store, activities: Mapping[str, Callable[[Any], Awaitable[None]]]
    ) -> None:
        self._store = store
        self._activities = dict(activities)

    @activity.defn(name=RUN_STEPS)
    async def run_steps(self, request: StepsInput) -> None:
        async with self._store.one_write():
            for step in request.steps:
                name, arg = step.activity()
                if not tracing_on():
                    await self._activities[name](arg)
                    continue
                with step_span(
                    _tracer, f"RunActivity:{name}", attributes=named(**activity_attributes(arg))
                ):
                    await self._activities[name](arg)
