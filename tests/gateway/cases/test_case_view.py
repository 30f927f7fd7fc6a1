"""The combined case view over mTLS: one case seen differently by each partner
according to consents, a live watch that is ordered and resumable, slow
watchers cut off without slowing others, identity linking by code and by
hashed match, and no partner's customer id ever reaching another partner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable

import grpc
import pytest
from coopgate.v1 import (
    admin_pb2,
    cases_pb2,
    common_pb2,
    consents_pb2,
    identity_pb2,
    identity_pb2_grpc,
    work_pb2,
)

from gateway.core.caller import Role
from tests.conftest import Api, Stack
from tests.helpers import error_info

Key = Callable[[str], str]


async def own_service(stack: Stack, unique: Key, agreements: list[tuple[str, str, str]]) -> str:
    """A fresh copy of nfc-payment with the given (source, recipient, category) agreements."""
    admin = stack.api("coopgate", Role.ADMIN)
    service = (
        await admin.admin.GetService(admin_pb2.GetServiceRequest(service_id="nfc-payment"))
    ).service
    service.service_id = unique("nfc")
    await admin.admin.DefineService(
        admin_pb2.DefineServiceRequest(idempotency_key=unique("k"), service=service)
    )
    for source, recipient, category in agreements:
        await admin.admin.DefineSharingAgreement(
            admin_pb2.DefineSharingAgreementRequest(
                idempotency_key=unique("k"),
                agreement=admin_pb2.SharingAgreement(
                    source_partner_id=source,
                    recipient_partner_id=recipient,
                    service_id=service.service_id,
                    categories=[category],
                    purposes=["incident-resolution", "incident-diagnosis"],
                ),
            )
        )
    return service.service_id


async def open_case(api: Api, service_id: str, customer: str, unique: Key) -> str:
    response = await api.cases.OpenCase(
        cases_pb2.OpenCaseRequest(
            idempotency_key=unique("k"),
            service_id=service_id,
            customer_local_id=customer,
            channel=common_pb2.CHANNEL_PHONE,
            summary="payment refused at the restaurant",
        )
    )
    return response.case_id


async def own_case(stack: Stack, unique: Key) -> tuple[Api, str]:
    """A case of a service of its own, opened by the bank's advisor: the advisor, the case."""
    service_id = await own_service(stack, unique, [])
    bank = stack.api("bank-a", Role.ADVISOR)
    return bank, await open_case(bank, service_id, unique("c"), unique)


async def say(api: Api, case_id: str, summary: str, unique: Key, category: str = "") -> int:
    response = await api.cases.AppendInteraction(
        cases_pb2.AppendInteractionRequest(
            idempotency_key=unique("k"),
            case_id=case_id,
            interaction=cases_pb2.Interaction(
                channel=common_pb2.CHANNEL_CHAT, summary=summary, category=category
            ),
        )
    )
    return response.sequence


async def view(api: Api, case_id: str) -> cases_pb2.CaseView:
    request = cases_pb2.GetCaseViewRequest(case_id=case_id, purpose="incident-resolution")
    return (await api.cases.GetCaseView(request)).view


def summaries(v: cases_pb2.CaseView) -> list[str]:
    return [i.interaction.summary for i in v.timeline if i.HasField("interaction")]


async def test_one_case_seen_differently_by_bank_and_operator(stack: Stack, unique: Key) -> None:
    service_id = await own_service(stack, unique, [("telco-a", "bank-a", "device.sim")])
    bank, telco = stack.api("bank-a", Role.ADVISOR), stack.api("telco-a", Role.ADVISOR)
    customer = unique("bank-cust")
    case_id = await open_case(bank, service_id, customer, unique)
    await say(telco, case_id, "SIM applet locked", unique, category="device.sim")
    await bank.consents.GrantConsent(
        consents_pb2.GrantConsentRequest(
            idempotency_key=unique("k"),
            customer_local_id=customer,
            source_partner_id="telco-a",
            recipient_partner_ids=["bank-a"],
            categories=["device.sim"],
            purposes=["incident-resolution"],
            channel=common_pb2.CHANNEL_PHONE,
            notice_version="v1",
        )
    )
    bank_view, telco_view = await view(bank, case_id), await view(telco, case_id)
    assert summaries(bank_view) == ["payment refused at the restaurant", "SIM applet locked"]
    assert summaries(telco_view) == ["SIM applet locked"]
    assert {(w.source_partner_id, w.category) for w in telco_view.withheld} == {
        ("bank-a", "interaction.history")
    }
    assert bank_view.header.subject_id != telco_view.header.subject_id
    # The header carries the service's SLA deadlines.
    opened = bank_view.header.opened_at.ToDatetime()
    assert (bank_view.header.owner_due_at.ToDatetime() - opened).total_seconds() == 30 * 60
    assert (bank_view.header.resolution_due_at.ToDatetime() - opened).total_seconds() == 4 * 3600
    # Timelines are ordered by time across partners.
    times = [i.occurred_at.ToDatetime() for i in bank_view.timeline]
    assert times == sorted(times)


