"""A disclosure to audit: the operator's SIM data read by the bank under the customer's
consent, on a service of the test's own (so agreements do not leak between tests)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from coopgate.v1 import admin_pb2, audit_pb2_grpc, cases_pb2, common_pb2, consents_pb2

from gateway.core.caller import Role
from tests.conftest import Api, Stack

COOPGATE = str(Path(sys.executable).parent / "coopgate")


def audit_stub(api: Api) -> audit_pb2_grpc.AuditServiceAsyncStub:
    return audit_pb2_grpc.AuditServiceStub(api.channel)


async def coopgate(*args: str) -> tuple[int, str, str]:
    """The installed command, as a user runs it: exit status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        COOPGATE, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def client_args(stack: Stack, partner: str, role: Role) -> list[str]:
    creds = stack.credentials(partner, role)
    return [
        "--as", partner, "--role", role.value, "--target", stack.target,
        "--cert", str(creds.cert), "--key", str(creds.key), "--ca", str(creds.ca),
    ]  # fmt: skip


@dataclass
class Disclosure:
    case_id: str
    service_id: str
    customer: str
    agreement_id: str
    consent_id: str
    admin_service: admin_pb2.Service
    admin_agreement: admin_pb2.SharingAgreement
    bank: Api


@pytest.fixture
async def disclosure(stack: Stack, unique: Callable[[str], str]) -> Disclosure:
    admin = stack.api("coopgate", Role.ADMIN)
    nfc = await admin.admin.GetService(admin_pb2.GetServiceRequest(service_id="nfc-payment"))
    service = nfc.service
    service.service_id = unique("nfc")
    defined = await admin.admin.DefineService(
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
            summary="cannot pay by phone",
        )
    )
    agreement = await admin.admin.DefineSharingAgreement(
        admin_pb2.DefineSharingAgreementRequest(
            idempotency_key=unique("k"),
            agreement=admin_pb2.SharingAgreement(
                source_partner_id="telco-a",
                recipient_partner_id="bank-a",
                service_id=service.service_id,
                categories=["device.sim"],
                purposes=["incident-resolution"],
            ),
        )
    )
    await stack.api("telco-a").cases.AppendInteraction(
        cases_pb2.AppendInteractionRequest(
            idempotency_key=unique("k"),
            case_id=opened.case_id,
            interaction=cases_pb2.Interaction(
                channel=common_pb2.CHANNEL_STORE,
                summary="SIM applet locked",
                category="device.sim",
                author_kind=cases_pb2.AUTHOR_KIND_ADVISOR,
            ),
        )
    )
    read = cases_pb2.GetCaseViewRequest(case_id=opened.case_id, purpose="incident-resolution")
    await bank.cases.GetCaseView(read)  # before consent: denied
    granted = await bank.consents.GrantConsent(
        consents_pb2.GrantConsentRequest(
            idempotency_key=unique("k"),
            customer_local_id=customer,
            source_partner_id="telco-a",
            recipient_partner_ids=["bank-a"],
            categories=["device.sim"],
            purposes=["incident-resolution"],
            channel=common_pb2.CHANNEL_PHONE,
            notice_version="bank-a/notice/2026-10",
        )
    )
    view = (await bank.cases.GetCaseView(read)).view
    assert any(item.interaction.summary == "SIM applet locked" for item in view.timeline)
    return Disclosure(
        case_id=opened.case_id,
        service_id=service.service_id,
        customer=customer,
        agreement_id=agreement.agreement.agreement_id,
        consent_id=granted.consent.consent_id,
        admin_service=defined.service,
        admin_agreement=agreement.agreement,
        bank=bank,
    )
