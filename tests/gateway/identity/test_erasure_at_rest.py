"""Erasure that erases (issue 18): a customer's case with unique markers in its local
id, summary, interactions, findings, identifiers and consent records, driven through
the API and the workflow to a closed case; `EraseCustomer`; then no marker is found at
rest: on SQLite in any file of the data directory (the WAL truncated first), on
PostgreSQL in any column of any table. Every partner that received the customer's data
gets an erasure notice on its work stream, acknowledges it, and the log verifies.
A retry of a call about the erased customer answers CUSTOMER_ERASED, revealing nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable

import grpc
import pytest
from coopgate.v1 import (
    admin_pb2,
    audit_pb2,
    audit_pb2_grpc,
    cases_pb2,
    common_pb2,
    consents_pb2,
    identity_pb2,
    identity_pb2_grpc,
    work_pb2,
)
from sqlalchemy import and_, select, update

from gateway.core.caller import Role
from gateway.store.schema import (
    audit_entries,
    case_keys,
    cases,
    subject_keys,
    subject_links,
    work_items,
)
from tests.at_rest import found_in_columns, found_in_files, log_verifies
from tests.conftest import Api, Stack
from tests.gateway.orchestration.test_incident_e2e import backends, play_to_closure, quick_service
from tests.helpers import queued_items

Key = Callable[[str], str]


class Markers:
    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:16]
        self.local_id = f"L{tag}-customer"
        self.summary = f"S{tag} payment refused at the bakery"
        self.note = f"N{tag} the customer called back, angry"
        self.finding = f"F{tag}-evidence"
        self.reason = f"R{tag} to see the SIM check"
        self.consent = f"C{tag}-notice"
        self.email = f"e{tag}@example.org"

    def all(self) -> dict[str, str]:
        return dict(vars(self))


async def _found_at_rest(stack: Stack, markers: dict[str, str]) -> dict[str, list[str]]:
    found = await found_in_columns(stack.runtime.store, markers)
    if stack.backend == "sqlite":
        assert await stack.runtime.store.truncate_wal()
        for name, places in found_in_files(stack.settings.data_dir, markers).items():
            found.setdefault(name, []).extend(f"file:{p}" for p in places)
    return found


async def _notice(api: Api, match: Callable[[work_pb2.ErasureNotice], bool]) -> str:
    """Wait for an erasure notice on this partner's stream; acknowledge it; its work id."""
    async with asyncio.timeout(30):
        while True:
            call = api.work.Subscribe(work_pb2.SubscribeRequest(max_in_flight=1000))
            async for response in call:
                item = response.item
                if item.HasField("erasure_notice") and match(item.erasure_notice):
                    assert item.work_id.startswith("erasure-")
                    assert item.erasure_notice.notice_id == item.work_id
                    assert item.erasure_notice.HasField("erased_at")
                    call.cancel()
                    await api.work.Acknowledge(
                        work_pb2.AcknowledgeRequest(
                            idempotency_key=f"ack-{item.work_id}", work_ids=[item.work_id]
                        )
                    )
                    return item.work_id
            await asyncio.sleep(0.1)


async def _queued_notice(stack: Stack, partner: str, case_id: str) -> work_pb2.WorkItem:
    """The erasure notice queued for this partner naming this case, as its work stream
    sends it, read from the store: a partner's stream sends at most 1000 unacknowledged
    items, and the shared stack's partners leave many unacknowledged."""
    query = and_(
        work_items.c.partner_id == partner,
        work_items.c.work_id.like("erasure-%"),
        work_items.c.acked_at.is_(None),
    )
    async with asyncio.timeout(30):
        while True:
            items = await queued_items(stack.runtime, query)
            found = [i for i in items if case_id in i.erasure_notice.case_ids]
            if found:
                (item,) = found
                return item
            await asyncio.sleep(0.1)


