"""A case committed without its incident workflow (the gateway stopped between the two,
and the caller never retried) gets it from the sweep, on the real Temporal dev server
and worker: started once, with the case's input, and the incident proceeds. A case
opened normally leaves no pending start behind."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from coopgate.v1 import cases_pb2
from sqlalchemy import select
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from gateway.cases.starts import WorkflowStarts
from gateway.core.caller import Role
from gateway.core.errors import Unavailable
from gateway.store.schema import cases, workflow_starts
from tests.conftest import Stack
from tests.gateway.cases.test_case_view import Key, open_case, own_service, view
from workflows.contracts import IncidentInput


class StoppedBeforeTheStart:
    """The line to the workflows of a gateway that stops right after the case's commit."""

    async def ensure_started(self, case_id: str, service_id: str, first_contact: str) -> None:
        raise Unavailable("the gateway stopped before the workflow's start")


async def _pending(stack: Stack, service_id: str) -> list[str]:
    async with stack.runtime.store.read() as conn:
        return list(
            (
                await conn.execute(
                    select(workflow_starts.c.case_id)
                    .join(cases, cases.c.case_id == workflow_starts.c.case_id)
                    .where(cases.c.service_id == service_id)
                )
            ).scalars()
        )


async def _started_with(stack: Stack, case_id: str) -> IncidentInput:
    history = await stack.client.get_workflow_handle(case_id).fetch_history()
    first = history.events[0]
    assert first.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
    payloads = first.workflow_execution_started_event_attributes.input.payloads
    (given,) = await stack.client.data_converter.decode(payloads, [IncidentInput])
    assert isinstance(given, IncidentInput)
    return given


async def test_a_case_committed_without_its_workflow_gets_it_from_the_sweep(
    stack: Stack, unique: Key
) -> None:
    service_id = await own_service(stack, unique, [])
    bank = stack.api("bank-a", Role.ADVISOR)
    intake = stack.runtime.domain.cases.intake
    real = intake.incidents
    intake.incidents = StoppedBeforeTheStart()  # type: ignore[assignment]
    try:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await open_case(bank, service_id, unique("c"), unique)
    finally:
        intake.incidents = real
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    # The case is in the store, its workflow is not in Temporal: the caller gave up.
    (case_id,) = await _pending(stack, service_id)
    with pytest.raises(RPCError):
        await stack.client.get_workflow_handle(case_id).describe()

    # Another replica's sweep (any process's: they share the store) starts it.
    replica = WorkflowStarts(stack.runtime.store, real, grace=0)
    assert await replica.sweep() >= 1
    assert await _pending(stack, service_id) == []
    description = await stack.client.get_workflow_handle(case_id).describe()
    assert description.status == WorkflowExecutionStatus.RUNNING
    assert await _started_with(stack, case_id) == IncidentInput(
        case_id=case_id, service_id=service_id, first_contact_partner_id="bank-a"
    )
    # The worker runs it: the incident goes on to diagnosis.
    async with asyncio.timeout(30):
        while (await view(bank, case_id)).header.status < cases_pb2.CASE_STATUS_DIAGNOSING:
            await asyncio.sleep(0.1)

    # Swept again (two replicas at once, or a row found twice): the same run, not another.
    async with stack.runtime.store.write() as conn:
        await stack.runtime.domain.cases.starts.record(conn, case_id, description.start_time)
    assert await replica.sweep() >= 1
    again = await stack.client.get_workflow_handle(case_id).describe()
    assert again.run_id == description.run_id
    assert await _pending(stack, service_id) == []


async def test_a_case_opened_normally_leaves_no_pending_start(stack: Stack, unique: Key) -> None:
    service_id = await own_service(stack, unique, [])
    bank = stack.api("bank-a", Role.ADVISOR)
    await open_case(bank, service_id, unique("c"), unique)
    # Recorded with the case (its transaction), noted as started, and deleted within a
    # second: well before any sweep (rows younger than the 10 s grace are left alone).
    async with asyncio.timeout(5):
        while await _pending(stack, service_id) != []:
            await asyncio.sleep(0.1)
