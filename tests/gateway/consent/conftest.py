"""The consent tests' scene: a case at the bank with one item of the operator's data."""

from __future__ import annotations

import pytest
from coopgate.v1 import admin_pb2, cases_pb2, common_pb2

from gateway.core.caller import Role
from tests.conftest import Stack
from tests.gateway.consent.test_consent_api import Key, Scene, define_agreement, telco_says


@pytest.fixture
async def scene(stack: Stack, unique: Key) -> Scene:
    """Each test gets its own service, so agreements made by one test do not
    leak into another's decisions."""
    admin = stack.api("coopgate", Role.ADMIN)
    nfc = await admin.admin.GetService(admin_pb2.GetServiceRequest(service_id="nfc-payment"))
    service = nfc.service
    service.service_id = unique("nfc")
    await admin.admin.DefineService(
        admin_pb2.DefineServiceRequest(idempotency_key=unique("k"), service=service)
    )
    bank = stack.api("bank-a", Role.ADVISOR)
    customer = unique("cust")
    opened = await bank.cases.OpenCase(
        cases_pb2.OpenCaseRequest(
            idempotency_key=unique("k"),
            service_id=service.service_id,
            customer_local_id=customer,
            channel=common_pb2.CHANNEL_PHONE,
            summary="cannot pay by phone at the restaurant",
        )
    )
    agreement_id = await define_agreement(
        admin, unique, service.service_id, ["device.sim"], unique("agr")
    )
    scene = Scene(
        opened.case_id,
        service.service_id,
        customer,
        bank,
        stack.api("telco-a"),
        admin,
        agreement_id,
    )
    await telco_says(scene, unique, "SIM applet locked after OTA update")
    return scene
