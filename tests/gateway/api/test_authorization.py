"""The authorization table over the real API: every RPC of the contract, from its service
descriptors, by every role, by (participant, outsider, no such case) where the RPC is
case-scoped, the expected answer derived from the table. And the per-partner quota:
one partner's streams and calls are limited, the others are still served, and every
slot comes back, cancelled calls included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from coopgate.v1 import cases_pb2, cases_pb2_grpc, common_pb2, consents_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from gateway.api.authorization import (
    CONTRACT_METHODS,
    RULES,
    MissingRule,
    Rule,
    method_path,
    require_rules,
)
from gateway.api.interceptors import GatewayInterceptor
from gateway.api.quota import PartnerQuota
from gateway.api.server import SERVICE_NAMES, create_server
from gateway.core.caller import Role, current_caller
from gateway.stack import Pki
from partners import PartnerCredentials, secure_channel
from tests.conftest import Stack
from tests.gateway.api.test_bad_input import METHODS
from tests.helpers import error_info, rich_status

ROLES = tuple(Role)
PURPOSE = "incident-diagnosis"
#: Who takes part in the case (it opens it), who does not (energy-a is in no chain of
#: nfc-payment), and who calls the RPCs that name no case (a partner the gateway does
#: not know: it has no work, no customers, nothing to change).
PARTICIPANT, OUTSIDER, NOBODY = "bank-a", "energy-a", "authz-probe"
#: Answers that are never precise.
IMPRECISE = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNIMPLEMENTED)


def test_every_rpc_of_the_contract_has_exactly_one_rule() -> None:
    assert set(RULES) == {method_path(m) for m in METHODS} == set(CONTRACT_METHODS)
    assert all(rule.roles for rule in RULES.values())
    require_rules(SERVICE_NAMES)  # the server's own check passes on the table


def test_a_server_with_a_method_the_table_does_not_declare_is_not_built(
    stack: Stack, pki: Pki
) -> None:
    path = "/coopgate.v1.CaseService/GetCaseView"
    partial = {name: rule for name, rule in RULES.items() if name != path}
    with pytest.raises(MissingRule, match="CaseService/GetCaseView: no rule"):
        create_server("127.0.0.1:0", pki.server, stack.runtime.domain, rules=partial)
    scoped_without_case = {
        **RULES,
        "/coopgate.v1.CaseService/OpenCase": Rule((Role.PARTNER,), True),
    }
    with pytest.raises(MissingRule, match="OpenCase: case-scoped, but its request has no case_id"):
        require_rules(SERVICE_NAMES, scoped_without_case)


# -- the matrix -----------------------------------------------------------------------


def _case_request(name: str, case_id: str, key: str) -> Message:
    """A well-formed request naming ``case_id``, for each case-scoped RPC: an outsider's
    answer then comes from the case's lookup, not from the request's shape."""
    requests: dict[str, Message] = {
        "GetCaseView": cases_pb2.GetCaseViewRequest(case_id=case_id, purpose=PURPOSE),
        "WatchCase": cases_pb2.WatchCaseRequest(case_id=case_id, purpose=PURPOSE),
        "AppendInteraction": cases_pb2.AppendInteractionRequest(
            idempotency_key=key,
            case_id=case_id,
            interaction=cases_pb2.Interaction(
                channel=common_pb2.CHANNEL_PHONE,
                author_kind=cases_pb2.AUTHOR_KIND_ADVISOR,
                summary="called back",
            ),
        ),
        "SubmitFinding": cases_pb2.SubmitFindingRequest(
            idempotency_key=key,
            case_id=case_id,
            request_id="req-1",
            finding=cases_pb2.Finding(
                component="card-token",
                status=cases_pb2.FINDING_STATUS_OK,
                confidence=0.9,
            ),
        ),
        "AcceptOwnership": cases_pb2.AcceptOwnershipRequest(
            idempotency_key=key, case_id=case_id, offer_id="offer-none"
        ),
        "DeclineOwnership": cases_pb2.DeclineOwnershipRequest(
            idempotency_key=key, case_id=case_id, offer_id="offer-none", reason="busy"
        ),
        "ResolveCase": cases_pb2.ResolveCaseRequest(
            idempotency_key=key, case_id=case_id, resolution="done"
        ),
        "ConfirmResolution": cases_pb2.ConfirmResolutionRequest(
            idempotency_key=key, case_id=case_id
        ),
        "ReopenCase": cases_pb2.ReopenCaseRequest(
            idempotency_key=key, case_id=case_id, reason="again", channel=common_pb2.CHANNEL_PHONE
        ),
        "RequestConsent": consents_pb2.RequestConsentRequest(
            idempotency_key=key,
            case_id=case_id,
            source_partner_id="telco-a",
            categories=["diagnostic.findings"],
            purposes=[PURPOSE],
        ),
    }
    return requests[name]


def _empty(method: MethodDescriptor) -> Message:
    return message_factory.GetMessageClass(method.input_type)()


Answer = tuple[grpc.StatusCode, str, str]


async def _answer(channel: grpc.aio.Channel, method: MethodDescriptor, request: Message) -> Answer:
    """(code, ErrorInfo reason, message) of one call; a stream that is still open after a
    moment (it was admitted and is being served) counts as OK."""
    response = message_factory.GetMessageClass(method.output_type)
    path = method_path(method)
    try:
        if method.server_streaming:
            stream = channel.unary_stream(
                path,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response.FromString,
            )(request, timeout=10)

            async def drain() -> None:
                async for _ in stream:
                    pass

            try:
                await asyncio.wait_for(drain(), 1.0)
            except TimeoutError:
                return grpc.StatusCode.OK, "", "open"
            finally:
                stream.cancel()
        else:
            await channel.unary_unary(
                path,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response.FromString,
            )(request, timeout=10)
    except grpc.aio.AioRpcError as error:
        code = error.code()
        reason = error_info(error).reason if code not in IMPRECISE else ""
        return code, reason, error.details() or ""
    return grpc.StatusCode.OK, "", ""


@pytest.fixture(scope="module")
async def channels(stack: Stack) -> Callable[[str, Role], grpc.aio.Channel]:
    """One channel per partner and role for the whole module (per store backend)."""
    opened: dict[tuple[str, Role], grpc.aio.Channel] = {}

    def channel(partner: str, role: Role) -> grpc.aio.Channel:
        if (partner, role) not in opened:
            opened[(partner, role)] = stack.api(partner, role).channel
        return opened[(partner, role)]

    return channel


@pytest.fixture(scope="module")
async def case_id(stack: Stack, channels: Callable[[str, Role], grpc.aio.Channel]) -> str:
    """A case of the participant's, shared by every case-scoped row of the matrix."""
    opened = await cases_pb2_grpc.CaseServiceStub(channels(PARTICIPANT, Role.ADVISOR)).OpenCase(
        cases_pb2.OpenCaseRequest(
            idempotency_key=f"authz-matrix-{stack.backend}",
            service_id="nfc-payment",
            customer_local_id="cust-authz-matrix",
            channel=common_pb2.CHANNEL_PHONE,
            summary="cannot pay by phone",
        )
    )
    return opened.case_id


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
async def test_every_role_gets_what_the_table_says(
    stack: Stack,
    channels: Callable[[str, Role], grpc.aio.Channel],
    case_id: str,
    unique: Callable[[str], str],
    method: MethodDescriptor,
) -> None:
    rule = RULES[method_path(method)]
    missing = "case-" + "0" * (len(case_id) - len("case-"))
    for role in ROLES:
        if rule.case_scoped:
            cells = {
                "participant": (PARTICIPANT, _case_request(method.name, case_id, unique("k"))),
                "outsider": (OUTSIDER, _case_request(method.name, case_id, unique("k"))),
                "no such case": (OUTSIDER, _case_request(method.name, missing, unique("k"))),
            }
        else:
            cells = {"caller": (NOBODY, _empty(method))}
        answers = {
            cell: await _answer(channels(partner, role), method, request)
            for cell, (partner, request) in cells.items()
        }
        for cell, (code, reason, message) in answers.items():
            where = (method.name, role.value, cell, code, reason, message)
            if role in rule.roles:
                assert code not in IMPRECISE, where
                assert (code, reason) != (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
            else:
                assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"), (
                    where
                )
                assert f"role {role.value!r} may not do this" in message, where
        if rule.case_scoped:
            outsider, nothing = answers["outsider"], answers["no such case"]
            same = (outsider[0], outsider[1], outsider[2].replace(case_id, "<id>"))
            assert same == (nothing[0], nothing[1], nothing[2].replace(missing, "<id>")), (
                method.name,
                role.value,
            )
            if role in rule.roles:
                assert outsider[:2] == (grpc.StatusCode.NOT_FOUND, "CASE_NOT_FOUND"), (
                    method.name,
                    outsider,
                )