async def _closed_case_with_markers(stack: Stack, unique: Key, m: Markers) -> tuple[str, str]:
    """The closed case's id and the bank's pseudonym for the customer."""
    admin = stack.api("coopgate", Role.ADMIN)
    service_id = await quick_service(admin, unique)
    await admin.admin.DefineSharingAgreement(
        admin_pb2.DefineSharingAgreementRequest(
            idempotency_key=unique("k"),
            agreement=admin_pb2.SharingAgreement(
                source_partner_id="telco-a",
                recipient_partner_id="bank-a",
                service_id=service_id,
                categories=["device.sim"],
                purposes=["incident-resolution"],
            ),
        )
    )
    bank = stack.api("bank-a", Role.ADVISOR)
    identity = identity_pb2_grpc.IdentityServiceStub(bank.channel)
    await identity.RegisterIdentifiers(
        identity_pb2.RegisterIdentifiersRequest(
            idempotency_key=unique("k"),
            customer_local_id=m.local_id,
            identifiers=[
                identity_pb2.Identifier(kind=identity_pb2.IDENTIFIER_KIND_EMAIL, value=m.email)
            ],
        )
    )
    case_ids: set[str] = set()
    async with backends(lambda p: stack.api(p), case_ids, accepting={"telco-a"}) as running:
        running["bank-a"].accepts = False
        opened = await bank.cases.OpenCase(
            cases_pb2.OpenCaseRequest(
                idempotency_key=unique("k"),
                service_id=service_id,
                customer_local_id=m.local_id,
                channel=common_pb2.CHANNEL_PHONE,
                summary=m.summary,
            )
        )
        case_ids.add(opened.case_id)
        await bank.cases.AppendInteraction(
            cases_pb2.AppendInteractionRequest(
                idempotency_key=unique("k"),
                case_id=opened.case_id,
                interaction=cases_pb2.Interaction(channel=common_pb2.CHANNEL_PHONE, summary=m.note),
            )
        )
        await bank.cases.SubmitFinding(
            cases_pb2.SubmitFindingRequest(
                idempotency_key=unique("k"),
                case_id=opened.case_id,
                finding=cases_pb2.Finding(
                    component="card-token",
                    status=cases_pb2.FINDING_STATUS_OK,
                    confidence=0.9,
                    evidence_ref=m.finding,
                ),
            )
        )
        await bank.consents.RequestConsent(
            consents_pb2.RequestConsentRequest(
                idempotency_key=unique("k"),
                case_id=opened.case_id,
                source_partner_id="telco-a",
                categories=["device.sim"],
                purposes=["incident-resolution"],
                reason=m.reason,
            )
        )
        await bank.consents.GrantConsent(
            consents_pb2.GrantConsentRequest(
                idempotency_key=unique("k"),
                customer_local_id=m.local_id,
                source_partner_id="telco-a",
                recipient_partner_ids=["bank-a"],
                categories=["device.sim"],
                purposes=["incident-resolution"],
                channel=common_pb2.CHANNEL_PHONE,
                notice_version=m.consent,
            )
        )
        await play_to_closure(stack.api("telco-a", Role.ADVISOR), opened.case_id, unique)
    return opened.case_id, opened.header.subject_id


