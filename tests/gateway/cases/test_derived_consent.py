"""Derived data follows its sources' consent (issue 12): the ownership decision cites
the operator's finding, and a bank without the customer's consent reads none of it —
not in the view for any purpose, not in the watch, not in the ownership offer or any
other work item — while the rule, the owner and the resolvers stay visible to all.
With a consent the bank reads it; after the withdrawal it is gone again.

A whole nfc-payment incident on the real stack: the reference operator, acquirer and
handset backends answer by themselves; the bank is driven here, over raw gRPC, so that
the very bytes it receives are searched."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from coopgate.v1 import audit_pb2, cases_pb2, common_pb2, consents_pb2, work_pb2

from gateway.core.caller import Role
from partners.scenarios import Stage
from tests.conftest import Api, Stack
from tests.partners.backends import running_backends

FINDINGS = "diagnostic.findings"
NOTES = "interaction.history"
PURPOSES = ("incident-diagnosis", "incident-resolution", "customer-care")
EVERY_PURPOSE = (*PURPOSES, "service-improvement", "marketing")
#: What the operator's finding holds: fault code, evidence, status and confidence.
SECRETS = (b"SE_PAYMENT_APPLET_LOCKED", b"OTA-7731", b"FAULTY", b"0.92")


def _raw_unary(api: Api, method: str) -> grpc.aio.UnaryUnaryMultiCallable[Any, bytes]:
    return api.channel.unary_unary(
        method, request_serializer=lambda m: m.SerializeToString(), response_deserializer=None
    )


def _raw_stream(api: Api, method: str) -> grpc.aio.UnaryStreamMultiCallable[Any, bytes]:
    return api.channel.unary_stream(
        method, request_serializer=lambda m: m.SerializeToString(), response_deserializer=None
    )


class Bank:
    """The bank's backend, driven here: every work item it receives is kept as the
    bytes that came over the wire; it answers its diagnosis request and accepts the
    ownership offer."""

    def __init__(self, partner: Api, component: str) -> None:
        self.api, self.component = partner, component
        self.received: list[bytes] = []
        self.items: list[work_pb2.WorkItem] = []

    async def run(self) -> None:
        subscribe = _raw_stream(self.api, "/coopgate.v1.PartnerWorkService/Subscribe")
        call = subscribe(work_pb2.SubscribeRequest(max_in_flight=50))
        async for raw in call:
            self.received.append(raw)
            item = work_pb2.SubscribeResponse.FromString(raw).item
            self.items.append(item)
            await self.handle(item)

    async def handle(self, item: work_pb2.WorkItem) -> None:
        key = f"k-{uuid.uuid4().hex[:12]}"
        if item.HasField("diagnosis_request"):
            request = item.diagnosis_request
            await self.api.cases.SubmitFinding(
                cases_pb2.SubmitFindingRequest(
                    idempotency_key=key,
                    case_id=request.case_id,
                    request_id=request.request_id,
                    finding=cases_pb2.Finding(
                        component=request.component,
                        status=cases_pb2.FINDING_STATUS_OK,
                        confidence=0.95,
                    ),
                )
            )
        elif item.HasField("ownership_offer"):
            offer = item.ownership_offer
            await self.api.cases.AcceptOwnership(
                cases_pb2.AcceptOwnershipRequest(
                    idempotency_key=key, case_id=offer.case_id, offer_id=offer.offer_id
                )
            )
        await self.api.work.Acknowledge(
            work_pb2.AcknowledgeRequest(idempotency_key=f"{key}-ack", work_ids=[item.work_id])
        )

    def kinds(self) -> list[str]:
        return [str(i.WhichOneof("payload")) for i in self.items]


async def _view(advisor: Api, case_id: str, purpose: str) -> bytes:
    method = _raw_unary(advisor, "/coopgate.v1.CaseService/GetCaseView")
    raw: bytes = await method(cases_pb2.GetCaseViewRequest(case_id=case_id, purpose=purpose))
    return raw


def _parsed(raw: bytes) -> cases_pb2.CaseView:
    return cases_pb2.GetCaseViewResponse.FromString(raw).view


async def _watch(advisor: Api, case_id: str, purpose: str) -> list[bytes]:
    """Every WatchCase response from the start, as received, until the last item the
    view (for the same purpose) shows has come."""
    until = max(i.sequence for i in _parsed(await _view(advisor, case_id, purpose)).timeline)
    watch = _raw_stream(advisor, "/coopgate.v1.CaseService/WatchCase")
    call = watch(cases_pb2.WatchCaseRequest(case_id=case_id, purpose=purpose))
    received: list[bytes] = []
    try:
        async with asyncio.timeout(15):
            async for raw in call:
                received.append(raw)
                if cases_pb2.WatchCaseResponse.FromString(raw).item.sequence >= until:
                    break
    finally:
        call.cancel()
    return received


async def _until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 60) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


def _leaks(responses: list[bytes]) -> list[tuple[int, bytes]]:
    return [(n, s) for n, raw in enumerate(responses) for s in SECRETS if s in raw]


def _decision(view: cases_pb2.CaseView) -> cases_pb2.OwnershipDecision:
    decisions = [i.ownership_decision for i in view.timeline if i.HasField("ownership_decision")]
    assert decisions, "the view has the ownership decision"
    return decisions[-1]


def _withheld(view: cases_pb2.CaseView, source: str) -> int:
    return sum(
        w.count for w in view.withheld if (w.source_partner_id, w.category) == (source, FINDINGS)
    )


async def test_the_decision_tells_the_bank_no_finding_it_may_not_see(
    stack: Stack, stage: Stage
) -> None:
    cast = stage.cast
    bank, telco = cast["bank"], cast["operator"]
    service_id = await stage.service("nfc-payment")
    await stage.agree(service_id, telco, bank, (FINDINGS, NOTES), PURPOSES)
    advisor = stack.api(bank, Role.ADVISOR)
    backend = Bank(stack.api(bank, Role.PARTNER), "card-token")
    customer = stage.customer(bank)
    bank_task = asyncio.create_task(backend.run())
    try:
        async with running_backends(
            stage, ("operator", "acquirer", "handset"), {"operator": ("payment-applet-locked",)}
        ):
            opened = await advisor.cases.OpenCase(
                cases_pb2.OpenCaseRequest(
                    idempotency_key=f"k-{uuid.uuid4().hex[:12]}",
                    service_id=service_id,
                    customer_local_id=customer,
                    channel=common_pb2.CHANNEL_PHONE,
                    summary="cannot pay by phone at the restaurant",
                )
            )
            case_id = opened.case_id

            async def owned() -> bool:
                view = _parsed(await _view(advisor, case_id, "incident-resolution"))
                return view.header.relationship_owner_id == bank and "case_notice" in (
                    backend.kinds()
                )

            await _until("the bank owns the case and is told so", owned)
            # The operator's finding is in, and the decision cites it.
            telco_view = _parsed(
                await _view(stack.api(telco, Role.ADVISOR), case_id, "incident-resolution")
            )
            assert "SE_PAYMENT_APPLET_LOCKED" in _decision(telco_view).explanation

            # Without consent: nothing of the finding in anything the bank receives.
            views = [await _view(advisor, case_id, p) for p in EVERY_PURPOSE]
            watched = [raw for p in EVERY_PURPOSE for raw in await _watch(advisor, case_id, p)]
            assert "ownership_offer" in backend.kinds()
            assert _leaks(views) == []
            assert _leaks(watched) == []
            assert _leaks(backend.received) == []
            # Every reader sees the rule, the owner and the resolvers; the finding is
            # counted as withheld, in the view and in the decision's text.
            for raw in views:
                view = _parsed(raw)
                decision = _decision(view)
                assert decision.rule == "single-faulty-component"
                assert decision.relationship_owner_id == bank
                assert list(decision.resolver_ids) == [telco]
                assert f"{telco} resolves" in decision.explanation
                assert "withheld" in decision.explanation
                assert "sim-secure-element" not in decision.explanation
                assert "card-token: OK 0.95" in decision.explanation
                # The finding itself, and its citation in the decision.
                assert _withheld(view, telco) >= 2
            (offer,) = [i.ownership_offer for i in backend.items if i.HasField("ownership_offer")]
            assert offer.decision.rule == "single-faulty-component"
            assert list(offer.decision.resolver_ids) == [telco]
            assert "withheld" in offer.decision.explanation
            watched_decisions = [
                r.item.ownership_decision
                for r in map(cases_pb2.WatchCaseResponse.FromString, watched)
                if r.item.HasField("ownership_decision")
            ]
            assert watched_decisions
            assert all(
                d.resolver_ids == [telco] and "withheld" in d.explanation for d in watched_decisions
            )

            # With the customer's consent, the bank reads the finding, in the decision too.
            granted = await advisor.consents.GrantConsent(
                consents_pb2.GrantConsentRequest(
                    idempotency_key=f"k-{uuid.uuid4().hex[:12]}",
                    customer_local_id=customer,
                    source_partner_id=telco,
                    recipient_partner_ids=[bank],
                    categories=[FINDINGS],
                    purposes=["incident-resolution"],
                    channel=common_pb2.CHANNEL_PHONE,
                    notice_version="bank/notice/2026-10",
                )
            )
            shown_raw = await _view(advisor, case_id, "incident-resolution")
            assert b"SE_PAYMENT_APPLET_LOCKED" in shown_raw
            shown = _parsed(shown_raw)
            assert "sim-secure-element" in _decision(shown).explanation
            assert "SE_PAYMENT_APPLET_LOCKED" in _decision(shown).explanation
            assert "withheld" not in _decision(shown).explanation.split("Findings:")[0]
            assert _withheld(shown, telco) == 0
            watched_shown = await _watch(advisor, case_id, "incident-resolution")
            assert any(b"SE_PAYMENT_APPLET_LOCKED" in raw for raw in watched_shown)
            # Only for the purpose consented.
            assert _leaks([await _view(advisor, case_id, "incident-diagnosis")]) == []

            # After the withdrawal, gone again.
            await advisor.consents.RevokeConsent(
                consents_pb2.RevokeConsentRequest(
                    idempotency_key=f"k-{uuid.uuid4().hex[:12]}",
                    consent_id=granted.consent.consent_id,
                    channel=common_pb2.CHANNEL_PHONE,
                )
            )
            after = [await _view(advisor, case_id, p) for p in EVERY_PURPOSE]
            assert _leaks(after) == []
            assert _leaks(await _watch(advisor, case_id, "incident-resolution")) == []
            assert _withheld(_parsed(after[1]), telco) >= 2
            assert list(_decision(_parsed(after[1])).resolver_ids) == [telco]
            assert _leaks(backend.received) == []

            # The bank's compliance officer reads the log of the case: the decision is
            # there, with the components it was made from, and none of their findings.
            compliance = stack.api(bank, Role.COMPLIANCE)
            query = _raw_unary(compliance, "/coopgate.v1.AuditService/QueryAudit")
            logged = await query(
                audit_pb2.QueryAuditRequest(
                    case_id=case_id, page=common_pb2.PageRequest(page_size=200)
                ),
                timeout=10,
            )
            assert b"ownership.decided" in logged
            assert b"sim-secure-element" in logged
            # The log's entries hold ISO times as text ("…:10.92…Z"): the confidence is
            # looked for as the findings wrote it ("=FAULTY@0.92"), with the codes.
            leaked = (b"SE_PAYMENT_APPLET_LOCKED", b"OTA-7731", b"FAULTY", b"@0.92")
            assert [s for s in leaked if s in logged] == []
    finally:
        bank_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await bank_task
