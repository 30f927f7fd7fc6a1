"""Consent enforcement against the running gateway over mTLS: a partner's read
of another partner's data needs a sharing agreement AND the customer's
consent for that purpose, at the moment of the read."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import pytest
from coopgate.v1 import admin_pb2, cases_pb2, common_pb2, consents_pb2, work_pb2
from joserfc.errors import BadSignatureError
from joserfc.jwk import OKPKey
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jws as jwcrypto_jws
from sqlalchemy import select

from gateway.consent.receipts import ReceiptError, verify_receipt
from gateway.core.caller import Role
from gateway.store.schema import audit_entries
from tests.conftest import Api, Stack
from tests.gateway.consent.test_receipts import joserfc_claims, jwcrypto_claims
from tests.helpers import error_info, field_violations

Key = Callable[[str], str]


@dataclass
class Scene:
    """A case opened at the bank, with one item of the operator's data on it."""

    case_id: str
    service_id: str
    customer: str
    bank: Api
    telco: Api
    admin: Api
    agreement_id: str


async def telco_says(scene: Scene, unique: Key, summary: str) -> int:
    response = await scene.telco.cases.AppendInteraction(
        cases_pb2.AppendInteractionRequest(
            idempotency_key=unique("k"),
            case_id=scene.case_id,
            interaction=cases_pb2.Interaction(
                channel=common_pb2.CHANNEL_STORE,
                summary=summary,
                category="device.sim",
                author_kind=cases_pb2.AUTHOR_KIND_ADVISOR,
            ),
        )
    )
    return response.sequence


async def define_agreement(
    scene_admin: Api, unique: Key, service_id: str, categories: list[str], agreement_id: str
) -> str:
    response = await scene_admin.admin.DefineSharingAgreement(
        admin_pb2.DefineSharingAgreementRequest(
            idempotency_key=unique("k"),
            agreement=admin_pb2.SharingAgreement(
                agreement_id=agreement_id,
                source_partner_id="telco-a",
                recipient_partner_id="bank-a",
                service_id=service_id,
                categories=categories,
                purposes=["incident-diagnosis", "incident-resolution"],
            ),
        )
    )
    return response.agreement.agreement_id


def grant(scene: Scene, unique: Key, **overrides: object) -> consents_pb2.GrantConsentRequest:
    fields: dict[str, object] = {
        "idempotency_key": unique("k"),
        "customer_local_id": scene.customer,
        "source_partner_id": "telco-a",
        "recipient_partner_ids": ["bank-a"],
        "categories": ["device.sim"],
        "purposes": ["incident-resolution"],
        "channel": common_pb2.CHANNEL_PHONE,
        "notice_version": "bank-a/notice/2026-10",
    }
    fields.update(overrides)
    return consents_pb2.GrantConsentRequest(**fields)  # type: ignore[arg-type]


async def view(api: Api, case_id: str, purpose: str = "incident-resolution") -> cases_pb2.CaseView:
    return (
        await api.cases.GetCaseView(cases_pb2.GetCaseViewRequest(case_id=case_id, purpose=purpose))
    ).view


def telco_items(v: cases_pb2.CaseView) -> list[str]:
    return [
        i.interaction.summary
        for i in v.timeline
        if i.HasField("interaction") and i.interaction.partner_id == "telco-a"
    ]


def withheld(v: cases_pb2.CaseView) -> dict[tuple[str, str], int]:
    return {(w.source_partner_id, w.category): w.count for w in v.withheld}