async def collect(
    call: AsyncIterable[cases_pb2.WatchCaseResponse],
    until: Callable[[list[cases_pb2.WatchCaseResponse]], bool],
    timeout: float = 10,
) -> list[cases_pb2.WatchCaseResponse]:
    got: list[cases_pb2.WatchCaseResponse] = []
    async with asyncio.timeout(timeout):
        async for response in call:
            got.append(response)
            if until(got):
                return got
    return got


def interaction_summaries(responses: list[cases_pb2.WatchCaseResponse]) -> list[str]:
    return [r.item.interaction.summary for r in responses if r.item.HasField("interaction")]


async def test_watch_is_ordered_and_resumes_after_a_disconnect_without_gaps_or_repeats(
    stack: Stack, unique: Key
) -> None:
    service_id = await own_service(stack, unique, [])
    bank = stack.api("bank-a", Role.ADVISOR)
    case_id = await open_case(bank, service_id, unique("c"), unique)
    request = cases_pb2.WatchCaseRequest(case_id=case_id, purpose="incident-resolution")
    first_call = bank.cases.WatchCase(request)
    await say(bank, case_id, "one", unique)
    first = await collect(first_call, lambda got: "one" in interaction_summaries(got))
    first_call.cancel()  # the client drops
    for text in ("two", "three", "four"):
        await say(bank, case_id, text, unique)
    resume = cases_pb2.WatchCaseRequest(
        case_id=case_id, purpose="incident-resolution", after_sequence=first[-1].item.sequence
    )
    second_call = bank.cases.WatchCase(resume)
    second = await collect(second_call, lambda got: "four" in interaction_summaries(got))
    second_call.cancel()
    sequences = [r.item.sequence for r in first + second]
    assert sequences == sorted(set(sequences))  # in order, nothing twice
    assert interaction_summaries(first + second)[-4:] == ["one", "two", "three", "four"]
    full = await view(bank, case_id)
    assert set(sequences) <= {i.sequence for i in full.timeline}
    assert {i.sequence for i in full.timeline if i.sequence <= sequences[-1]} == set(sequences)


async def test_watch_ends_cleanly_when_the_case_closes(stack: Stack, unique: Key) -> None:
    service_id = await own_service(stack, unique, [])
    bank = stack.api("bank-a", Role.ADVISOR)
    case_id = await open_case(bank, service_id, unique("c"), unique)
    call = bank.cases.WatchCase(
        cases_pb2.WatchCaseRequest(case_id=case_id, purpose="incident-resolution")
    )
    # Stand in for the workflow's last step: stop it, then close the projection. Its first
    # steps go out together (one batch since coarse-steps): let them land first, or the
    # status they record could come after the one this test records.
    async with asyncio.timeout(20):
        while (await view(bank, case_id)).header.status < cases_pb2.CASE_STATUS_DIAGNOSING:
            await asyncio.sleep(0.05)
    await stack.client.get_workflow_handle(case_id).terminate("closing for the test")
    await asyncio.sleep(0.5)
    await stack.runtime.domain.cases.progress.record_status(case_id, "CLOSED")
    async with asyncio.timeout(10):
        received = [r async for r in call]
    assert received[-1].item.status_change.status == cases_pb2.CASE_STATUS_CLOSED
    assert await call.code() == grpc.StatusCode.OK


