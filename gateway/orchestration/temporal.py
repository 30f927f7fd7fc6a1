"""The gateway's side of Temporal: the client, the worker, and starting incidents."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from temporalio.client import (
    Client,
    TLSConfig,
    WorkflowExecutionStatus,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from gateway.core.caller import time_left
from gateway.core.errors import FailedPrecondition, InvalidArgument, Unavailable
from gateway.orchestration.activities import IncidentActivities
from gateway.orchestration.converter import DATA_CONVERTER
from gateway.orchestration.tracing import client_interceptors
from gateway.settings import Settings
from workflows import IncidentWorkflow, RetentionWorkflow
from workflows.contracts import (
    CaseErased,
    CustomerAnswer,
    Finding,
    IncidentInput,
    OwnershipAnswer,
    ResolveRequest,
)
from workflows.retention import RETENTION_WORKFLOW


async def connect(settings: Settings) -> Client:
    tls: TLSConfig | bool = False
    if settings.temporal_tls_cert or settings.temporal_tls_ca:
        tls = TLSConfig(
            server_root_ca_cert=_read(settings.temporal_tls_ca),
            client_cert=_read(settings.temporal_tls_cert),
            client_private_key=_read(settings.temporal_tls_key),
        )
    return await Client.connect(
        settings.effective_temporal_address,
        namespace=settings.temporal_namespace,
        tls=tls,
        interceptors=client_interceptors(),
        data_converter=DATA_CONVERTER,
    )


log = logging.getLogger(__name__)

#: The largest message the gateway sends a workflow (a signal's or an update's argument),
#: encoded. Temporal refuses a payload over 2 MiB by failing the workflow task that
#: would record it, and an update then waits on a task that never completes: a 1 MiB
#: `offer_id` hung its call past the caller's deadline and the case's next answer for
#: about 20 s. The contract's limits keep every message far below this; this is the net.
MAX_WORKFLOW_MESSAGE_BYTES = 256 * 1024
#: How long an update may take when the caller set no deadline (the workflow answers
#: an update in one workflow task: milliseconds when the worker is up).
UPDATE_TIMEOUT_SECONDS = 30.0
#: What is kept of the caller's deadline to answer it in time.
_DEADLINE_MARGIN_SECONDS = 0.25


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path else None


class TemporalIncidents:
    """The gateway's line to each case's ``IncidentWorkflow`` (workflow id = case id):
    start it at most once, and pass it findings, ownership answers, resolutions
    and the customer's confirmation. A rejected update or a finished workflow
    becomes FAILED_PRECONDITION with the workflow's reason."""

    def __init__(self, client: Client, task_queue: str) -> None:
        self._client = client
        self._task_queue = task_queue

    async def ensure_started(
        self, case_id: str, service_id: str, first_contact_partner_id: str
    ) -> None:
        try:
            await self._client.start_workflow(
                IncidentWorkflow.run,
                IncidentInput(
                    case_id=case_id,
                    service_id=service_id,
                    first_contact_partner_id=first_contact_partner_id,
                ),
                id=case_id,
                task_queue=self._task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                # The first workflow task comes back in the start's own answer when this
                # process's worker polls the queue (the embedded stack); elsewhere the
                # server ignores the request and the task is polled as usual.
                request_eager_start=True,
            )
        except WorkflowAlreadyStartedError:
            return  # already ran to completion: nothing to start again
        except RPCError as exc:
            raise Unavailable(
                "the workflow engine cannot be reached; retry with the same idempotency key",
                reason="WORKFLOW_ENGINE_UNAVAILABLE",
            ) from exc

    @property
    def retention_workflow_id(self) -> str:
        return f"retention-{self._task_queue}"

    async def ensure_retention(self) -> None:
        """Start the retention sweep (`RetentionWorkflow`) unless it runs already; a
        workflow engine that cannot be reached is logged (the next start tries again)."""
        try:
            await self._client.start_workflow(
                RETENTION_WORKFLOW,  # by name: the no-argument run confuses mypy's overloads
                id=self.retention_workflow_id,
                task_queue=self._task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            )
        except RPCError as exc:
            log.warning("could not start the retention sweep: %s", exc)

    async def status(self, case_id: str) -> WorkflowExecutionStatus | None:
        description = await self._client.get_workflow_handle(case_id).describe()
        return description.status

    async def _bounded(self, message: Any) -> None:
        payloads = await self._client.data_converter.encode([message])
        if sum(payload.ByteSize() for payload in payloads) > MAX_WORKFLOW_MESSAGE_BYTES:
            raise InvalidArgument.field(
                "request",
                f"is too large for the case's workflow (over {MAX_WORKFLOW_MESSAGE_BYTES} bytes)",
                reason="MESSAGE_TOO_LARGE",
            )

    async def send_finding(self, case_id: str, finding: Finding) -> None:
        await self._bounded(finding)
        try:
            await self._client.get_workflow_handle(case_id).signal(
                IncidentWorkflow.submit_finding, finding
            )
        except RPCError as exc:
            raise _closed_or_unavailable(exc) from exc

    async def end_erased(self, case_ids: Sequence[str], reason: str) -> None:
        """Tell each case's workflow that its customer was erased (``reason``:
        ``customer-request``) or its retention ended: a running one ends, cancelling what
        it waited for (`IncidentWorkflow.erase`). A finished one is left as it is; one
        that cannot be reached is logged (its next run, if any, starts erased)."""
        for case_id in case_ids:
            try:
                await self._client.get_workflow_handle(case_id).signal(
                    IncidentWorkflow.erase, CaseErased(reason=reason)
                )
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:  # NOT_FOUND: finished, or none
                    log.warning("could not end the workflow of erased case %s: %s", case_id, exc)

    async def accept(self, case_id: str, answer: OwnershipAnswer) -> str:
        return await self._update(case_id, "accept_ownership", answer)

    async def decline(self, case_id: str, answer: OwnershipAnswer) -> str:
        return await self._update(case_id, "decline_ownership", answer)

    async def resolve(self, case_id: str, request: ResolveRequest) -> str:
        return await self._update(case_id, "resolve", request)

    async def confirm(self, case_id: str, answer: CustomerAnswer) -> str:
        return await self._update(case_id, "confirm", answer)

    async def reopen(self, case_id: str, answer: CustomerAnswer) -> str:
        return await self._update(case_id, "reopen", answer)

    async def _update(self, case_id: str, name: str, arg: Any) -> str:
        """Run an update, answering within the caller's deadline: a workflow that does not
        answer in time is UNAVAILABLE (retry with the same idempotency key), never a hang."""
        await self._bounded(arg)
        handle = self._client.get_workflow_handle(case_id)
        budget = time_left(UPDATE_TIMEOUT_SECONDS) - _DEADLINE_MARGIN_SECONDS
        try:
            async with asyncio.timeout(max(budget, 0.0)):
                result: str = await handle.execute_update(name, arg, result_type=str)
        except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
            # The client turns the timeout's cancellation into its own error.
            raise Unavailable(
                "the case's workflow did not answer in time; retry with the same idempotency key",
                reason="WORKFLOW_DID_NOT_ANSWER",
            ) from None
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            message = getattr(cause, "message", None) or str(cause or exc)
            raise FailedPrecondition(message, reason="CASE_STATE_REFUSED") from exc
        except RPCError as exc:
            raise _closed_or_unavailable(exc) from exc
        return result


