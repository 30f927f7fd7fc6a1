"""Bad input over the real API: a precise status naming the problem, never UNKNOWN or
INTERNAL, never an echo of a huge value. Every method of every service, from the
contract's own descriptors."""

from __future__ import annotations

import grpc
import pytest
from coopgate.v1 import (
    admin_pb2,
    audit_pb2,
    cases_pb2,
    consents_pb2,
    identity_pb2,
    work_pb2,
)
from google.protobuf.descriptor import MethodDescriptor

from gateway.api.authorization import RULES, method_path
from gateway.core.caller import Role
from tests.conftest import Stack
from tests.helpers import error_info, field_violations

METHODS: list[MethodDescriptor] = [
    method
    for module in (admin_pb2, audit_pb2, cases_pb2, consents_pb2, identity_pb2, work_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]

#: Bytes no message decodes: a length-delimited field 1 whose length runs past the end,
#: and a tag whose varint never ends.
GARBAGE = (b"\x0a\xff", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")


def _raw(channel: grpc.aio.Channel, method: MethodDescriptor) -> object:
    path = f"/{method.containing_service.full_name}/{method.name}"
    if method.server_streaming:
        return channel.unary_stream(path)
    return channel.unary_unary(path)


def trailer_bytes(error: grpc.aio.AioRpcError) -> int:
    return sum(len(key) + len(value) for key, value in error.trailing_metadata() or ())


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
async def test_a_request_that_does_not_decode_is_invalid_argument_naming_the_message(
    stack: Stack, method: MethodDescriptor
) -> None:
    # As a role the method admits: anyone else is refused before the request is read.
    channel = stack.api("bank-a", RULES[method_path(method)].roles[0])
    call = _raw(channel.channel, method)
    for garbage in GARBAGE:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if method.server_streaming:
                async for _ in call(garbage, timeout=10):  # type: ignore[operator]
                    pass
            else:
                await call(garbage, timeout=10)  # type: ignore[operator]
        error = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method.name, error.details())
        expected = f"is not a valid {method.input_type.full_name}"
        assert field_violations(error) == {"request": expected}
        assert error_info(error).reason == "UNDECODABLE_REQUEST"
        assert "class" not in (error.details() or "")
        assert "Decode" not in (error.details() or "")


async def test_a_huge_id_is_answered_with_its_real_status_and_small_trailers(
    stack: Stack,
) -> None:
    api = stack.api("bank-a")
    huge = "x" * (1024 * 1024)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.cases.GetCaseView(
            cases_pb2.GetCaseViewRequest(case_id=huge, purpose="incident-diagnosis"), timeout=10
        )
    error = caught.value
    assert error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    assert trailer_bytes(error) < 4096
    assert len(error.details() or "") <= 240


async def test_a_request_with_a_thousand_bad_fields_names_a_few_of_them(stack: Stack) -> None:
    admin = stack.api("coopgate-ops", Role.ADMIN)
    bad = admin_pb2.DefineServiceRequest(
        service=admin_pb2.Service(
            service_id="Bad Service " * 1000,
            components=[
                admin_pb2.Component(name=f"BAD NAME {i} " * 100, partner_id="NOT A PARTNER" * 100)
                for i in range(1000)
            ],
        ),
        idempotency_key="k-" + "z" * 40,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.admin.DefineService(bad, timeout=10)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(error)
    assert 1 <= len(violations) <= 8
    assert all(len(field) <= 100 and len(text) <= 160 for field, text in violations.items())
    assert trailer_bytes(error) < 4096
