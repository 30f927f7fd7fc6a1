"""The AuditService against the running gateway over mTLS, on SQLite and PostgreSQL:
proofs verify against signed checkpoints, compliance queries filter, the subject access
report shows who received the customer's data, and administration is audited."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from coopgate.v1 import audit_pb2, cases_pb2, common_pb2, identity_pb2, identity_pb2_grpc
from google.protobuf import timestamp_pb2

from gateway.audit import Checkpoint, Verifier, leaf_hash, open_note
from gateway.audit.merkle import verify_consistency, verify_inclusion
from gateway.core.caller import Role
from tests.conftest import Stack
from tests.gateway.conftest import Disclosure, audit_stub
from tests.helpers import field_violations


def entry_body(entry: audit_pb2.AuditEntry) -> dict[str, Any]:
    body = json.loads(entry.canonical)
    assert isinstance(body, dict)
    return body


async def case_entries(stack: Stack, case_id: str, **filters: Any) -> list[audit_pb2.AuditEntry]:
    compliance = audit_stub(stack.api("coopgate", Role.COMPLIANCE))
    response = await compliance.QueryAudit(audit_pb2.QueryAuditRequest(case_id=case_id, **filters))
    assert not response.next_page_token
    return list(response.entries)


async def signed_checkpoint(stack: Stack, partner: str, role: Role) -> Checkpoint:
    """The latest checkpoint, as anyone holding only the verifier key reads it."""
    response = await audit_stub(stack.api(partner, role)).GetCheckpoint(
        audit_pb2.GetCheckpointRequest()
    )
    body, _ = open_note(response.signed_note, [Verifier.from_key(response.verifier_key)])
    checkpoint = Checkpoint.parse(body)
    assert (checkpoint.size, checkpoint.root_hash) == (response.tree_size, response.root_hash)
    return checkpoint


async def test_access_and_consent_entries_are_proved_in_a_checkpoint(
    stack: Stack, disclosure: Disclosure
) -> None:
    entries = await case_entries(
        stack, disclosure.case_id, kind=audit_pb2.AUDIT_KIND_ACCESS_DECISION
    )
    reads = [
        e
        for e in entries
        if e.actor_partner_id == "bank-a"
        and (entry_body(e)["action"], entry_body(e)["source_partner_id"]) == ("read", "telco-a")
    ]
    assert [audit_pb2.Decision.Name(e.decision) for e in reads] == [
        "DECISION_DENY",
        "DECISION_ALLOW",
    ]
    allowed = reads[1]
    assert (allowed.consent_id, allowed.agreement_id) == (
        disclosure.consent_id,
        disclosure.agreement_id,
    )
    compliance = audit_stub(stack.api("coopgate", Role.COMPLIANCE))
    consent_events = await compliance.QueryAudit(
        audit_pb2.QueryAuditRequest(
            subject_id=allowed.subject_id, kind=audit_pb2.AUDIT_KIND_CONSENT_EVENT
        )
    )
    given = [e for e in consent_events.entries if e.consent_id == disclosure.consent_id]
    assert [entry_body(e)["action"] for e in given] == ["consent.given"]

    # A partner verifies, holding nothing but the verifier key and the proof.
    checkpoint = await signed_checkpoint(stack, "telco-a", Role.PARTNER)
    telco = audit_stub(stack.api("telco-a", Role.PARTNER))
    for entry in (allowed, given[0]):
        assert entry.leaf_hash == leaf_hash(entry.canonical)
        proof = await telco.GetInclusionProof(
            audit_pb2.GetInclusionProofRequest(index=entry.index, tree_size=checkpoint.size)
        )
        assert proof.leaf_hash == entry.leaf_hash
        verify_inclusion(
            leaf_hash(entry.canonical),
            entry.index,
            checkpoint.size,
            list(proof.proof),
            checkpoint.root_hash,
        )


async def test_two_checkpoints_are_consistent(stack: Stack, disclosure: Disclosure) -> None:
    first = await signed_checkpoint(stack, "bank-a", Role.ADVISOR)
    await disclosure.bank.cases.GetCaseView(  # one more audited read grows the log
        cases_pb2.GetCaseViewRequest(case_id=disclosure.case_id, purpose="incident-resolution")
    )
    second = await signed_checkpoint(stack, "coopgate", Role.COMPLIANCE)
    assert second.size > first.size
    assert second.origin == first.origin
    proof = await audit_stub(disclosure.bank).GetConsistencyProof(
        audit_pb2.GetConsistencyProofRequest(size1=first.size, size2=second.size)
    )
    verify_consistency(
        first.size, second.size, list(proof.proof), first.root_hash, second.root_hash
    )
    same = await audit_stub(disclosure.bank).GetConsistencyProof(
        audit_pb2.GetConsistencyProofRequest(size1=second.size, size2=second.size)
    )
    assert list(same.proof) == []


async def test_bad_proof_requests_name_the_field(stack: Stack, disclosure: Disclosure) -> None:
    checkpoint = await signed_checkpoint(stack, "bank-a", Role.ADVISOR)
    audit = audit_stub(disclosure.bank)
    beyond = checkpoint.size + 1_000_000
    bad: list[tuple[object, str, str]] = [
        (audit_pb2.GetInclusionProofRequest(index=0, tree_size=beyond), "tree_size", "beyond"),
        (audit_pb2.GetInclusionProofRequest(index=5, tree_size=5), "index", "below"),
        (audit_pb2.GetInclusionProofRequest(index=-1, tree_size=5), "index", "negative"),
        (audit_pb2.GetInclusionProofRequest(index=0, tree_size=0), "tree_size", "positive"),
        (audit_pb2.GetConsistencyProofRequest(size1=3, size2=2), "size1", "exceed"),
        (audit_pb2.GetConsistencyProofRequest(size1=0, size2=2), "size1", "positive"),
        (audit_pb2.GetConsistencyProofRequest(size1=1, size2=beyond), "size2", "beyond"),
        (audit_pb2.GetConsistencyProofRequest(size1=beyond, size2=beyond), "size2", "beyond"),
    ]
    for request, field, words in bad:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if isinstance(request, audit_pb2.GetInclusionProofRequest):
                await audit.GetInclusionProof(request)
            else:
                assert isinstance(request, audit_pb2.GetConsistencyProofRequest)
                await audit.GetConsistencyProof(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert words in field_violations(caught.value)[field], request


def at(value: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


async def test_queries_filter_page_and_are_for_compliance_only(
    stack: Stack, disclosure: Disclosure
) -> None:
    everything = await case_entries(stack, disclosure.case_id)
    assert everything
    assert all(e.case_id == disclosure.case_id for e in everything)
    assert [e.index for e in everything] == sorted(e.index for e in everything)
    denied = await case_entries(
        stack, disclosure.case_id, decision=audit_pb2.DECISION_DENY, partner_id="bank-a"
    )
    assert denied
    assert all(
        e.decision == audit_pb2.DECISION_DENY and e.actor_partner_id == "bank-a" for e in denied
    )
    assert "consent" in entry_body(denied[0])["reason"]
    by_purpose = await case_entries(stack, disclosure.case_id, purpose="incident-resolution")
    assert by_purpose
    assert {e.purpose for e in by_purpose} == {"incident-resolution"}
    assert await case_entries(stack, disclosure.case_id, purpose="marketing") == []
    assert await case_entries(stack, disclosure.case_id, partner_id="energy-a") == []

    # The case's workflow may still be adding entries: compare what was there before.
    first, last = everything[0].recorded_at.ToDatetime(dt.UTC), dt.datetime.now(dt.UTC)
    window = common_pb2.TimeRange(start=at(first), end=at(last))
    in_window = await case_entries(stack, disclosure.case_id, time_range=window)
    assert in_window[: len(everything)] == everything
    after_first = common_pb2.TimeRange(start=at(first + dt.timedelta(microseconds=1)))
    assert everything[0] not in await case_entries(
        stack, disclosure.case_id, time_range=after_first
    )
    later = common_pb2.TimeRange(start=at(last + dt.timedelta(minutes=5)))
    assert await case_entries(stack, disclosure.case_id, time_range=later) == []

    compliance = audit_stub(stack.api("coopgate", Role.COMPLIANCE))
    paged: list[audit_pb2.AuditEntry] = []
    token = ""
    while True:
        page = await compliance.QueryAudit(
            audit_pb2.QueryAuditRequest(
                case_id=disclosure.case_id,
                page=common_pb2.PageRequest(page_size=2, page_token=token),
            )
        )
        assert len(page.entries) <= 2
        paged += page.entries
        token = page.next_page_token
        if not token:
            break
    assert paged[: len(everything)] == everything
    assert [e.index for e in paged] == sorted({e.index for e in paged})

    for partner, role in (("bank-a", Role.PARTNER), ("telco-a", Role.ADVISOR)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await audit_stub(stack.api(partner, role)).QueryAudit(audit_pb2.QueryAuditRequest())
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    for request, field in (
        (
            audit_pb2.QueryAuditRequest(page=common_pb2.PageRequest(page_size=5000)),
            "page.page_size",
        ),
        (
            audit_pb2.QueryAuditRequest(page=common_pb2.PageRequest(page_token="nonsense")),
            "page.page_token",
        ),
        (audit_pb2.QueryAuditRequest(kind=99), "kind"),  # type: ignore[arg-type]
        (audit_pb2.QueryAuditRequest(decision=7), "decision"),  # type: ignore[arg-type]
        (audit_pb2.QueryAuditRequest(subject_id="not hex"), "subject_id"),
        (
            audit_pb2.QueryAuditRequest(
                time_range=common_pb2.TimeRange(start=at(last), end=at(first))
            ),
            "time_range.end",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await compliance.QueryAudit(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(caught.value)


async def test_subject_access_report_shows_the_operator_to_bank_disclosure(
    stack: Stack, disclosure: Disclosure
) -> None:
    report = await audit_stub(disclosure.bank).SubjectAccessReport(
        audit_pb2.SubjectAccessReportRequest(customer_local_id=disclosure.customer)
    )
    assert len(report.disclosures) == 1
    shown = report.disclosures[0]
    assert (
        shown.recipient_partner_id,
        shown.source_partner_id,
        list(shown.categories),
        shown.purpose,
        shown.consent_id,
        shown.agreement_id,
        shown.case_id,
    ) == (
        "bank-a",
        "telco-a",
        ["device.sim"],
        "incident-resolution",
        disclosure.consent_id,
        disclosure.agreement_id,
        disclosure.case_id,
    )
    assert abs(shown.at.ToDatetime(dt.UTC) - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)

    subject = (await case_entries(stack, disclosure.case_id))[0].subject_id
    compliance = audit_stub(stack.api("coopgate", Role.COMPLIANCE))
    by_subject = await compliance.SubjectAccessReport(
        audit_pb2.SubjectAccessReportRequest(subject_id=subject)
    )
    assert list(by_subject.disclosures) == list(report.disclosures)
    before = common_pb2.TimeRange(end=at(shown.at.ToDatetime(dt.UTC)))
    earlier = await compliance.SubjectAccessReport(
        audit_pb2.SubjectAccessReportRequest(subject_id=subject, time_range=before)
    )
    assert list(earlier.disclosures) == []

    # The operator does not know the customer under the bank's id; admins see no reports.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await audit_stub(stack.api("telco-a", Role.ADVISOR)).SubjectAccessReport(
            audit_pb2.SubjectAccessReportRequest(customer_local_id=disclosure.customer)
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await audit_stub(stack.api("bank-a", Role.ADVISOR)).SubjectAccessReport(
            audit_pb2.SubjectAccessReportRequest(subject_id=subject)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await audit_stub(stack.api("coopgate", Role.ADMIN)).SubjectAccessReport(
            audit_pb2.SubjectAccessReportRequest(subject_id=subject)
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_administrative_changes_are_in_the_log(stack: Stack, disclosure: Disclosure) -> None:
    compliance = audit_stub(stack.api("coopgate", Role.COMPLIANCE))
    admin_entries = await compliance.QueryAudit(
        audit_pb2.QueryAuditRequest(
            kind=audit_pb2.AUDIT_KIND_ADMIN_CHANGE,
            partner_id="coopgate",
            page=common_pb2.PageRequest(page_size=1000),
        )
    )
    bodies = [entry_body(e) for e in admin_entries.entries]
    details = [b["details"] for b in bodies]
    service = disclosure.admin_service
    assert {
        "service": service.service_id,
        "version": "1",
        "chain": ",".join(f"{c.name}={c.partner_id}" for c in service.components),
        "definition_sha256": hashlib.sha256(
            service.SerializeToString(deterministic=True)
        ).hexdigest(),
    } in details
    agreement = disclosure.admin_agreement
    defined = [b for b in bodies if b["agreement_id"] == disclosure.agreement_id]
    assert len(defined) == 1
    assert defined[0]["action"] == "admin.agreement-defined"
    assert defined[0]["source_partner_id"] == "telco-a"
    assert defined[0]["categories"] == ["device.sim"]
    assert defined[0]["details"] == {
        "recipient": "bank-a",
        "service": service.service_id,
        "valid_until": "",
        "definition_sha256": hashlib.sha256(
            agreement.SerializeToString(deterministic=True)
        ).hexdigest(),
    }
    # The seeded catalogue's partners were registered through the audited path too.
    registered = {
        b["details"]["partner"] for b in bodies if b["action"] == "admin.partner-registered"
    }
    assert {"bank-a", "telco-a"} <= registered


async def test_the_report_follows_the_customer_through_identity_merges(
    stack: Stack, disclosure: Disclosure, unique: Callable[[str], str]
) -> None:
    """The bank's customer is linked to the operator's: their subjects merge, and the
    disclosure logged under the bank-side subject still shows."""
    telco = identity_pb2_grpc.IdentityServiceStub(stack.api("telco-a", Role.ADVISOR).channel)
    code = await telco.IssueLinkCode(
        identity_pb2.IssueLinkCodeRequest(
            idempotency_key=unique("k"), customer_local_id=unique("line")
        )
    )
    bank = identity_pb2_grpc.IdentityServiceStub(disclosure.bank.channel)
    await bank.RedeemLinkCode(
        identity_pb2.RedeemLinkCodeRequest(
            idempotency_key=unique("k"),
            link_code=code.link_code,
            customer_local_id=disclosure.customer,
        )
    )
    report = await audit_stub(disclosure.bank).SubjectAccessReport(
        audit_pb2.SubjectAccessReportRequest(customer_local_id=disclosure.customer)
    )
    assert [(d.source_partner_id, d.consent_id) for d in report.disclosures] == [
        ("telco-a", disclosure.consent_id)
    ]


async def test_reading_the_log_is_logged(stack: Stack, disclosure: Disclosure) -> None:
    """Who looked at the log: each subject access report is an access entry on the
    subject (never listed as a disclosure itself), and each listing is logged once,
    on its first page, with its filters."""
    since = at(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    bank = audit_stub(disclosure.bank)
    request = audit_pb2.SubjectAccessReportRequest(customer_local_id=disclosure.customer)
    first = await bank.SubjectAccessReport(request)
    second = await bank.SubjectAccessReport(request)
    assert len(second.disclosures) == len(first.disclosures) == 1

    subject = (await case_entries(stack, disclosure.case_id))[0].subject_id
    compliance = audit_stub(stack.api("coopgate", Role.COMPLIANCE))
    on_subject = await compliance.QueryAudit(
        audit_pb2.QueryAuditRequest(
            subject_id=subject,
            partner_id="bank-a",
            kind=audit_pb2.AUDIT_KIND_ACCESS_DECISION,
            page=common_pb2.PageRequest(page_size=1000),
        )
    )
    reports = [e for e in on_subject.entries if entry_body(e)["action"] == "audit.subject-report"]
    assert len(reports) == 2
    assert {entry_body(e)["reason"] for e in reports} == {"1 disclosures reported"}

    # A listing of several pages over this test's own case: logged once, not per page
    # (`case_entries` above was one listing of the case too).
    token, pages = "", 0
    while True:
        page = await compliance.QueryAudit(
            audit_pb2.QueryAuditRequest(
                case_id=disclosure.case_id,
                page=common_pb2.PageRequest(page_size=1, page_token=token),
            )
        )
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages >= 2
    listings = await compliance.QueryAudit(
        audit_pb2.QueryAuditRequest(
            partner_id="coopgate",
            kind=audit_pb2.AUDIT_KIND_ACCESS_DECISION,
            time_range=common_pb2.TimeRange(start=since),
            page=common_pb2.PageRequest(page_size=1000),
        )
    )
    assert not listings.next_page_token
    mine = [
        entry_body(e)
        for e in listings.entries
        if entry_body(e)["action"] == "audit.query"
        and entry_body(e)["details"].get("case_id") == disclosure.case_id
    ]
    assert len(mine) == 2
    assert {m["case_id"] for m in mine} == {""}  # filters stay in the details
