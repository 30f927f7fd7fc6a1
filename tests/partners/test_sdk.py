"""The partner SDK against a real gateway: retries on UNAVAILABLE only, the same
idempotency key on every retry, typed errors, and a work subscription that
acknowledges only handled items and survives a broken stream."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import pytest
from coopgate.v1 import cases_pb2

from gateway.core.caller import Role
from partners import (
    Channel,
    DiagnosisRequest,
    FailedPrecondition,
    InvalidArgument,
    PartnerClient,
    PartnerCredentials,
    PermissionDenied,
    Purpose,
    RetryPolicy,
    Unavailable,
    WorkItem,
)
from partners.scenarios import Stage
from tests.partners.backends import eventually
from tests.partners.proxy import TcpRelay

Req = TypeVar("Req")
Resp = TypeVar("Resp")
FAST = RetryPolicy(max_attempts=4, initial_backoff=0.05, max_backoff=0.2, jitter=0.5)


class Attempts(grpc.aio.UnaryUnaryClientInterceptor):
    """Records every attempt (method, idempotency key); can lose the first response
    of one method after the gateway executed the call, as a dropped connection would."""

    def __init__(self, lose_first_response_of: str = "") -> None:
        self.seen: list[tuple[str, str]] = []
        self.lost: list[object] = []
        self._lose = lose_first_response_of

    def count(self, method: str) -> int:
        return sum(1 for m, _ in self.seen if m.endswith(f"/{method}"))

    async def intercept_unary_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, Req], Awaitable[grpc.aio.UnaryUnaryCall[Req, Resp]]
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Req,
    ) -> Resp | grpc.aio.UnaryUnaryCall[Req, Resp]:
        raw: str | bytes = client_call_details.method
        method = raw.decode() if isinstance(raw, bytes) else raw
        self.seen.append((method, str(getattr(request, "idempotency_key", ""))))
        call = await continuation(client_call_details, request)
        if self._lose and method.endswith(f"/{self._lose}") and not self.lost:
            self.lost.append(await call)
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="connection reset after the gateway answered (test)",
            )
        return call


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _creds(stage: Stage, kind: str, role: Role = Role.PARTNER) -> PartnerCredentials:
    return stage.credentials(stage.cast[kind], role)


async def test_unavailable_is_retried_with_backoff_then_raised_typed(
    credentials: Callable[[str, Role], PartnerCredentials],
) -> None:
    attempts = Attempts()
    loop = asyncio.get_running_loop()
    async with PartnerClient(
        f"127.0.0.1:{_closed_port()}",
        credentials("bank-a", Role.PARTNER),
        retry=FAST,
        interceptors=[attempts],
    ) as client:
        started = loop.time()
        with pytest.raises(Unavailable) as caught:
            await client.list_services()
        took = loop.time() - started
    assert caught.value.attempts == FAST.max_attempts
    assert attempts.count("ListServices") == FAST.max_attempts
    assert caught.value.retryable
    assert caught.value.method == "ListServices"
    # Three waits of at least (1 - jitter) times 0.05, 0.1 and 0.2 seconds.
    assert took >= (0.05 + 0.1 + 0.2) * (1 - FAST.jitter)


async def test_a_deadline_bounds_the_retries(
    credentials: Callable[[str, Role], PartnerCredentials],
) -> None:
    patient = RetryPolicy(max_attempts=50, initial_backoff=0.1, max_backoff=0.1, jitter=0)
    loop = asyncio.get_running_loop()
    async with PartnerClient(
        f"127.0.0.1:{_closed_port()}", credentials("bank-a", Role.PARTNER), retry=patient
    ) as client:
        started = loop.time()
        with pytest.raises(Unavailable) as caught:
            await client.list_services(deadline=0.5)
    assert loop.time() - started < 1.5
    assert 2 <= caught.value.attempts < 50


async def test_invalid_argument_and_failed_precondition_are_raised_at_once(
    stage: Stage,
) -> None:
    service_id = await stage.service("nfc-payment")
    attempts = Attempts()
    async with PartnerClient(
        stage.target, _creds(stage, "bank", Role.ADVISOR), retry=FAST, interceptors=[attempts]
    ) as bank:
        with pytest.raises(InvalidArgument) as bad:
            await bank.open_case(
                service_id=service_id, customer_local_id="", channel=Channel.PHONE, summary=" "
            )
        assert {v.field for v in bad.value.violations} == {"customer_local_id", "summary"}
        assert bad.value.reason == "INVALID_ARGUMENT"
        assert bad.value.attempts == 1
        assert attempts.count("OpenCase") == 1

        customer = stage.customer(stage.cast["bank"])
        await bank.open_case(
            service_id=service_id,
            customer_local_id=customer,
            channel=Channel.PHONE,
            summary="cannot pay by phone",
        )
        with pytest.raises(FailedPrecondition) as refused:
            await bank.grant_consent(
                customer_local_id=customer,
                source_partner_id=stage.cast["operator"],
                recipient_partner_ids=[stage.cast["bank"]],
                categories=["diagnostic.findings"],
                purposes=[Purpose.INCIDENT_DIAGNOSIS],
                channel=Channel.PHONE,
                notice_version="v1",
            )
    assert refused.value.reason == "NO_SHARING_AGREEMENT"
    assert refused.value.metadata["source"] == stage.cast["operator"]
    assert refused.value.attempts == 1
    assert attempts.count("GrantConsent") == 1


async def test_a_retry_reuses_the_idempotency_key_and_gets_the_first_result(
    stage: Stage,
) -> None:
    service_id = await stage.service("nfc-payment")
    attempts = Attempts(lose_first_response_of="OpenCase")
    customer = stage.customer(stage.cast["bank"])
    async with PartnerClient(
        stage.target, _creds(stage, "bank"), retry=FAST, interceptors=[attempts]
    ) as bank:
        opened = await bank.open_case(
            service_id=service_id,
            customer_local_id=customer,
            channel=Channel.PHONE,
            summary="cannot pay by phone",
        )
        cases = [c async for c in bank.list_cases(customer_local_id=customer)]
    keys = [key for method, key in attempts.seen if method.endswith("/OpenCase")]
    assert len(keys) == 2
    assert keys[0] == keys[1] != ""
    lost = attempts.lost[0]
    assert isinstance(lost, cases_pb2.OpenCaseResponse)
    assert opened.case_id == lost.case_id
    assert [c.case_id for c in cases] == [opened.case_id]


async def test_work_is_acknowledged_only_after_the_handler_succeeded(stage: Stage) -> None:
    service_id = await stage.service("nfc-payment")
    bank = stage.cast["bank"]
    seen: list[WorkItem] = []
    failed: set[str] = set()

    async def handler(item: WorkItem) -> None:
        seen.append(item)
        if isinstance(item.payload, DiagnosisRequest) and item.work_id not in failed:
            failed.add(item.work_id)
            raise RuntimeError("the card system is down")

    def diagnoses(case_id: str) -> list[WorkItem]:
        return [
            i
            for i in seen
            if isinstance(i.payload, DiagnosisRequest) and i.payload.case_id == case_id
        ]

    quick = RetryPolicy(initial_backoff=0.1, max_backoff=0.2)
    async with PartnerClient(stage.target, _creds(stage, "bank")) as client:
        async with client.subscribe(handler, redelivery=quick) as subscription:
            opened = await stage.client(bank, "advisor").open_case(
                service_id=service_id,
                customer_local_id=stage.customer(bank),
                channel=Channel.PHONE,
                summary="cannot pay by phone",
            )
            await eventually(lambda: len(diagnoses(opened.case_id)) == 2, "the redelivery")
            await eventually(lambda: subscription.stats.acknowledged >= 3, "the acknowledgements")
        first, second = diagnoses(opened.case_id)
        assert first.work_id == second.work_id
        assert (first.redeliveries, second.redeliveries) == (0, 1)
        assert subscription.stats.failed == 1
        assert subscription.stats.subscriptions >= 2

        seen.clear()
        async with client.subscribe(handler) as again:
            await eventually(lambda: again.stats.subscriptions == 1, "a new subscription")
            await asyncio.sleep(0.8)  # several of the gateway's delivery polls
        assert diagnoses(opened.case_id) == []


async def test_items_handled_together_are_acknowledged_in_one_call(stage: Stage) -> None:
    """Handlers that return while an acknowledgement is due share it: one call for
    several items (the gateway took them all: none comes again)."""
    service_id = await stage.service("nfc-payment")
    bank = stage.cast["bank"]
    attempts = Attempts()
    handled: list[str] = []
    together = asyncio.Event()

    async def handler(item: WorkItem) -> None:
        handled.append(item.work_id)
        if len(handled) >= 3:  # received, diagnosing, the diagnosis request
            together.set()
        await asyncio.wait_for(together.wait(), 10)

    async with PartnerClient(
        stage.target, _creds(stage, "bank"), interceptors=[attempts]
    ) as client:
        async with client.subscribe(handler, concurrency=4) as subscription:
            await stage.client(bank, "advisor").open_case(
                service_id=service_id,
                customer_local_id=stage.customer(bank),
                channel=Channel.PHONE,
                summary="cannot pay by phone",
            )
            await eventually(lambda: subscription.stats.acknowledged >= 3, "the acknowledgements")
        acknowledged = list(handled)
        calls = [key for method, key in attempts.seen if method.endswith("/Acknowledge")]
        assert len(calls) < subscription.stats.acknowledged, calls
        assert any(key.startswith("ack-3-") for key in calls), calls

        handled.clear()
        async with client.subscribe(handler) as again:
            await eventually(lambda: again.stats.subscriptions == 1, "a new subscription")
            await asyncio.sleep(0.8)
        assert not set(handled) & set(acknowledged)


async def test_a_full_window_opens_at_the_acknowledgement(stage: Stage) -> None:
    """With room for one item in flight, each next item comes as soon as the last one
    is acknowledged (woken by the acknowledgement), not at the gateway's safety read a
    second later."""
    service_id = await stage.service("nfc-payment")
    bank = stage.cast["bank"]
    arrived: list[float] = []

    async def handler(item: WorkItem) -> None:
        arrived.append(asyncio.get_running_loop().time())

    async with (
        PartnerClient(stage.target, _creds(stage, "bank")) as client,
        client.subscribe(handler, max_in_flight=1, concurrency=1) as subscription,
    ):
        await stage.client(bank, "advisor").open_case(
            service_id=service_id,
            customer_local_id=stage.customer(bank),
            channel=Channel.PHONE,
            summary="cannot pay by phone",
        )
        # received, diagnosing, the diagnosis request: queued together, sent one by one
        await eventually(lambda: subscription.stats.acknowledged >= 3, "three items")
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrived[:3])]
    assert len(gaps) == 2
    assert max(gaps) < 0.5, gaps  # SAFETY_SECONDS is 1 s


async def test_a_refused_subscription_is_raised_not_retried(stage: Stage) -> None:
    async def handler(item: WorkItem) -> None:
        raise AssertionError("an advisor receives no work")

    async with PartnerClient(stage.target, _creds(stage, "bank", Role.ADVISOR)) as advisor:
        subscription = advisor.subscribe(handler)
        with pytest.raises(PermissionDenied) as refused:
            async with asyncio.timeout(5):
                await subscription.run()
    assert refused.value.reason == "ROLE_NOT_ALLOWED"
    assert subscription.stats.subscriptions == 1


async def test_the_subscription_reconnects_after_the_stream_drops(stage: Stage) -> None:
    service_id = await stage.service("nfc-payment")
    bank = stage.cast["bank"]
    advisor = stage.client(bank, "advisor")
    got: list[str] = []

    async def handler(item: WorkItem) -> None:
        if isinstance(item.payload, DiagnosisRequest):
            got.append(item.payload.case_id)

    async def open_one() -> str:
        opened = await advisor.open_case(
            service_id=service_id,
            customer_local_id=stage.customer(bank),
            channel=Channel.PHONE,
            summary="cannot pay by phone",
        )
        return opened.case_id

    quick = RetryPolicy(initial_backoff=0.05, max_backoff=0.2)
    async with (
        TcpRelay(stage.target) as relay,
        PartnerClient(relay.target, _creds(stage, "bank")) as client,
        client.subscribe(handler, reconnect=quick) as subscription,
    ):
        first = await open_one()
        # Cut once its item is acknowledged too (the handler runs first): delivery is at
        # least once, so an item still unacknowledged at the drop is rightly sent again.
        await eventually(
            lambda: first in got and subscription.stats.acknowledged == subscription.stats.handled,
            "work through the first stream, acknowledged",
        )
        relay.cut()
        second = await open_one()
        await eventually(lambda: second in got, "work after the drop", timeout=10)
    assert subscription.stats.subscriptions >= 2
    assert relay.connections >= 2
    assert got.count(first) == 1


async def test_watch_case_streams_the_timeline_in_order(stage: Stage) -> None:
    service_id = await stage.service("nfc-payment")
    bank = stage.cast["bank"]
    advisor = stage.client(bank, "advisor", "advisor-1")
    opened = await advisor.open_case(
        service_id=service_id,
        customer_local_id=stage.customer(bank),
        channel=Channel.PHONE,
        summary="cannot pay by phone",
    )
    sequences: list[int] = []
    async with asyncio.timeout(10):
        async for change in advisor.watch_case(opened.case_id, purpose=Purpose.INCIDENT_RESOLUTION):
            sequences.append(change.item.sequence)
            assert change.header.case_id == opened.case_id
            if change.item.WhichOneof("item") == "interaction":
                break
    assert sequences == sorted(sequences)
    assert sequences[0] == 1
