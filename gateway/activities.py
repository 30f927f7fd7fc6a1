"""Activity implementations of the contracts declared in ``workflows.contracts``.

The workflow never touches the store: these activities update the case
projection, each idempotent so Temporal may retry them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity

from gateway.cases import Cases
from workflows.contracts import RECORD_CASE_STATUS, RecordCaseStatusInput


class IncidentActivities:
    def __init__(self, cases: Cases) -> None:
        self._cases = cases

    @activity.defn(name=RECORD_CASE_STATUS)
    async def record_case_status(self, request: RecordCaseStatusInput) -> None:
        await self._cases.record_status(request.case_id, request.status)

    def all(self) -> list[Callable[..., Any]]:
        return [self.record_case_status]
