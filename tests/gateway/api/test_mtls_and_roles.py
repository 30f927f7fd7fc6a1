"""Mutual TLS is always on, and the caller's role comes from its certificate only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from coopgate.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    cases_pb2,
    common_pb2,
    identity_pb2,
    identity_pb2_grpc,
)
from grpc_health.v1 import health_pb2

from gateway.core.caller import Role
from gateway.crypto.pki import CertificateAuthority
from partners import PartnerCredentials, secure_channel
from tests.conftest import Stack
from tests.helpers import error_info, field_violations, health_status


def _open(key: str) -> cases_pb2.OpenCaseRequest:
    return cases_pb2.OpenCaseRequest(
        idempotency_key=key,
        service_id="nfc-payment",
        customer_local_id="cust-mtls",
        channel=common_pb2.CHANNEL_APP,
        summary="payment refused",
    )


async def test_no_client_certificate_is_refused(stack: Stack, pki_dir: Path) -> None:
    ca_only = grpc.ssl_channel_credentials(
        root_certificates=(pki_dir / "pki" / "ca.pem").read_bytes()
    )
    async with grpc.aio.secure_channel(
        stack.target, ca_only, options=[("grpc.ssl_target_name_override", "localhost")]
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_status(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_certificate_from_another_ca_is_refused(stack: Stack, tmp_path: Path) -> None:
    rogue = CertificateAuthority(tmp_path / "rogue")
    rogue.init("Rogue CA")
    files = rogue.issue_client(tmp_path / "rogue-clients", "bank-a", Role.ADMIN)
    # Trust the real server, but present a certificate the gateway never issued.
    creds = PartnerCredentials(cert=files.cert, key=files.key, ca=_server_ca(stack))
    async with secure_channel(stack.target, creds) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin_pb2_grpc.AdminServiceStub(channel).ListPartners(
                admin_pb2.ListPartnersRequest(), timeout=5
            )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def _server_ca(stack: Stack) -> Path:
    return stack.credentials("bank-a", Role.PARTNER).ca


async def test_valid_certificate_serves_health(stack: Stack) -> None:
    channel = stack.api("bank-a").channel
    status = await health_status(channel, "coopgate.v1.CaseService")
    assert status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("role", "allowed"),
    [(Role.PARTNER, True), (Role.ADVISOR, True), (Role.COMPLIANCE, False), (Role.ADMIN, False)],
)
async def test_role_from_certificate_decides_who_opens_cases(
    stack: Stack, role: Role, allowed: bool, unique: Callable[[str], str]
) -> None:
    api = stack.api("bank-a", role)
    if allowed:
        response = await api.cases.OpenCase(_open(unique("k")))
        assert response.header.first_contact_partner_id == "bank-a"
        return
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.cases.OpenCase(_open(unique("k")))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(caught.value)
    assert info.reason == "ROLE_NOT_ALLOWED"
    assert info.metadata["role"] == role.value


async def test_a_header_cannot_claim_another_role_or_partner(
    stack: Stack, unique: Callable[[str], str]
) -> None:
    api = stack.api("bank-a", Role.PARTNER)
    request = admin_pb2.RegisterPartnerRequest(
        idempotency_key=unique("k"),
        partner_id="intruder",
        display_name="Intruder",
        kind=admin_pb2.PARTNER_KIND_BANK,
    )
    forged = (("x-coopgate-role", "admin"), ("x-coopgate-partner", "coopgate"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.admin.RegisterPartner(request, metadata=forged)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    partners = await api.admin.ListPartners(admin_pb2.ListPartnersRequest())
    assert "intruder" not in {p.partner_id for p in partners.partners}


async def test_admin_certificate_registers_partners_idempotently(
    stack: Stack, unique: Callable[[str], str]
) -> None:
    admin = stack.api("coopgate", Role.ADMIN)
    partner_id = unique("shop").lower()
    request = admin_pb2.RegisterPartnerRequest(
        idempotency_key=unique("k"),
        partner_id=partner_id,
        display_name="Corner shop",
        kind=admin_pb2.PARTNER_KIND_MERCHANT,
    )
    first = await admin.admin.RegisterPartner(request)
    second = await admin.admin.RegisterPartner(request)
    assert first == second
    listed = await admin.admin.ListPartners(admin_pb2.ListPartnersRequest())
    assert [p.partner_id for p in listed.partners].count(partner_id) == 1


async def test_service_definition_names_each_bad_field(
    stack: Stack, unique: Callable[[str], str]
) -> None:
    admin = stack.api("coopgate", Role.ADMIN)
    service = admin_pb2.Service(
        service_id="Bad Id",
        components=[
            admin_pb2.Component(name="sim", partner_id="telco-a"),
            admin_pb2.Component(name="sim", partner_id="telco-a"),
        ],
        ownership_policy=admin_pb2.OwnershipPolicy(
            host_partner_id="bank-a", min_fault_confidence=3
        ),
    )
    # The contract's declared limits are checked first: the id's format, the range.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.admin.DefineService(
            admin_pb2.DefineServiceRequest(idempotency_key=unique("k"), service=service)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {
        "service.service_id",
        "service.ownership_policy.min_fault_confidence",
    }
    # Within them, the service's own checks still name each bad field: an id too short
    # for a service id, a duplicate component, a host outside the chain.
    service.service_id = "b"
    service.ownership_policy.min_fault_confidence = 1.5e-9
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.admin.DefineService(
            admin_pb2.DefineServiceRequest(idempotency_key=unique("k"), service=service)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {
        "service.service_id",
        "service.components[1].name",
        "service.ownership_policy.host_partner_id",
    }
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.admin.GetService(admin_pb2.GetServiceRequest(service_id="Bad Id"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_unregistered_partner_may_read_but_changes_nothing_until_registered(
    stack: Stack, unique: Callable[[str], str]
) -> None:
    """A certificate the CA issued for a partner the gateway does not know: its writes
    are refused, naming why (they failed on the store's foreign keys, as INTERNAL)."""
    newcomer = unique("newco")
    channel = stack.api(newcomer).channel
    identity = identity_pb2_grpc.IdentityServiceStub(channel)
    request = identity_pb2.IssueLinkCodeRequest(
        idempotency_key=unique("k"), customer_local_id=unique("cust")
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.IssueLinkCode(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(caught.value).reason == "PARTNER_NOT_REGISTERED"
    # Reading the catalogue needs no registration.
    listed = await admin_pb2_grpc.AdminServiceStub(channel).ListPartners(
        admin_pb2.ListPartnersRequest(), timeout=10
    )
    assert newcomer not in {p.partner_id for p in listed.partners}

    await stack.api("coopgate-ops", Role.ADMIN).admin.RegisterPartner(
        admin_pb2.RegisterPartnerRequest(
            idempotency_key=unique("k"),
            partner_id=newcomer,
            display_name="Newcomer",
            kind=admin_pb2.PARTNER_KIND_MERCHANT,
        ),
        timeout=10,
    )
    issued = await identity.IssueLinkCode(request, timeout=10)
    assert issued.link_code
