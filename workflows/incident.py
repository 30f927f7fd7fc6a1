"""IncidentWorkflow: one per case, workflow id = case id.

This first version moves the case to DIAGNOSING through an activity and then
stays open until the case is closed; the cross-company diagnosis and the
ownership decision grow here.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import (
        RECORD_CASE_STATUS,
        CloseCaseSignal,
        IncidentInput,
        IncidentOutcome,
        RecordCaseStatusInput,
    )

_PROJECTION_TIMEOUT = timedelta(seconds=30)
_PROJECTION_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=10)
)


@workflow.defn
class IncidentWorkflow:
    def __init__(self) -> None:
        self._status = "RECEIVED"
        self._closed: CloseCaseSignal | None = None

    @workflow.run
    async def run(self, incident: IncidentInput) -> IncidentOutcome:
        await self._set_status(incident.case_id, "DIAGNOSING")
        await workflow.wait_condition(lambda: self._closed is not None)
        await self._set_status(incident.case_id, "CLOSED")
        return IncidentOutcome(case_id=incident.case_id, status=self._status)

    @workflow.signal
    def close(self, signal: CloseCaseSignal) -> None:
        self._closed = signal

    @workflow.query
    def status(self) -> str:
        return self._status

    async def _set_status(self, case_id: str, status: str) -> None:
        await workflow.execute_activity(
            RECORD_CASE_STATUS,
            RecordCaseStatusInput(case_id=case_id, status=status),
            start_to_close_timeout=_PROJECTION_TIMEOUT,
            retry_policy=_PROJECTION_RETRY,
        )
        self._status = status
