"""OpenCase / GetCaseView / ListCases over real gRPC with mTLS, a real
Temporal dev server and a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from coopgate.v1 import cases_pb2, common_pb2, consents_pb2
from google.protobuf.message import Message
from temporalio.client import WorkflowExecutionStatus

from gateway.core.caller import Role
from tests.conftest import Stack
from tests.helpers import error_info, field_violations


def open_request(key: str, customer: str, **overrides: object) -> cases_pb2.OpenCaseRequest:
    fields: dict[str, object] = {
        "idempotency_key": key,
        "service_id": "nfc-payment",
        "customer_local_id": customer,
        "channel": common_pb2.CHANNEL_PHONE,
        "summary": "cannot pay by phone at the restaurant",
        "author_id": "advisor-17",
    }
    fields.update(overrides)
    return cases_pb2.OpenCaseRequest(**fields)  # type: ignore[arg-type]


async def wait_for_status(
    stack: Stack, partner: str, case_id: str, status: int, timeout: float = 15
) -> cases_pb2.CaseView:
    api = stack.api(partner)
    async with asyncio.timeout(timeout):
        while True:
            view = (
                await api.cases.GetCaseView(
                    cases_pb2.GetCaseViewRequest(case_id=case_id, purpose="incident-resolution")
                )
            ).view
            if view.header.status == status:
                return view
            await asyncio.sleep(0.05)


async def test_open_case_starts_its_workflow_and_reads_back(
    stack: Stack, unique: Callable[[str], str]
) -> None:
    bank = stack.api("bank-a")
    response = await bank.cases.OpenCase(open_request(unique("k"), unique("cust")))
    case_id = response.case_id
    assert case_id.startswith("case-")
    assert response.header.status == cases_pb2.CASE_STATUS_RECEIVED
    assert response.header.first_contact_partner_id == "bank-a"

    description = await stack.client.get_workflow_handle(case_id).describe()
    assert description.id == case_id
    assert description.workflow_type == "IncidentWorkflow"
    assert description.status == WorkflowExecutionStatus.RUNNING

    view = await wait_for_status(stack, "bank-a", case_id, cases_pb2.CASE_STATUS_DIAGNOSING)
    statuses = [i.status_change.status for i in view.timeline if i.HasField("status_change")]
    assert statuses == [cases_pb2.CASE_STATUS_RECEIVED, cases_pb2.CASE_STATUS_DIAGNOSING]
    interactions = [i.interaction for i in view.timeline if i.HasField("interaction")]
    assert [i.summary for i in interactions] == ["cannot pay by phone at the restaurant"]
    assert interactions[0].channel == common_pb2.CHANNEL_PHONE
    assert {p.partner_id for p in view.participants} == {
        "telco-a",
        "bank-a",
        "acquirer-a",
        "handset-a",
    }
    assert view.position == max(i.sequence for i in view.timeline)


async def test_other_partners_see_the_case_but_not_each_others_data(
    stack: Stack, unique: Callable[[str], str]
) -> None:
    opened = await stack.api("bank-a").cases.OpenCase(open_request(unique("k"), unique("cust")))
    view = (
        await stack.api("telco-a").cases.GetCaseView(
            cases_pb2.GetCaseViewRequest(case_id=opened.case_id, purpose="incident-diagnosis")
        )
    ).view
    assert not [i for i in view.timeline if i.HasField("interaction")]
    assert [(w.source_partner_id, w.category, w.count) for w in view.withheld] == [
        ("bank-a", "interaction.history", 1)
    ]
    assert view.header.summary == ""
    # Pairwise pseudonyms: the same customer has a different id for each partner.
    bank_view = await wait_for_status(
        stack, "bank-a", opened.case_id, cases_pb2.CASE_STATUS_DIAGNOSING
    )
    assert view.header.subject_id.startswith("sub_")
    assert view.header.subject_id != bank_view.header.subject_id


async def test_retried_open_case_returns_the_first_result_and_creates_nothing(
    stack: Stack, unique: Callable[[str], str]
) -> None:
    bank = stack.api("bank-a")
    customer = unique("cust")
    request = open_request(unique("k"), customer)
    first = await bank.cases.OpenCase(request)
    again = await bank.cases.OpenCase(request)
    concurrent = await asyncio.gather(*(bank.cases.OpenCase(request) for _ in range(5)))
    assert again == first
    assert {r.case_id for r in concurrent} == {first.case_id}
    listed = await bank.cases.ListCases(cases_pb2.ListCasesRequest(customer_local_id=customer))
    assert [c.case_id for c in listed.cases] == [first.case_id]


async def test_concurrent_first_calls_with_one_key_make_one_case(
    stack: Stack, unique: Callable[[str], str]
) -> None:
    bank = stack.api("bank-a")
    customer = unique("cust")
    request = open_request(unique("k"), customer)
    results = await asyncio.gather(*(bank.cases.OpenCase(request) for _ in range(6)))
    assert len({r.case_id for r in results}) == 1
    listed = await bank.cases.ListCases(cases_pb2.ListCasesRequest(customer_local_id=customer))
    assert len(listed.cases) == 1


async def test_same_key_with_a_different_request_is_refused(
    stack: Stack, unique: Callable[[str], str]
) -> None:
    bank = stack.api("bank-a")
    key, customer = unique("k"), unique("cust")
    await bank.cases.OpenCase(open_request(key, customer))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bank.cases.OpenCase(open_request(key, customer, summary="something else"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "idempotency_key" in field_violations(caught.value)
    assert error_info(caught.value).reason == "IDEMPOTENCY_KEY_REUSED"


async def test_unknown_service_names_the_field(stack: Stack, unique: Callable[[str], str]) -> None:
    bank = stack.api("bank-a")
    customer = unique("cust")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bank.cases.OpenCase(open_request(unique("k"), customer, service_id="teleport"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == {"service_id": "unknown service 'teleport'"}
    info = error_info(caught.value)
    assert (info.reason, info.domain) == ("UNKNOWN_SERVICE", "coopgate.dev")
    listed = await bank.cases.ListCases(cases_pb2.ListCasesRequest(customer_local_id=customer))
    assert len(listed.cases) == 0


async def test_missing_fields_are_each_named(stack: Stack) -> None:
    bank = stack.api("bank-a")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bank.cases.OpenCase(cases_pb2.OpenCaseRequest(idempotency_key="k-missing"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {
        "service_id",
        "customer_local_id",
        "channel",
        "summary",
    }
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bank.cases.OpenCase(open_request("", "c"))
    assert set(field_violations(caught.value)) == {"idempotency_key"}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bank.cases.OpenCase(open_request("k-bad-channel", "c", channel=99))
    assert set(field_violations(caught.value)) == {"channel"}


async def test_a_case_is_not_found_for_a_partner_outside_it(
    stack: Stack, unique: Callable[[str], str]
) -> None:
    opened = await stack.api("bank-a").cases.OpenCase(open_request(unique("k"), unique("c")))
    outsider = stack.api("energy-a")
    for case_id in (opened.case_id, "case-does-not-exist"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await outsider.cases.GetCaseView(
                cases_pb2.GetCaseViewRequest(case_id=case_id, purpose="incident-resolution")
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_info(caught.value).reason == "CASE_NOT_FOUND"


async def test_a_partner_outside_the_service_chain_cannot_open_a_case(
    stack: Stack, unique: Callable[[str], str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.api("energy-a").cases.OpenCase(open_request(unique("k"), unique("c")))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(caught.value).reason == "NOT_IN_SERVICE_CHAIN"


async def test_every_read_declares_a_purpose(stack: Stack, unique: Callable[[str], str]) -> None:
    opened = await stack.api("bank-a").cases.OpenCase(open_request(unique("k"), unique("c")))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.api("bank-a").cases.GetCaseView(
            cases_pb2.GetCaseViewRequest(case_id=opened.case_id)
        )
    assert set(field_violations(caught.value)) == {"purpose"}


async def test_list_cases_pages_without_gaps_or_repeats(
    stack: Stack, unique: Callable[[str], str]
) -> None:
    bank = stack.api("bank-a", Role.ADVISOR)
    customer = unique("cust")
    opened = {
        (await bank.cases.OpenCase(open_request(unique("k"), customer))).case_id for _ in range(5)
    }
    seen: list[str] = []
    token = ""
    while True:
        page = await bank.cases.ListCases(
            cases_pb2.ListCasesRequest(
                customer_local_id=customer,
                page=common_pb2.PageRequest(page_size=2, page_token=token),
            )
        )
        seen += [c.case_id for c in page.cases]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(opened)
    by_subject = await bank.cases.ListCases(
        cases_pb2.ListCasesRequest(subject_id=page.cases[0].subject_id)
    )
    assert {c.case_id for c in by_subject.cases} == opened


def _actions(case_id: str, key: str) -> dict[str, tuple[str, Message]]:
    """One valid request per case-scoped action, for ``case_id``."""
    return {
        "SubmitFinding": (
            "cases",
            cases_pb2.SubmitFindingRequest(
                idempotency_key=key,
                case_id=case_id,
                request_id="req-1",
                finding=cases_pb2.Finding(
                    component="sim-secure-element",
                    status=cases_pb2.FINDING_STATUS_FAULTY,
                    fault_code="X",
                    confidence=0.9,
                ),
            ),
        ),
        "AcceptOwnership": (
            "cases",
            cases_pb2.AcceptOwnershipRequest(idempotency_key=key, case_id=case_id, offer_id="o"),
        ),
        "DeclineOwnership": (
            "cases",
            cases_pb2.DeclineOwnershipRequest(
                idempotency_key=key, case_id=case_id, offer_id="o", reason="busy"
            ),
        ),
        "ResolveCase": (
            "cases",
            cases_pb2.ResolveCaseRequest(idempotency_key=key, case_id=case_id, resolution="done"),
        ),
        "ConfirmResolution": (
            "cases",
            cases_pb2.ConfirmResolutionRequest(idempotency_key=key, case_id=case_id),
        ),
        "ReopenCase": (
            "cases",
            cases_pb2.ReopenCaseRequest(
                idempotency_key=key,
                case_id=case_id,
                reason="again",
                channel=common_pb2.CHANNEL_PHONE,
            ),
        ),
        "AppendInteraction": (
            "cases",
            cases_pb2.AppendInteractionRequest(
                idempotency_key=key,
                case_id=case_id,
                interaction=cases_pb2.Interaction(
                    channel=common_pb2.CHANNEL_PHONE,
                    author_kind=cases_pb2.AUTHOR_KIND_ADVISOR,
                    summary="called back",
                ),
            ),
        ),
        "RequestConsent": (
            "consents",
            consents_pb2.RequestConsentRequest(
                idempotency_key=key,
                case_id=case_id,
                source_partner_id="telco-a",
                categories=["diagnostic.findings"],
                purposes=["incident-diagnosis"],
            ),
        ),
    }


async def test_an_outsider_cannot_tell_a_real_case_from_a_missing_one(
    stack: Stack, unique: Callable[[str], str]
) -> None:
    """Every case-scoped action answers an outsider on a real case exactly as it answers
    anyone on a case that does not exist: same code, reason and message (but the id)."""
    opened = await stack.api("bank-a").cases.OpenCase(open_request(unique("k"), unique("c")))
    missing = "c" * len(opened.case_id)
    outsider = stack.api("energy-a")
    for rpc in _actions(opened.case_id, "k"):
        answers = []
        for case_id in (opened.case_id, missing):
            service, request = _actions(case_id, unique("k"))[rpc]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await getattr(getattr(outsider, service), rpc)(request, timeout=10)
            error = caught.value
            answers.append(
                (
                    error.code(),
                    error_info(error).reason,
                    (error.details() or "").replace(case_id, "<id>"),
                )
            )
        assert answers[0] == answers[1], rpc
        assert answers[0][0] == grpc.StatusCode.NOT_FOUND, (rpc, answers[0])


async def test_the_view_lists_the_timeline_in_sequence_order(
    stack: Stack, unique: Callable[[str], str]
) -> None:
    """As the watch streams it: an item's own time (here an interaction dated before the
    case was opened) does not move it before the items recorded earlier."""
    bank = stack.api("bank-a")
    case_id = (await bank.cases.OpenCase(open_request(unique("k"), unique("cust")))).case_id
    earlier = cases_pb2.Interaction(
        channel=common_pb2.CHANNEL_PHONE,
        author_kind=cases_pb2.AUTHOR_KIND_ADVISOR,
        summary="the customer had called the day before",
    )
    earlier.occurred_at.FromSeconds(1_000_000_000)
    appended = await bank.cases.AppendInteraction(
        cases_pb2.AppendInteractionRequest(
            idempotency_key=unique("k"), case_id=case_id, interaction=earlier
        )
    )
    for _ in range(2):  # made, then served again as kept
        view = (
            await bank.cases.GetCaseView(
                cases_pb2.GetCaseViewRequest(case_id=case_id, purpose="incident-resolution")
            )
        ).view
        sequences = [i.sequence for i in view.timeline]
        assert sequences == sorted(sequences)
        assert len(set(sequences)) == len(sequences)
        assert appended.sequence in sequences
        assert sequences[0] == 1
