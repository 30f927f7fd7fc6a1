"""The error mapping: domain errors carry rich details; anything else becomes
INTERNAL without leaking internals. A real grpc.aio server with mTLS."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from coopgate.v1 import cases_pb2, cases_pb2_grpc

from gateway.api.interceptors import Encoded, GatewayInterceptor
from gateway.core.caller import Role, current_caller
from gateway.core.errors import FailedPrecondition, Unauthenticated
from gateway.stack import Pki
from partners import PartnerCredentials, secure_channel

#: Every read declares its purpose (a required field of the contract).
PURPOSE = "incident-resolution"
SECRET = "password=hunter2 at /srv/db.sqlite line 42"
#: A response encoded by hand, fields out of protobuf's own order (the view's items
#: come after the header it encodes): sent as these bytes, not encoded again.
ENCODED = (
    cases_pb2.GetCaseViewResponse(
        view=cases_pb2.CaseView(timeline=[cases_pb2.TimelineItem(sequence=2)])
    ).SerializeToString()
    + cases_pb2.GetCaseViewResponse(
        view=cases_pb2.CaseView(header=cases_pb2.CaseHeader(case_id="sent-as-is"))
    ).SerializeToString()
)


class ExplodingCases(cases_pb2_grpc.CaseServiceServicer):
    async def GetCaseView(
        self, request: cases_pb2.GetCaseViewRequest, context: Any
    ) -> cases_pb2.GetCaseViewResponse:
        caller = current_caller()
        if request.case_id == "boom":
            raise RuntimeError(SECRET)
        if request.case_id == "closed":
            raise FailedPrecondition("case is closed", reason="CASE_CLOSED")
        if request.case_id == "encoded":
            return Encoded(ENCODED)  # type: ignore[return-value]
        return cases_pb2.GetCaseViewResponse(
            view=cases_pb2.CaseView(
                header=cases_pb2.CaseHeader(case_id=caller.partner_id, summary=caller.person_id)
            )
        )

    async def WatchCase(
        self, request: cases_pb2.WatchCaseRequest, context: Any
    ) -> AsyncIterator[cases_pb2.WatchCaseResponse]:
        yield cases_pb2.WatchCaseResponse(item=cases_pb2.TimelineItem(sequence=1))
        raise RuntimeError(SECRET)


@pytest.fixture
async def exploding(
    pki: Pki, credentials: Callable[[str, Role], PartnerCredentials]
) -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=[GatewayInterceptor()])
    cases_pb2_grpc.add_CaseServiceServicer_to_server(ExplodingCases(), server)  # type: ignore[abstract]
    port = server.add_secure_port("127.0.0.1:0", pki.server.credentials())
    await server.start()
    channel = secure_channel(f"127.0.0.1:{port}", credentials("bank-a", Role.ADVISOR))
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(0)


async def test_unexpected_error_is_internal_without_details(exploding: grpc.aio.Channel) -> None:
    stub = cases_pb2_grpc.CaseServiceStub(exploding)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetCaseView(cases_pb2.GetCaseViewRequest(case_id="boom", purpose=PURPOSE))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in (caught.value.details() or "")
    assert (caught.value.details() or "").startswith("internal error (ref ")


async def test_unexpected_error_mid_stream_is_internal(exploding: grpc.aio.Channel) -> None:
    stub = cases_pb2_grpc.CaseServiceStub(exploding)
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for item in stub.WatchCase(cases_pb2.WatchCaseRequest(case_id="x", purpose=PURPOSE)):
            received.append(item.item.sequence)
    assert received == [1]
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in (caught.value.details() or "")


async def test_domain_error_maps_to_its_code(exploding: grpc.aio.Channel) -> None:
    from tests.helpers import error_info

    stub = cases_pb2_grpc.CaseServiceStub(exploding)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetCaseView(cases_pb2.GetCaseViewRequest(case_id="closed", purpose=PURPOSE))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == "case is closed"
    assert error_info(caught.value).reason == "CASE_CLOSED"


async def test_caller_comes_from_the_certificate_and_person_from_metadata(
    exploding: grpc.aio.Channel,
) -> None:
    stub = cases_pb2_grpc.CaseServiceStub(exploding)
    response = await stub.GetCaseView(
        cases_pb2.GetCaseViewRequest(case_id="ok", purpose=PURPOSE),
        metadata=(("x-coopgate-person", "advisor-7"), ("x-coopgate-partner", "telco-a")),
    )
    assert response.view.header.case_id == "bank-a"
    assert response.view.header.summary == "advisor-7"


async def test_a_response_encoded_already_is_sent_as_it_is(exploding: grpc.aio.Channel) -> None:
    raw: grpc.aio.UnaryUnaryMultiCallable[cases_pb2.GetCaseViewRequest, bytes] = (
        exploding.unary_unary(
            "/coopgate.v1.CaseService/GetCaseView",
            request_serializer=cases_pb2.GetCaseViewRequest.SerializeToString,
        )
    )
    sent = await raw(cases_pb2.GetCaseViewRequest(case_id="encoded", purpose=PURPOSE))
    assert sent == ENCODED
    assert sent != cases_pb2.GetCaseViewResponse.FromString(sent).SerializeToString()
    parsed = await cases_pb2_grpc.CaseServiceStub(exploding).GetCaseView(
        cases_pb2.GetCaseViewRequest(case_id="encoded", purpose=PURPOSE)
    )
    assert parsed.view.header.case_id == "sent-as-is"
    assert [item.sequence for item in parsed.view.timeline] == [2]
    # and a message is still encoded as usual
    assert (
        cases_pb2.GetCaseViewResponse.FromString(
            await raw(cases_pb2.GetCaseViewRequest(case_id="ok", purpose=PURPOSE))
        ).view.header.case_id
        == "bank-a"
    )


def test_a_caller_reset_in_another_context_changes_nothing_there() -> None:
    """A server stream abandoned at a reply is closed later by the loop, in a task and
    context of its own: undoing its caller there must not fail (it did, as ValueError
    from ContextVar.reset, seen once among 2,000 cancelled watches) nor touch that
    context's caller."""
    import contextvars

    from gateway.core.caller import Caller, current_caller, reset_caller, set_caller

    stream = contextvars.copy_context()
    token = stream.run(set_caller, Caller("bank-a", Role.ADVISOR))
    elsewhere = contextvars.copy_context()
    elsewhere.run(set_caller, Caller("telco-a", Role.PARTNER))
    elsewhere.run(reset_caller, token)
    assert elsewhere.run(current_caller).partner_id == "telco-a"
    stream.run(reset_caller, token)  # in its own context it is undone
    with pytest.raises(Unauthenticated):
        stream.run(current_caller)
