"""The gateway's line to the workflows never hangs and never sends what Temporal would
refuse: a message over the bound is INVALID_ARGUMENT before it leaves, and an update
the workflow does not answer is UNAVAILABLE within the caller's deadline. On the real
dev server."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
from coopgate.v1 import cases_pb2, common_pb2
from temporalio.testing import WorkflowEnvironment

from gateway.core.caller import reset_deadline, set_deadline, time_left
from gateway.core.errors import InvalidArgument, Unavailable
from gateway.orchestration.temporal import MAX_WORKFLOW_MESSAGE_BYTES, TemporalIncidents
from tests.conftest import Stack
from tests.helpers import error_info
from workflows.contracts import Finding, OwnershipAnswer


def test_time_left_follows_the_callers_deadline() -> None:
    assert time_left(30.0) == 30.0  # no deadline set
    token = set_deadline(0.5)
    try:
        assert 0.0 < time_left(30.0) <= 0.5
        assert time_left(0.1) == 0.1
    finally:
        reset_deadline(token)
    assert time_left(30.0) == 30.0


async def test_an_update_nobody_answers_is_unavailable_within_the_deadline(
    temporal_env: WorkflowEnvironment,
) -> None:
    """A workflow on a task queue no worker polls never answers its update."""
    queue = f"nobody-{uuid.uuid4()}"
    case_id = f"case-{uuid.uuid4().hex[:12]}"
    incidents = TemporalIncidents(temporal_env.client, queue)
    await incidents.ensure_started(case_id, "nfc-payment", "bank-a")
    token = set_deadline(1.5)
    started = time.monotonic()
    try:
        with pytest.raises(Unavailable) as caught:
            await incidents.accept(case_id, OwnershipAnswer(offer_id="o", partner_id="bank-a"))
    finally:
        reset_deadline(token)
    assert caught.value.reason == "WORKFLOW_DID_NOT_ANSWER"
    assert time.monotonic() - started < 1.5
    await temporal_env.client.get_workflow_handle(case_id).terminate()


async def test_a_message_over_the_bound_never_leaves(temporal_env: WorkflowEnvironment) -> None:
    incidents = TemporalIncidents(temporal_env.client, f"nobody-{uuid.uuid4()}")
    huge = "x" * (MAX_WORKFLOW_MESSAGE_BYTES + 1)
    with pytest.raises(InvalidArgument) as caught:
        await incidents.send_finding(
            "case-never-started", Finding(partner_id="telco-a", component="c", status=huge)
        )
    assert caught.value.reason == "MESSAGE_TOO_LARGE"
    with pytest.raises(InvalidArgument):
        await incidents.accept("case-never-started", OwnershipAnswer(huge, "bank-a"))


async def test_a_huge_offer_id_is_refused_at_once_and_wedges_nothing(stack: Stack) -> None:
    bank = stack.api("bank-a")
    opened = await bank.cases.OpenCase(
        cases_pb2.OpenCaseRequest(
            idempotency_key=f"k-{uuid.uuid4()}",
            service_id="nfc-payment",
            customer_local_id=f"cust-{uuid.uuid4().hex[:8]}",
            channel=common_pb2.CHANNEL_PHONE,
            summary="phone payment refused",
        )
    )
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bank.cases.AcceptOwnership(
            cases_pb2.AcceptOwnershipRequest(
                idempotency_key=f"k-{uuid.uuid4()}",
                case_id=opened.case_id,
                offer_id="o" * (1024 * 1024),
            ),
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert time.monotonic() - started < 5
    # The case's workflow still answers at once: an answer to no open offer is refused.
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bank.cases.AcceptOwnership(
            cases_pb2.AcceptOwnershipRequest(
                idempotency_key=f"k-{uuid.uuid4()}", case_id=opened.case_id, offer_id="nope"
            ),
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "CASE_STATE_REFUSED"
    assert time.monotonic() - started < 5