async def test_no_consent_withholds_grant_allows_withdrawal_withholds_again(
    stack: Stack, scene: Scene, unique: Key
) -> None:
    before = await view(scene.bank, scene.case_id)
    assert telco_items(before) == []
    assert withheld(before) == {("telco-a", "device.sim"): 1}

    granted = await scene.bank.consents.GrantConsent(grant(scene, unique))
    consent = granted.consent
    assert consent.state == consents_pb2.CONSENT_STATE_GIVEN
    assert [e.state for e in consent.events] == [consents_pb2.CONSENT_STATE_GIVEN]
    assert consent.collected_by_partner_id == "bank-a"
    assert consent.legal_basis == consents_pb2.LEGAL_BASIS_CONSENT

    allowed = await view(scene.bank, scene.case_id)
    assert telco_items(allowed) == ["SIM applet locked after OTA update"]
    assert withheld(allowed) == {}

    revoked = await scene.bank.consents.RevokeConsent(
        consents_pb2.RevokeConsentRequest(
            idempotency_key=unique("k"),
            consent_id=consent.consent_id,
            channel=common_pb2.CHANNEL_APP,
        )
    )
    assert revoked.consent.state == consents_pb2.CONSENT_STATE_WITHDRAWN
    assert [e.state for e in revoked.consent.events] == [
        consents_pb2.CONSENT_STATE_GIVEN,
        consents_pb2.CONSENT_STATE_WITHDRAWN,
    ]
    after = await view(scene.bank, scene.case_id)
    assert telco_items(after) == []
    assert withheld(after) == {("telco-a", "device.sim"): 1}

    # Every decision is in the audit log, with the ids that allowed it.
    async with stack.runtime.store.read() as conn:
        rows = (
            await conn.execute(
                select(audit_entries.c.decision, audit_entries.c.canonical)
                .where(
                    audit_entries.c.case_id == scene.case_id,
                    audit_entries.c.kind == "access",
                    audit_entries.c.actor_partner_id == "bank-a",
                )
                .order_by(audit_entries.c.idx)
            )
        ).all()
    # One decision about the operator's data per read (plus a record of each read).
    rows = [r for r in rows if b'"action":"read"' in r.canonical]
    assert [r.decision for r in rows] == ["deny", "allow", "deny"]
    assert consent.consent_id.encode() in rows[1].canonical
    assert scene.agreement_id.encode() in rows[1].canonical
    assert b"consent-withdrawn" in rows[2].canonical


