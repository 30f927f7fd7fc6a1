"""RetireService: a service taken out of the catalogue is no longer listed, takes no
new case, and its sharing agreements end; defining it again brings it back."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from coopgate.v1 import admin_pb2, cases_pb2, common_pb2

from gateway.core.caller import Role
from tests.conftest import Stack
from tests.helpers import error_info, field_violations


async def test_a_retired_service_leaves_the_catalogue_until_defined_again(
    stack: Stack, unique: Callable[[str], str]
) -> None:
    admin = stack.api("coopgate", Role.ADMIN).admin
    nfc = (await admin.GetService(admin_pb2.GetServiceRequest(service_id="nfc-payment"))).service
    nfc.service_id = unique("drill")
    nfc.ClearField("version")
    await admin.DefineService(
        admin_pb2.DefineServiceRequest(idempotency_key=unique("k"), service=nfc)
    )
    agreement = admin_pb2.SharingAgreement(
        agreement_id=unique("agr"),
        source_partner_id="telco-a",
        recipient_partner_id="bank-a",
        service_id=nfc.service_id,
        categories=["diagnostic.findings"],
        purposes=["incident-resolution"],
    )
    await admin.DefineSharingAgreement(
        admin_pb2.DefineSharingAgreementRequest(idempotency_key=unique("k"), agreement=agreement)
    )
    listed = {
        s.service_id for s in (await admin.ListServices(admin_pb2.ListServicesRequest())).services
    }
    assert nfc.service_id in listed

    key = unique("k")
    retired = await admin.RetireService(
        admin_pb2.RetireServiceRequest(idempotency_key=key, service_id=nfc.service_id)
    )
    assert retired.service.HasField("retired_at")
    assert list(retired.ended_agreement_ids) == [agreement.agreement_id]
    # The same key replays the first answer; retiring again changes nothing.
    again = await admin.RetireService(
        admin_pb2.RetireServiceRequest(idempotency_key=key, service_id=nfc.service_id)
    )
    assert again == retired
    twice = await admin.RetireService(
        admin_pb2.RetireServiceRequest(idempotency_key=unique("k"), service_id=nfc.service_id)
    )
    assert twice.service == retired.service
    assert not twice.ended_agreement_ids

    listing = (await admin.ListServices(admin_pb2.ListServicesRequest())).services
    assert {s.service_id for s in listing} == listed - {nfc.service_id}
    every = (await admin.ListServices(admin_pb2.ListServicesRequest(include_retired=True))).services
    assert nfc.service_id in {s.service_id for s in every}
    ended = (
        await admin.ListSharingAgreements(
            admin_pb2.ListSharingAgreementsRequest(service_id=nfc.service_id)
        )
    ).agreements
    assert [a.valid_until for a in ended] == [retired.service.retired_at]

    bank = stack.api("bank-a", Role.ADVISOR).cases
    open_request = cases_pb2.OpenCaseRequest(
        idempotency_key=unique("k"),
        service_id=nfc.service_id,
        customer_local_id=unique("cust"),
        channel=common_pb2.CHANNEL_PHONE,
        summary="cannot pay by phone",
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await bank.OpenCase(open_request)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(refused.value).reason == "SERVICE_RETIRED"

    # Defined again, it is back in the catalogue and takes cases.
    back = await admin.DefineService(
        admin_pb2.DefineServiceRequest(idempotency_key=unique("k"), service=nfc)
    )
    assert not back.service.HasField("retired_at")
    assert back.service.version == retired.service.version + 1
    open_request.idempotency_key = unique("k")
    assert (await bank.OpenCase(open_request)).case_id


async def test_retiring_needs_the_admin_role_and_a_known_service(
    stack: Stack, unique: Callable[[str], str]
) -> None:
    advisor = stack.api("bank-a", Role.ADVISOR).admin
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await advisor.RetireService(
            admin_pb2.RetireServiceRequest(idempotency_key=unique("k"), service_id="nfc-payment")
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    admin = stack.api("coopgate", Role.ADMIN).admin
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await admin.RetireService(
            admin_pb2.RetireServiceRequest(idempotency_key=unique("k"), service_id="no-such")
        )
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown service" in field_violations(unknown.value)["service_id"]
    listed = (await admin.ListServices(admin_pb2.ListServicesRequest())).services
    assert "nfc-payment" in {s.service_id for s in listed}