async def test_nothing_readable_survives_erasure_and_every_recipient_is_told(
    stack: Stack, unique: Key
) -> None:
    m = Markers()
    case_id, pseudonym = await _closed_case_with_markers(stack, unique, m)
    bank = stack.api("bank-a", Role.ADVISOR)
    identity = identity_pb2_grpc.IdentityServiceStub(bank.channel)
    opened_again = cases_pb2.AppendInteractionRequest(
        idempotency_key=unique("k"),
        case_id=case_id,
        interaction=cases_pb2.Interaction(channel=common_pb2.CHANNEL_PHONE, summary="late"),
    )

    before = await _found_at_rest(stack, m.all())
    # The search finds what is there: the stored answers hold the summary, the note and
    # the finding, the consent its notice version (erasure empties or deletes them all).
    assert {"summary", "note", "finding", "consent"} <= before.keys(), before
    # The local id and the consent request's reason are nowhere in clear, before erasure
    # too: the links hold the id's keyed hash and sealed form, the messages that name it
    # to its own partner (diagnosis requests, notifications, the consent prompt) and the
    # consent request are sealed under the subject key, opened only to be sent.
    assert "local_id" not in before, before
    assert "reason" not in before, before
    subject = await _linked_and_sealed(stack, "bank-a", m.local_id)
    async with stack.runtime.store.read() as conn:
        local_ids = stack.runtime.domain.identity.local_ids
        assert await local_ids.local_id(conn, "bank-a", subject) == m.local_id

    erase = identity_pb2.EraseCustomerRequest(
        idempotency_key=unique("k"), customer_local_id=m.local_id
    )
    asked = dt.datetime.now(dt.UTC)
    assert (await identity.EraseCustomer(erase)).erased_cases == 1
    answered = dt.datetime.now(dt.UTC)
    assert (await identity.EraseCustomer(erase)).erased_cases == 1  # a retry: the same answer

    # Every partner that received the customer's data is told: the bank by its own id
    # (and the case it took part in), the other participants by the case, each why.
    def by_request(notice: work_pb2.ErasureNotice) -> bool:
        return (
            notice.reason == work_pb2.ERASURE_REASON_CUSTOMER_REQUEST
            and asked <= notice.erased_at.ToDatetime(dt.UTC) <= answered
        )

    notices = {
        "bank-a": await _notice(
            stack.api("bank-a"),
            lambda n: (
                by_request(n)
                and n.customer_local_id == m.local_id
                and list(n.case_ids) == [case_id]
            ),
        )
    }
    for partner in ("telco-a", "acquirer-a", "handset-a"):
        notices[partner] = await _notice(
            stack.api(partner),
            lambda n: by_request(n) and n.customer_local_id == "" and list(n.case_ids) == [case_id],
        )

    after = await _found_at_rest(stack, m.all())
    assert after == {}, f"found after erasure: {after} (before: {before})"
    await _unlinked_and_key_destroyed(stack, subject)

    async with stack.runtime.store.read() as conn:
        key = select(case_keys.c.wrapped_key).where(case_keys.c.case_id == case_id)
        assert (await conn.execute(key)).scalar() is None
        assert not (
            await conn.execute(select(work_items.c.work_id).where(work_items.c.case_id == case_id))
        ).all()
        actions = [
            bytes(canonical)
            for canonical in (
                await conn.execute(
                    select(audit_entries.c.canonical).where(audit_entries.c.kind == "erasure")
                )
            ).scalars()
            if notices["telco-a"].encode() in bytes(canonical)
        ]
    # The notice and its acknowledgement are in the log.
    assert any(b"subject.erasure_notified" in a for a in actions)
    assert any(b"subject.erasure_acknowledged" in a for a in actions)

    # A retry of a call about the erased customer answers the same, revealing nothing.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await bank.cases.AppendInteraction(opened_again)
    assert refused.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)

    await _log_verifies(stack)

    # The subject access report, over gRPC, still answers (by the bank's pseudonym: its
    # local id no longer names anyone), says what was erased and when, and holds no
    # erased data.
    report = audit_pb2.SubjectAccessReportRequest(subject_id=pseudonym)
    answer = await audit_pb2_grpc.AuditServiceStub(bank.channel).SubjectAccessReport(report)
    erasures = answer.erasures
    told = {"bank-a", "telco-a", "acquirer-a", "handset-a"}
    erased = [e for e in erasures if e.action == audit_pb2.ERASURE_ACTION_CUSTOMER_ERASED]
    assert [(e.partner_id, list(e.case_ids)) for e in erased] == [("bank-a", [case_id])]
    assert asked <= erased[0].at.ToDatetime(dt.UTC) <= answered
    notified = [e for e in erasures if e.action == audit_pb2.ERASURE_ACTION_RECIPIENT_NOTIFIED]
    assert {e.partner_id for e in notified} >= told
    assert all(list(e.case_ids) == [case_id] for e in notified)
    acknowledged = audit_pb2.ERASURE_ACTION_RECIPIENT_ACKNOWLEDGED
    assert {e.partner_id for e in erasures if e.action == acknowledged} >= told
    assert all(e.HasField("at") for e in erasures)
    assert not [
        name for name, marker in m.all().items() if marker.encode() in answer.SerializeToString()
    ]
    # Named by a partner's local id, the erased customer is no one.
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await audit_pb2_grpc.AuditServiceStub(bank.channel).SubjectAccessReport(
            audit_pb2.SubjectAccessReportRequest(customer_local_id=m.local_id)
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def _linked_and_sealed(stack: Stack, partner_id: str, local_id: str) -> str:
    """The partner's link is found by the keyed hash of its id, whose sealed form opens
    to it under the subject's key; returns the subject."""
    runtime = stack.runtime
    local_ids = runtime.domain.identity.local_ids
    local_hash = runtime.store.local_ids.digest(partner_id, local_id)
    async with runtime.store.read() as conn:
        subject, sealed = (
            await conn.execute(
                select(subject_links.c.subject_id, subject_links.c.sealed_local_id).where(
                    subject_links.c.partner_id == partner_id,
                    subject_links.c.local_hash == local_hash,
                )
            )
        ).one()
        assert local_id.encode() not in bytes(sealed)
        assert (partner_id, local_id) in await local_ids.links(conn, subject)
    return str(subject)


async def _unlinked_and_key_destroyed(stack: Stack, subject: str) -> None:
    async with stack.runtime.store.read() as conn:
        assert not (
            await conn.execute(
                select(subject_links.c.partner_id).where(subject_links.c.subject_id == subject)
            )
        ).all()
        key = select(subject_keys.c.wrapped_key).where(subject_keys.c.subject_id == subject)
        assert (await conn.execute(key)).one() == (None,)
        assert await stack.runtime.domain.identity.local_ids.local_id(conn, "bank-a", subject) == ""


async def test_local_ids_are_hashed_and_sealed_before_erasure(stack: Stack, unique: Key) -> None:
    """Two partners link their ids for one customer (a link code, then a confirmed match
    that merges a third id's subject into it): no local id is anywhere at rest in clear,
    in any column nor (SQLite) any file; each opens to its partner, and nothing does
    once the customer is erased."""
    tag = uuid.uuid4().hex[:16]
    bank_id, telco_id, other_id = (f"{p}{tag}-local" for p in ("B", "T", "O"))
    email = f"m{tag}@example.org"
    bank = identity_pb2_grpc.IdentityServiceStub(stack.api("bank-a", Role.ADVISOR).channel)
    telco = identity_pb2_grpc.IdentityServiceStub(stack.api("telco-a", Role.ADVISOR).channel)
    issued = await bank.IssueLinkCode(
        identity_pb2.IssueLinkCodeRequest(idempotency_key=unique("k"), customer_local_id=bank_id)
    )
    await telco.RedeemLinkCode(
        identity_pb2.RedeemLinkCodeRequest(
            idempotency_key=unique("k"), link_code=issued.link_code, customer_local_id=telco_id
        )
    )
    email_id = identity_pb2.Identifier(kind=identity_pb2.IDENTIFIER_KIND_EMAIL, value=email)
    await bank.RegisterIdentifiers(
        identity_pb2.RegisterIdentifiersRequest(
            idempotency_key=unique("k"), customer_local_id=bank_id, identifiers=[email_id]
        )
    )
    proposed = await telco.RegisterIdentifiers(
        identity_pb2.RegisterIdentifiersRequest(
            idempotency_key=unique("k"), customer_local_id=other_id, identifiers=[email_id]
        )
    )
    (proposal,) = proposed.proposals
    markers = {"bank": bank_id, "telco": telco_id, "other": other_id, "email": email}
    assert await _found_at_rest(stack, markers) == {}
    await telco.ConfirmMatch(
        identity_pb2.ConfirmMatchRequest(idempotency_key=unique("k"), match_id=proposal.match_id)
    )
    assert await _found_at_rest(stack, markers) == {}
    subject = await _linked_and_sealed(stack, "bank-a", bank_id)
    assert await _linked_and_sealed(stack, "telco-a", telco_id) == subject
    assert await _linked_and_sealed(stack, "telco-a", other_id) == subject  # merged, resealed
    async with stack.runtime.store.read() as conn:
        links = await stack.runtime.domain.identity.local_ids.links(conn, subject)
    assert sorted(links) == sorted(
        [("bank-a", bank_id), ("telco-a", telco_id), ("telco-a", other_id)]
    )

    await bank.EraseCustomer(
        identity_pb2.EraseCustomerRequest(idempotency_key=unique("k"), customer_local_id=bank_id)
    )
    await _unlinked_and_key_destroyed(stack, subject)
    # The notices name each partner's own ids: acknowledged, they are emptied.
    for partner, local_id in (("bank-a", bank_id), ("telco-a", telco_id), ("telco-a", other_id)):

        def names(notice: work_pb2.ErasureNotice, local_id: str = local_id) -> bool:
            return notice.customer_local_id == local_id

        await _notice(stack.api(partner), names)
    assert await _found_at_rest(stack, markers) == {}


async def _log_verifies(stack: Stack) -> None:
    await log_verifies(stack.runtime.store)


async def test_a_retry_after_erasure_answers_customer_erased(stack: Stack, unique: Key) -> None:
    bank = stack.api("bank-a", Role.ADVISOR)
    identity = identity_pb2_grpc.IdentityServiceStub(bank.channel)
    customer = unique("cust")
    open_request = cases_pb2.OpenCaseRequest(
        idempotency_key=unique("k"),
        service_id="nfc-payment",
        customer_local_id=customer,
        channel=common_pb2.CHANNEL_PHONE,
        summary=f"secret {unique('s')}",
    )
    opened = await bank.cases.OpenCase(open_request)
    append = cases_pb2.AppendInteractionRequest(
        idempotency_key=unique("k"),
        case_id=opened.case_id,
        interaction=cases_pb2.Interaction(channel=common_pb2.CHANNEL_PHONE, summary="more"),
    )
    await bank.cases.AppendInteraction(append)
    assert (await bank.cases.OpenCase(open_request)).case_id == opened.case_id

    await identity.EraseCustomer(
        identity_pb2.EraseCustomerRequest(idempotency_key=unique("k"), customer_local_id=customer)
    )
    retries = ((bank.cases.OpenCase, open_request), (bank.cases.AppendInteraction, append))
    for call, request in retries:
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(request)  # type: ignore[arg-type]
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "erased" in (refused.value.details() or "")
            assert "secret" not in (refused.value.details() or "")


async def test_retention_shreds_a_closed_case_like_an_erasure(stack: Stack, unique: Key) -> None:
    bank = stack.api("bank-a", Role.ADVISOR)
    secret = f"retained {unique('s')}"
    customer = unique("cust")
    opened = await bank.cases.OpenCase(
        cases_pb2.OpenCaseRequest(
            idempotency_key=unique("k"),
            service_id="nfc-payment",
            customer_local_id=customer,
            channel=common_pb2.CHANNEL_PHONE,
            summary=secret,
        )
    )
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    async with stack.runtime.store.write() as conn:
        await conn.execute(
            update(cases)
            .where(cases.c.case_id == opened.case_id)
            .values(status=cases_pb2.CASE_STATUS_CLOSED, updated_at=long_ago)
        )
    # The sweep's shredding, as `RetentionWorkflow`'s activity runs it (on Temporal's
    # clock: tests/workflows/test_at_rest.py).
    erasure = stack.runtime.domain.erasure
    swept = dt.datetime.now(dt.UTC)
    assert await erasure.expire(dt.timedelta(days=365)) >= 1
    key = select(case_keys.c.wrapped_key).where(case_keys.c.case_id == opened.case_id)
    async with stack.runtime.store.read() as conn:
        assert (await conn.execute(key)).scalar() is None
    assert await erasure.expire(dt.timedelta(days=365)) == 0
    async with stack.runtime.store.read() as conn:
        records = (
            await conn.execute(
                select(audit_entries.c.canonical).where(
                    audit_entries.c.case_id == opened.case_id,
                    audit_entries.c.kind == "erasure",
                )
            )
        ).scalars()
        # The shredding's record, once; the case's workflow, told to end, may already have
        # added its own ("case.workflow_ended").
        expired = [r for r in records if b"case.retention_expired" in bytes(r)]
    assert len(expired) == 1, expired
    await _log_verifies(stack)
    view = (
        await bank.cases.GetCaseView(
            cases_pb2.GetCaseViewRequest(case_id=opened.case_id, purpose="customer-care")
        )
    ).view
    assert secret not in view.SerializeToString().decode(errors="replace")

    # The bank, which took part, is told to forget the case (not the customer, who stays),
    # and acknowledges.
    item = await _queued_notice(stack, "bank-a", opened.case_id)
    notice = item.erasure_notice
    assert item.work_id.startswith("erasure-")
    assert notice.notice_id == item.work_id
    assert notice.reason == work_pb2.ERASURE_REASON_RETENTION_EXPIRED
    assert list(notice.case_ids) == [opened.case_id]
    assert notice.customer_local_id == ""
    assert notice.erased_at.ToDatetime(dt.UTC) >= swept
    acked = await stack.api("bank-a").work.Acknowledge(
        work_pb2.AcknowledgeRequest(idempotency_key=unique("k"), work_ids=[item.work_id])
    )
    assert acked.acknowledged == 1
    # The subject access report (the customer is still the bank's) lists the expiry, the
    # notice and its acknowledgement, with their times.
    answer = await audit_pb2_grpc.AuditServiceStub(bank.channel).SubjectAccessReport(
        audit_pb2.SubjectAccessReportRequest(customer_local_id=customer)
    )
    steps = [(e.action, e.partner_id, list(e.case_ids)) for e in answer.erasures]
    assert steps[0] == (audit_pb2.ERASURE_ACTION_RETENTION_EXPIRED, "coopgate", [opened.case_id])
    assert (audit_pb2.ERASURE_ACTION_RECIPIENT_NOTIFIED, "bank-a", [opened.case_id]) in steps
    assert (audit_pb2.ERASURE_ACTION_RECIPIENT_ACKNOWLEDGED, "bank-a", []) in steps
    assert all(e.at.ToDatetime(dt.UTC) >= swept for e in answer.erasures)
    assert secret.encode() not in answer.SerializeToString()
    assert item.work_id.encode() not in answer.SerializeToString()  # cases, not notices
    assert (await _found_at_rest(stack, {"secret": secret})) == {}