async def test_purpose_not_covered_and_marketing_never_ride_along(
    scene: Scene, unique: Key
) -> None:
    await scene.bank.consents.GrantConsent(grant(scene, unique))
    assert telco_items(await view(scene.bank, scene.case_id, "incident-resolution"))
    assert telco_items(await view(scene.bank, scene.case_id, "incident-diagnosis")) == []
    assert telco_items(await view(scene.bank, scene.case_id, "marketing")) == []

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scene.bank.consents.GrantConsent(
            grant(scene, unique, purposes=["incident-resolution", "marketing"])
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "purposes" in field_violations(caught.value)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scene.bank.cases.GetCaseView(
            cases_pb2.GetCaseViewRequest(case_id=scene.case_id, purpose="curiosity")
        )
    assert field_violations(caught.value) == {"purpose": "unknown purpose 'curiosity'"}


async def test_no_agreement_means_no_flow_even_with_consent(scene: Scene, unique: Key) -> None:
    await scene.bank.consents.GrantConsent(grant(scene, unique))
    assert telco_items(await view(scene.bank, scene.case_id))
    # The partners narrow their agreement: the consent alone opens nothing.
    await define_agreement(
        scene.admin, unique, scene.service_id, ["diagnostic.findings"], scene.agreement_id
    )
    narrowed = await view(scene.bank, scene.case_id)
    assert telco_items(narrowed) == []
    assert withheld(narrowed) == {("telco-a", "device.sim"): 1}

    # No agreement lets the acquirer share transactions with the bank at all:
    # the customer's consent cannot open that flow.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scene.bank.consents.GrantConsent(
            grant(
                scene, unique, source_partner_id="acquirer-a", categories=["payment.transactions"]
            )
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(caught.value)
    assert info.reason == "NO_SHARING_AGREEMENT"
    assert (info.metadata["source"], info.metadata["category"]) == (
        "acquirer-a",
        "payment.transactions",
    )


async def next_interaction(
    stream: AsyncIterator[cases_pb2.WatchCaseResponse], timeout: float = 5
) -> cases_pb2.WatchCaseResponse:
    """The next interaction on the stream (the gateway's own events are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            response = await anext(stream)
            if response.item.HasField("interaction"):
                return response


async def test_live_stream_stops_the_flow_at_withdrawal(scene: Scene, unique: Key) -> None:
    granted = await scene.bank.consents.GrantConsent(grant(scene, unique))
    start = (await view(scene.bank, scene.case_id)).position
    call = scene.bank.cases.WatchCase(
        cases_pb2.WatchCaseRequest(
            case_id=scene.case_id, purpose="incident-resolution", after_sequence=start
        )
    )
    stream = call.__aiter__()
    try:
        await telco_says(scene, unique, "second check: applet reinstalled")
        first = await next_interaction(stream)
        assert first.item.interaction.summary == "second check: applet reinstalled"

        await scene.bank.consents.RevokeConsent(
            consents_pb2.RevokeConsentRequest(
                idempotency_key=unique("k"),
                consent_id=granted.consent.consent_id,
                channel=common_pb2.CHANNEL_PHONE,
            )
        )
        hidden = await telco_says(scene, unique, "third check: must not be seen")
        own = await scene.bank.cases.AppendInteraction(
            cases_pb2.AppendInteractionRequest(
                idempotency_key=unique("k"),
                case_id=scene.case_id,
                interaction=cases_pb2.Interaction(
                    channel=common_pb2.CHANNEL_PHONE, summary="customer called back"
                ),
            )
        )
        assert own.sequence > hidden
        following = await next_interaction(stream)
        assert following.item.interaction.summary == "customer called back"
        assert following.item.sequence == own.sequence
    finally:
        call.cancel()


async def test_receipts_verify_offline_and_tampering_is_detected(scene: Scene, unique: Key) -> None:
    granted = await scene.bank.consents.GrantConsent(grant(scene, unique))
    key = await scene.bank.consents.GetReceiptKey(consents_pb2.GetReceiptKeyRequest())
    claims = verify_receipt(granted.receipt.jws, key.public_key)
    assert claims["consent_id"] == granted.consent.consent_id
    assert claims["event"] == "given"
    assert claims["state"] == "given"
    assert claims["purposes"] == ["incident-resolution"]
    assert claims["categories"] == ["device.sim"]
    assert claims["source_partner"] == "telco-a"
    assert claims["recipient_partners"] == ["bank-a"]
    assert claims["sub"] == granted.consent.subject_id
    assert claims["notice_version"] == "bank-a/notice/2026-10"
    assert claims["iat"] == granted.consent.events[-1].at.seconds
    assert claims["jurisdiction"] == "EU"
    assert claims["policy_url"] == "https://localhost/privacy"
    assert claims["controller"] == {
        "name": "Coopgate gateway at localhost",
        "contact": "privacy@localhost",
    }
    assert verify_receipt(granted.receipt.jws, key.jwk) == claims

    header, payload, signature = granted.receipt.jws.split(".")
    forged_claims = payload[:-4] + ("AAAA" if payload[-4:] != "AAAA" else "BBBB")
    for forged in (
        f"{header}.{forged_claims}.{signature}",
        f"{header}.{payload}.{signature[:-4]}AAAA",
        "not-a-receipt",
    ):
        with pytest.raises(ReceiptError):
            verify_receipt(forged, key.public_key)
    with pytest.raises(ReceiptError):
        verify_receipt(granted.receipt.jws, bytes(32))


async def test_receipts_verify_with_two_independent_jose_libraries(
    scene: Scene, unique: Key
) -> None:
    """The published JWK verifies a receipt from the API with joserfc and with jwcrypto;
    its header is typed, names the algorithm per RFC 9864 and the key by its RFC 7638
    thumbprint; a grant and its withdrawal are two receipts with ids of their own."""
    granted = await scene.bank.consents.GrantConsent(grant(scene, unique))
    key = await scene.bank.consents.GetReceiptKey(consents_pb2.GetReceiptKeyRequest())
    jwk = json.loads(key.jwk)
    assert jwk["kty"] == "OKP"
    assert jwk["crv"] == "Ed25519"
    assert "d" not in jwk
    assert jwk["kid"] == key.key_id == jwcrypto_jwk.JWK.from_json(key.jwk).thumbprint()
    assert key.key_id == OKPKey.import_key(jwk).thumbprint()
    assert base64.urlsafe_b64decode(jwk["x"] + "=") == key.public_key

    token = granted.receipt.jws
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "Ed25519", "kid": key.key_id, "typ": "consent-receipt+jwt"}
    assert granted.receipt.key_id == key.key_id
    for claims in (joserfc_claims(token, key.jwk), jwcrypto_claims(token, key.jwk)):
        assert claims == verify_receipt(token, key.jwk)
        assert claims["consent_id"] == granted.consent.consent_id
        assert claims["sub"] == granted.consent.subject_id
    assert json.loads(granted.receipt.payload) == verify_receipt(token, key.jwk)

    header_part, payload, signature = token.split(".")
    tampered = f"{header_part}.{payload[:-2]}{'AA' if payload[-2:] != 'AA' else 'BB'}.{signature}"
    with pytest.raises(BadSignatureError):
        joserfc_claims(tampered, key.jwk)
    with pytest.raises(jwcrypto_jws.InvalidJWSSignature):
        jwcrypto_claims(tampered, key.jwk)
    with pytest.raises(ReceiptError):
        verify_receipt(tampered, key.jwk)

    revoked = await scene.bank.consents.RevokeConsent(
        consents_pb2.RevokeConsentRequest(
            idempotency_key=unique("k"),
            consent_id=granted.consent.consent_id,
            channel=common_pb2.CHANNEL_APP,
        )
    )
    given = jwcrypto_claims(token, key.jwk)
    withdrawn = jwcrypto_claims(revoked.receipt.jws, key.jwk)
    assert joserfc_claims(revoked.receipt.jws, key.jwk) == withdrawn
    assert given["consent_id"] == withdrawn["consent_id"] == granted.consent.consent_id
    assert (given["event"], withdrawn["event"]) == ("given", "withdrawn")
    assert (given["state"], withdrawn["state"]) == ("given", "withdrawn")
    assert isinstance(given["jti"], str)
    assert given["jti"].startswith("rct-")
    assert isinstance(withdrawn["jti"], str)
    assert withdrawn["jti"].startswith("rct-")
    assert given["jti"] != withdrawn["jti"]


async def test_bad_grants_name_the_problem_and_change_nothing(scene: Scene, unique: Key) -> None:
    cases: list[tuple[dict[str, object], str]] = [
        ({"categories": ["dna"]}, "categories[0]"),
        ({"purposes": ["resale"]}, "purposes[0]"),
        ({"recipient_partner_ids": ["nobody-here"]}, "recipient_partner_ids"),
        ({"channel": common_pb2.CHANNEL_UNSPECIFIED}, "channel"),
        ({"notice_version": ""}, "notice_version"),
    ]
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    for overrides, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await scene.bank.consents.GrantConsent(grant(scene, unique, **overrides))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, overrides
        assert field in field_violations(caught.value), overrides
    request = grant(scene, unique)
    request.valid_until.FromDatetime(past)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scene.bank.consents.GrantConsent(request)
    assert "valid_until" in field_violations(caught.value)
    listed = await scene.bank.consents.ListConsents(
        consents_pb2.ListConsentsRequest(customer_local_id=scene.customer)
    )
    assert list(listed.consents) == []


async def test_only_the_customers_own_partners_grant_or_withdraw(scene: Scene, unique: Key) -> None:
    granted = await scene.bank.consents.GrantConsent(grant(scene, unique))
    # The operator does not know this customer under the bank's id.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scene.telco.consents.GrantConsent(grant(scene, unique))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scene.telco.consents.RevokeConsent(
            consents_pb2.RevokeConsentRequest(
                idempotency_key=unique("k"),
                consent_id=granted.consent.consent_id,
                channel=common_pb2.CHANNEL_STORE,
            )
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(caught.value).reason == "NOT_YOUR_CUSTOMER"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scene.telco.consents.ListConsents(consents_pb2.ListConsentsRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    still = await view(scene.bank, scene.case_id)
    assert telco_items(still) == ["SIM applet locked after OTA update"]


async def test_consent_request_reaches_the_customer_and_becomes_a_grant(
    stack: Stack, scene: Scene, unique: Key
) -> None:
    asked = await scene.bank.consents.RequestConsent(
        consents_pb2.RequestConsentRequest(
            idempotency_key=unique("k"),
            case_id=scene.case_id,
            source_partner_id="telco-a",
            categories=["device.sim"],
            purposes=["incident-resolution"],
            reason="to see the operator's SIM check",
        )
    )
    assert asked.relayed_by_partner_id == "bank-a"
    backend = stack.api("bank-a", Role.PARTNER)
    call = backend.work.Subscribe(work_pb2.SubscribeRequest(max_in_flight=100))
    prompt = None
    try:
        async with asyncio.timeout(20):
            async for response in call:
                if response.item.consent_prompt.consent_request_id == asked.consent_request_id:
                    prompt = response.item
                    break
                # Other tests' work for the bank: acknowledge it so the window moves on.
                await backend.work.Acknowledge(
                    work_pb2.AcknowledgeRequest(
                        idempotency_key=unique("k"), work_ids=[response.item.work_id]
                    )
                )
    finally:
        call.cancel()
    assert prompt is not None
    assert prompt.consent_prompt.customer_local_id == scene.customer
    assert prompt.consent_prompt.channel == common_pb2.CHANNEL_PHONE
    acked = await backend.work.Acknowledge(
        work_pb2.AcknowledgeRequest(idempotency_key=unique("k"), work_ids=[prompt.work_id])
    )
    assert acked.acknowledged == 1

    await scene.bank.consents.GrantConsent(
        grant(scene, unique, consent_request_id=asked.consent_request_id)
    )
    assert telco_items(await view(scene.bank, scene.case_id))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scene.bank.consents.RefuseConsentRequest(
            consents_pb2.RefuseConsentRequestRequest(
                idempotency_key=unique("k"), consent_request_id=asked.consent_request_id
            )
        )
    assert error_info(caught.value).reason == "REQUEST_ANSWERED"