async def test_a_slow_watcher_is_cut_off_without_slowing_another(stack: Stack, unique: Key) -> None:
    service_id = await own_service(stack, unique, [])
    bank = stack.api("bank-a", Role.ADVISOR)
    case_id = await open_case(bank, service_id, unique("c"), unique)
    feed = stack.runtime.domain.cases.watching.feed
    feed.slow_after, before = 1.0, feed.slow_after
    # A client that never reads, with a small flow-control window.
    slow_channel = grpc.aio.secure_channel(
        stack.target,
        stack.credentials("bank-a", Role.ADVISOR).channel_credentials(),
        options=[("grpc.ssl_target_name_override", "localhost"), ("grpc.http2.bdp_probe", 0)],
    )
    try:
        slow = Api(slow_channel).cases.WatchCase(
            cases_pb2.WatchCaseRequest(case_id=case_id, purpose="incident-resolution")
        )
        fast = bank.cases.WatchCase(
            cases_pb2.WatchCaseRequest(case_id=case_id, purpose="incident-resolution")
        )
        bulky = "x" * 3900
        for i in range(120):
            await say(bank, case_id, f"{i} {bulky}", unique)
        loop = asyncio.get_running_loop()
        started = loop.time()
        got = await collect(
            fast, lambda g: any(s.startswith("119 ") for s in interaction_summaries(g)), 30
        )
        assert loop.time() - started < 20
        fast.cancel()
        async with asyncio.timeout(20):
            while feed.watching > 0 and not any(
                w.dropped for group in feed._watchers.values() for w in group
            ):
                await asyncio.sleep(0.2)
        delivered: list[int] = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async with asyncio.timeout(20):
                async for response in slow:
                    delivered.append(response.item.sequence)
        assert caught.value.code() == grpc.StatusCode.ABORTED
        info = error_info(caught.value)
        assert info.reason == "SLOW_CONSUMER"
        # The position to resume from: the last write that completed (the one in
        # flight may or may not have reached the client; resuming never leaves a gap).
        assert int(info.metadata["resume_after"]) in delivered[-2:]
        assert delivered == sorted(delivered)
        assert len(got) > len(delivered)
    finally:
        feed.slow_after = before
        await slow_channel.close()