def _closed_or_unavailable(exc: RPCError) -> Exception:
    if exc.status == RPCStatusCode.NOT_FOUND:
        return FailedPrecondition("the case is closed", reason="CASE_CLOSED")
    return Unavailable(
        "the workflow engine cannot be reached; retry with the same idempotency key",
        reason="WORKFLOW_ENGINE_UNAVAILABLE",
    )


#: Workflow tasks one worker runs at once (see `WORKER_OPTIONS`).
MAX_WORKFLOW_TASKS = 8

#: Every worker's settings: the gateway's, and the incident benchmark's bare worker's.
#:
#: Workflows run outside Temporal's sandbox. The sandbox used to import a workflow's
#: modules afresh for every workflow it started (36% of the embedded stack's busy time
#: under the incident benchmark), so ours were passed through it; from then on it no
#: longer saw what our own modules called, and what it still cost was its own: entering
#: its context for every activation and every payload it converted, and proxying the
#: builtins: 44% of the workflow worker's busy samples, 6% of the process's, in
#: py-spy's profile of `coopgate up` under the incident benchmark. What it guarded is
#: guarded by tests instead: workflow modules import only temporalio, themselves and a
#: short list of the standard library, and call no clock, I/O or hash of their own
#: (tests/workflows/test_determinism.py); the replay tests on recorded histories check
#: that the code takes the recorded path.
WORKER_OPTIONS: dict[str, Any] = {
    "workflow_runner": UnsandboxedWorkflowRunner(),
    # A workflow task runs its local activities (the store writes of a coarse run)
    # before it completes, within its 10 s timeout. With the SDK's default of 100 in
    # flight, 100 incidents opened at once had their tasks queue for the store and the
    # loop together past that timeout ("Workflow task not found"), each retried 13-16
    # times. Fewer at once, the others wait on the server, where no timeout runs.
    "max_concurrent_workflow_tasks": MAX_WORKFLOW_TASKS,
}


def create_worker(
    client: Client, task_queue: str, activities: IncidentActivities, **kwargs: object
) -> Worker:
    workflows: Sequence[type] = [IncidentWorkflow, RetentionWorkflow]
    return Worker(
        client,
        task_queue=task_queue,
        workflows=workflows,
        activities=activities.all(),
        **{**WORKER_OPTIONS, **kwargs},
    )
