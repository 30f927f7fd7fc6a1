"""`run_steps`: a milestone's steps in one activity (the workflow's coarse runs).

Each step is one of the other activities with its input, run here in order as that
activity would run alone: idempotent by the ids the workflow gave it, so a batch retried
after a failure half-way, or run again after a crash, records and sends nothing twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from temporalio import activity

from workflows.contracts import RUN_STEPS, StepsInput


class StepActivities:
    def __init__(self, activities: Mapping[str, Callable[[Any], Awaitable[None]]]) -> None:
        self._activities = dict(activities)

    @activity.defn(name=RUN_STEPS)
    async def run_steps(self, request: StepsInput) -> None:
        for step in request.steps:
            name, arg = step.activity()
            await self._activities[name](arg)