async def test_identity_linked_by_code_and_by_hashed_match_then_unlinked(
    stack: Stack, unique: Key
) -> None:
    bank_id, telco_id, shop_id = unique("bank-cust"), unique("telco-line"), unique("acq-cust")
    bank = identity_pb2_grpc.IdentityServiceStub(stack.api("bank-a", Role.ADVISOR).channel)
    telco = identity_pb2_grpc.IdentityServiceStub(stack.api("telco-a", Role.ADVISOR).channel)
    acquirer = identity_pb2_grpc.IdentityServiceStub(stack.api("acquirer-a", Role.ADVISOR).channel)

    issued = await bank.IssueLinkCode(
        identity_pb2.IssueLinkCodeRequest(idempotency_key=unique("k"), customer_local_id=bank_id)
    )
    redeemed = await telco.RedeemLinkCode(
        identity_pb2.RedeemLinkCodeRequest(
            idempotency_key=unique("k"), link_code=issued.link_code, customer_local_id=telco_id
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # one use only
        await acquirer.RedeemLinkCode(
            identity_pb2.RedeemLinkCodeRequest(
                idempotency_key=unique("k"), link_code=issued.link_code, customer_local_id=shop_id
            )
        )
    assert error_info(caught.value).reason == "LINK_CODE_INVALID"

    # The bank opens a case; the operator finds it under its own customer id.
    service_id = await own_service(stack, unique, [])
    case_id = await open_case(stack.api("bank-a", Role.ADVISOR), service_id, bank_id, unique)
    telco_cases = await stack.api("telco-a", Role.ADVISOR).cases.ListCases(
        cases_pb2.ListCasesRequest(customer_local_id=telco_id)
    )
    assert [c.case_id for c in telco_cases.cases] == [case_id]
    assert telco_cases.cases[0].subject_id == redeemed.subject_id

    # A hashed-identifier match, confirmed by the customer at the acquirer.
    await bank.RegisterIdentifiers(
        identity_pb2.RegisterIdentifiersRequest(
            idempotency_key=unique("k"),
            customer_local_id=bank_id,
            identifiers=[
                identity_pb2.Identifier(
                    kind=identity_pb2.IDENTIFIER_KIND_EMAIL, value=f"{bank_id}@Example.org"
                )
            ],
        )
    )
    proposed = await acquirer.RegisterIdentifiers(
        identity_pb2.RegisterIdentifiersRequest(
            idempotency_key=unique("k"),
            customer_local_id=shop_id,
            identifiers=[
                identity_pb2.Identifier(
                    kind=identity_pb2.IDENTIFIER_KIND_EMAIL, value=f"  {bank_id}@example.ORG "
                )
            ],
        )
    )
    (proposal,) = proposed.proposals
    assert list(proposal.matched_on) == [identity_pb2.IDENTIFIER_KIND_EMAIL]
    confirmed = await acquirer.ConfirmMatch(
        identity_pb2.ConfirmMatchRequest(idempotency_key=unique("k"), match_id=proposal.match_id)
    )
    acquirer_cases = await stack.api("acquirer-a", Role.ADVISOR).cases.ListCases(
        cases_pb2.ListCasesRequest(subject_id=confirmed.subject_id)
    )
    assert [c.case_id for c in acquirer_cases.cases] == [case_id]
    assert len({redeemed.subject_id, confirmed.subject_id}) == 2  # pairwise, per partner

    await telco.Unlink(
        identity_pb2.UnlinkRequest(idempotency_key=unique("k"), customer_local_id=telco_id)
    )
    after = await telco.ResolveSubject(
        identity_pb2.ResolveSubjectRequest(customer_local_id=telco_id)
    )
    assert after.subject_id != redeemed.subject_id
    telco_cases = await stack.api("telco-a", Role.ADVISOR).cases.ListCases(
        cases_pb2.ListCasesRequest(customer_local_id=telco_id)
    )
    assert list(telco_cases.cases) == []


async def test_no_partner_ever_sees_another_partners_customer_id(stack: Stack, unique: Key) -> None:
    bank_id, telco_id = unique("BANKSECRET"), unique("TELCOSECRET")
    bank_identity = identity_pb2_grpc.IdentityServiceStub(stack.api("bank-a").channel)
    telco_identity = identity_pb2_grpc.IdentityServiceStub(stack.api("telco-a").channel)
    code = await bank_identity.IssueLinkCode(
        identity_pb2.IssueLinkCodeRequest(idempotency_key=unique("k"), customer_local_id=bank_id)
    )
    await telco_identity.RedeemLinkCode(
        identity_pb2.RedeemLinkCodeRequest(
            idempotency_key=unique("k"), link_code=code.link_code, customer_local_id=telco_id
        )
    )
    service_id = await own_service(stack, unique, [("bank-a", "telco-a", "interaction.history")])
    bank, telco = stack.api("bank-a", Role.ADVISOR), stack.api("telco-a", Role.ADVISOR)
    case_id = await open_case(bank, service_id, bank_id, unique)
    await bank.consents.GrantConsent(
        consents_pb2.GrantConsentRequest(
            idempotency_key=unique("k"),
            customer_local_id=bank_id,
            source_partner_id="bank-a",
            recipient_partner_ids=["telco-a"],
            categories=["interaction.history"],
            purposes=["incident-resolution"],
            channel=common_pb2.CHANNEL_PHONE,
            notice_version="v1",
        )
    )
    seen_by_telco: list[bytes] = [
        (await view(telco, case_id)).SerializeToString(),
        (
            await telco.cases.ListCases(cases_pb2.ListCasesRequest(customer_local_id=telco_id))
        ).SerializeToString(),
        (
            await telco.consents.ListConsents(
                consents_pb2.ListConsentsRequest(customer_local_id=telco_id)
            )
        ).SerializeToString(),
    ]
    call = stack.api("telco-a", Role.PARTNER).work.Subscribe(
        work_pb2.SubscribeRequest(max_in_flight=500)
    )
    try:
        async with asyncio.timeout(5):
            async for response in call:
                seen_by_telco.append(response.SerializeToString())
                if response.item.diagnosis_request.case_id == case_id:
                    assert response.item.diagnosis_request.customer_local_id == telco_id
                    break
    finally:
        call.cancel()
    assert any(telco_id.encode() in blob for blob in seen_by_telco)
    assert not any(bank_id.encode() in blob for blob in seen_by_telco)