# -- deny by default --------------------------------------------------------------------


class _Cases(cases_pb2_grpc.CaseServiceServicer):
    """Holds a GetCaseView named "hold" until released; answers any other at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.held = 0

    async def GetCaseView(
        self, request: cases_pb2.GetCaseViewRequest, context: Any
    ) -> cases_pb2.GetCaseViewResponse:
        caller = current_caller()
        if request.case_id == "hold":
            self.held += 1
            await self.release.wait()
        return cases_pb2.GetCaseViewResponse(
            view=cases_pb2.CaseView(header=cases_pb2.CaseHeader(case_id=caller.partner_id))
        )


@pytest.fixture
async def small_server(
    pki: Pki,
) -> AsyncIterator[tuple[str, _Cases, PartnerQuota]]:
    """A CaseService behind the gateway's interceptor with one slot a partner, and a
    table that declares only GetCaseView."""
    quota = PartnerQuota(max_streams=1, max_in_flight=1)
    rules = {"/coopgate.v1.CaseService/GetCaseView": Rule((Role.ADVISOR,))}
    server = grpc.aio.server(interceptors=[GatewayInterceptor(rules=rules, quota=quota)])
    servicer = _Cases()  # type: ignore[abstract]
    cases_pb2_grpc.add_CaseServiceServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", pki.server.credentials())
    await server.start()
    try:
        yield f"127.0.0.1:{port}", servicer, quota
    finally:
        await server.stop(0)


async def test_a_method_without_a_rule_is_denied_to_everyone(
    small_server: tuple[str, _Cases, PartnerQuota],
    credentials: Callable[[str, Role], PartnerCredentials],
) -> None:
    target, _, _ = small_server
    for role in ROLES:
        async with secure_channel(target, credentials("bank-a", role)) as channel:
            stub = cases_pb2_grpc.CaseServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.OpenCase(cases_pb2.OpenCaseRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert error_info(caught.value).reason == "METHOD_NOT_ALLOWED"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in stub.WatchCase(cases_pb2.WatchCaseRequest(), timeout=5):
                    pass
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


# -- quotas -----------------------------------------------------------------------------


def _retry_seconds(error: grpc.aio.AioRpcError) -> float:
    for detail in rich_status(error).details:
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(retry):
            return retry.retry_delay.ToNanoseconds() / 1e9
    raise AssertionError("no RetryInfo in the status details")


def _assert_over_quota(error: grpc.aio.AioRpcError, quota: str) -> None:
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    info = error_info(error)
    assert info.reason == "PARTNER_QUOTA_EXCEEDED"
    assert info.metadata["quota"] == quota
    assert _retry_seconds(error) > 0


async def _until(condition: Callable[[], bool], seconds: float = 5) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_partner_over_its_in_flight_calls_waits_and_the_others_do_not(
    small_server: tuple[str, _Cases, PartnerQuota],
    credentials: Callable[[str, Role], PartnerCredentials],
) -> None:
    target, servicer, quota = small_server
    async with (
        secure_channel(target, credentials("bank-a", Role.ADVISOR)) as bank,
        secure_channel(target, credentials("telco-a", Role.ADVISOR)) as telco,
    ):
        bank_cases = cases_pb2_grpc.CaseServiceStub(bank)
        held = bank_cases.GetCaseView(
            cases_pb2.GetCaseViewRequest(case_id="hold", purpose=PURPOSE), timeout=10
        )
        await _until(lambda: servicer.held == 1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await bank_cases.GetCaseView(
                cases_pb2.GetCaseViewRequest(case_id="x", purpose=PURPOSE), timeout=5
            )
        _assert_over_quota(caught.value, "calls")
        served = await cases_pb2_grpc.CaseServiceStub(telco).GetCaseView(
            cases_pb2.GetCaseViewRequest(case_id="x", purpose=PURPOSE), timeout=5
        )
        assert served.view.header.case_id == "telco-a"
        held.cancel()  # a cancelled call gives its slot back
        await _until(lambda: not quota.calls.held)
        again = await bank_cases.GetCaseView(
            cases_pb2.GetCaseViewRequest(case_id="x", purpose=PURPOSE), timeout=5
        )
        assert again.view.header.case_id == "bank-a"
        # A refused call (role) and an undecodable one take no slot, or give it back.
        async with secure_channel(target, credentials("bank-a", Role.PARTNER)) as partner:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await cases_pb2_grpc.CaseServiceStub(partner).GetCaseView(
                    cases_pb2.GetCaseViewRequest(case_id="x", purpose=PURPOSE), timeout=5
                )
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        raw: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = bank.unary_unary(
            "/coopgate.v1.CaseService/GetCaseView"
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw(b"\x0a\xff", timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert not quota.calls.held


async def _first(call: Any) -> None:
    """Wait until the stream is served: its first message, or a moment without error."""
    try:
        await asyncio.wait_for(call.read(), 1.0)
    except TimeoutError:
        assert not call.done()


async def test_a_partner_over_its_streams_waits_the_others_do_not_and_cancelled_streams_give_back(
    stack: Stack,
    pki: Pki,
    unique: Callable[[str], str],
) -> None:
    streams = 3
    quota = PartnerQuota(max_streams=streams, max_in_flight=64)
    server, port, _ = create_server("127.0.0.1:0", pki.server, stack.runtime.domain, quota=quota)
    await server.start()
    target = f"127.0.0.1:{port}"
    bank_creds = stack.credentials("bank-a", Role.ADVISOR)
    try:
        async with (
            secure_channel(target, bank_creds) as bank,
            secure_channel(target, stack.credentials("telco-a", Role.ADVISOR)) as telco,
        ):
            bank_cases = cases_pb2_grpc.CaseServiceStub(bank)
            opened = await bank_cases.OpenCase(
                cases_pb2.OpenCaseRequest(
                    idempotency_key=unique("k"),
                    service_id="nfc-payment",
                    customer_local_id=unique("cust"),
                    channel=common_pb2.CHANNEL_PHONE,
                    summary="cannot pay by phone",
                )
            )
            watch = cases_pb2.WatchCaseRequest(case_id=opened.case_id, purpose=PURPOSE)
            held = [bank_cases.WatchCase(watch) for _ in range(streams)]
            for call in held:
                await _first(call)
            assert quota.streams.held == {"bank-a": streams}

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in bank_cases.WatchCase(watch, timeout=5):
                    pass
            _assert_over_quota(caught.value, "streams")
            # Unary calls are counted apart: the partner still reads its case.
            await bank_cases.GetCaseView(
                cases_pb2.GetCaseViewRequest(case_id=opened.case_id, purpose=PURPOSE), timeout=5
            )
            # Another partner is served meanwhile.
            other = cases_pb2_grpc.CaseServiceStub(telco).WatchCase(watch)
            await _first(other)
            assert quota.streams.held == {"bank-a": streams, "telco-a": 1}

            for call in [*held, other]:
                call.cancel()
            await _until(lambda: not quota.streams.held)
            again = bank_cases.WatchCase(watch)
            await _first(again)
            assert quota.streams.held == {"bank-a": 1}
            again.cancel()
            await _until(lambda: not quota.streams.held)
        # Channels closed with streams open give their slots back too.
        channel = secure_channel(target, bank_creds)
        for _ in range(streams):
            await _first(cases_pb2_grpc.CaseServiceStub(channel).WatchCase(watch))
        assert quota.streams.held == {"bank-a": streams}
        await channel.close()
        await _until(lambda: not quota.streams.held and not quota.calls.held)
    finally:
        await server.stop(0)
