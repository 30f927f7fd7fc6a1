"""IncidentWorkflow under the time-skipping test server, with the gateway's real
activities on a real SQLite store: ownership rules, decline and timeout
chains, fallback, unresponsive partners, SLA escalation after hours of
simulated time, late findings, reopen with continue-as-new, and replay."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from coopgate.v1 import admin_pb2, cases_pb2
from google.protobuf import duration_pb2
from sqlalchemy import select
from temporalio.client import WorkflowExecutionStatus
from temporalio.worker import Replayer

from gateway.core.errors import FailedPrecondition
from gateway.orchestration.converter import DATA_CONVERTER
from gateway.orchestration.temporal import WORKER_OPTIONS
from gateway.store.schema import case_kpis, case_participants
from tests.workflows.driver import ADMIN, Incident
from workflows import IncidentWorkflow

FAULTY = cases_pb2.FINDING_STATUS_FAULTY
OK = cases_pb2.FINDING_STATUS_OK
DEGRADED = cases_pb2.FINDING_STATUS_DEGRADED

NFC = {
    "sim-secure-element": "telco-a",
    "card-token": "bank-a",
    "payment-terminal": "acquirer-a",
    "nfc-stack": "handset-a",
}


async def all_answer(incident: Incident, faulty: dict[str, float], chain: dict[str, str]) -> None:
    for component, partner in chain.items():
        if component in faulty:
            await incident.finding(partner, component, FAULTY, faulty[component], "FAULT")
        else:
            await incident.finding(partner, component, OK, 0.95)


def decisions(view: cases_pb2.CaseView) -> list[cases_pb2.OwnershipDecision]:
    return [i.ownership_decision for i in view.timeline if i.HasField("ownership_decision")]


def milestones(view: cases_pb2.CaseView) -> list[str]:
    return [i.notification.milestone for i in view.timeline if i.HasField("notification")]


async def test_single_fault_resolved_by_its_owner_relationship_kept_by_first_contact(
    incident: Incident,
) -> None:
    await incident.open("bank-a", "nfc-payment")
    await all_answer(incident, {"sim-secure-element": 0.92}, NFC)
    state = await incident.until(lambda s: s.decision is not None)
    assert state.decision is not None
    assert state.decision.rule == "single-faulty-component"
    assert state.decision.resolver_ids == ("telco-a",)
    assert state.decision.owner_candidates[0] == "bank-a"
    await incident.answer_offer("bank-a", accept=True)
    await incident.resolve("bank-a")
    await incident.confirm("bank-a")
    handle = incident.env.client.get_workflow_handle_for(IncidentWorkflow.run, incident.case_id)
    outcome = await handle.result()
    assert (outcome.status, outcome.owner_id) == ("CLOSED", "bank-a")

    view = await incident.view("bank-a")
    assert view.header.status == cases_pb2.CASE_STATUS_CLOSED
    assert view.header.relationship_owner_id == "bank-a"
    assert list(view.header.resolver_ids) == ["telco-a"]
    # The operator, whose finding it cites, reads the decision's explanation whole ...
    (decision,) = decisions(await incident.view("telco-a"))
    assert (
        "sim-secure-element (telco-a) is FAULTY (FAULT) at confidence 0.92" in decision.explanation
    )
    # ... the bank, without the customer's consent, its rule, owner and resolvers only.
    (decision,) = decisions(view)
    assert (decision.rule, decision.relationship_owner_id) == ("single-faulty-component", "bank-a")
    assert list(decision.resolver_ids) == ["telco-a"]
    assert decision.explanation.startswith("telco-a resolves (rule single-faulty-component")
    assert "sim-secure-element" not in decision.explanation
    assert "0.92" not in decision.explanation
    assert "card-token: OK 0.95" in decision.explanation
    assert milestones(view) == [
        "received",
        "diagnosing",
        "owner-assigned",
        "resolved",
        "closed",
    ]
    async with incident.runtime.store.read() as conn:
        kpi = (
            await conn.execute(select(case_kpis).where(case_kpis.c.case_id == incident.case_id))
        ).one()
    assert kpi.first_contact_resolution is True
    assert kpi.sla_breaches == 0
    assert set(json.loads(kpi.details)["partner_response_s"]) == set(NFC.values())
    # Every partner got exactly one diagnosis request.
    for partner in NFC.values():
        requests = [w for w in await incident.work(partner) if w.HasField("diagnosis_request")]
        assert len(requests) == 1, partner


async def test_host_named_by_the_service_owns_the_relationship(incident: Incident) -> None:
    await incident.open("thermo-a", "smart-heating")
    chain = {"thermostat": "thermo-a", "heating-command": "energy-a", "home-broadband": "isp-a"}
    await all_answer(incident, {"home-broadband": 0.8}, chain)
    state = await incident.until(lambda s: s.current_offer_partner_id != "")
    assert state.decision is not None
    assert state.decision.owner_candidates[0] == "energy-a"
    assert state.decision.resolver_ids == ("isp-a",)
    assert "names energy-a as host" in state.decision.explanation
    await incident.answer_offer("energy-a", accept=True)
    state = await incident.until(lambda s: s.status == "OWNED")
    assert state.owner_id == "energy-a"


async def test_several_faults_make_several_resolvers(incident: Incident) -> None:
    await incident.open("bank-a", "nfc-payment")
    await all_answer(incident, {"sim-secure-element": 0.9, "nfc-stack": 0.75}, NFC)
    state = await incident.until(lambda s: s.decision is not None)
    assert state.decision is not None
    assert state.decision.rule == "multiple-faulty-components"
    assert state.decision.resolver_ids == ("telco-a", "handset-a")


async def test_decline_then_timeout_falls_back_to_first_contact(incident: Incident) -> None:
    await incident.open("bank-a", "nfc-payment")
    await all_answer(incident, {"sim-secure-element": 0.9}, NFC)
    await incident.answer_offer("bank-a", accept=False)
    state = await incident.until(lambda s: s.current_offer_partner_id == "telco-a")
    assert state.status == "AWAITING_OWNER"
    await incident.env.sleep(timedelta(minutes=20))  # telco-a never answers its offer
    state = await incident.until(lambda s: s.status == "OWNED")
    assert state.owner_id == "bank-a"
    view = await incident.view("bank-a")
    assert view.header.relationship_owner_id == "bank-a"
    assert [w.ownership_offer.offer_id != "" for w in await incident.work("telco-a")].count(
        True
    ) == 1


async def test_silent_partner_is_unresponsive_and_nothing_conclusive_escalates(
    incident: Incident,
) -> None:
    await incident.open("bank-a", "nfc-payment")
    for component, partner in NFC.items():
        if partner != "telco-a":
            await incident.finding(partner, component, OK, 0.9)
    await incident.env.sleep(timedelta(minutes=3))  # past every diagnosis deadline
    state = await incident.until(lambda s: s.decision is not None)
    assert state.decision is not None
    assert state.decision.rule == "nothing-conclusive"
    assert state.decision.escalate
    statuses = {f.component: f.status for f in state.findings}
    assert statuses["sim-secure-element"] == "UNRESPONSIVE"
    view = await incident.view("bank-a")
    assert any(i.HasField("escalation") for i in view.timeline)
    assert "waiting-on-partner" in milestones(view)

    # A late finding still counts: the operator is now the resolver.
    await incident.answer_offer("bank-a", accept=True)
    await incident.until(lambda s: s.status == "OWNED")
    await incident.finding("telco-a", "sim-secure-element", FAULTY, 0.9, "SE_LOCKED")
    state = await incident.until(
        lambda s: s.decision is not None and s.decision.resolver_ids == ("telco-a",)
    )
    assert state.decision is not None
    assert state.decision.rule == "single-faulty-component"
    await incident.view_until("bank-a", lambda v: list(v.header.resolver_ids) == ["telco-a"])


async def test_sla_breach_escalates_to_a_level_two_expert_after_hours(
    incident: Incident,
) -> None:
    await incident.open("bank-a", "nfc-payment")
    await all_answer(incident, {"sim-secure-element": 0.9}, NFC)
    await incident.answer_offer("bank-a", accept=True)
    await incident.until(lambda s: s.status == "OWNED")
    await incident.env.sleep(timedelta(hours=5))  # time-to-resolution is 4 h
    view = await incident.view("bank-a")
    escalations = [i.escalation for i in view.timeline if i.HasField("escalation")]
    assert [e.reason for e in escalations] == ["SLA time-to-resolution breached"]
    assert escalations[0].expert_partner_id == "bank-a"
    async with incident.runtime.store.read() as conn:
        experts = (
            await conn.execute(
                select(case_participants.c.partner_id).where(
                    case_participants.c.case_id == incident.case_id,
                    case_participants.c.role == cases_pb2.PARTICIPANT_ROLE_EXPERT,
                )
            )
        ).scalars()
        assert list(experts) == ["bank-a"]
    for partner in NFC.values():  # every participant is told
        notices = [w.case_notice.kind for w in await incident.work(partner)]
        assert "escalation" in notices, partner


async def test_time_to_owner_breach_escalates_while_nobody_owns(incident: Incident) -> None:
    await incident.open("bank-a", "nfc-fast-sla")
    await all_answer(incident, {"sim-secure-element": 0.9}, NFC)
    await incident.until(lambda s: s.current_offer_partner_id == "bank-a")
    await incident.env.sleep(timedelta(minutes=3))
    view = await incident.view("bank-a")
    reasons = [i.escalation.reason for i in view.timeline if i.HasField("escalation")]
    assert "SLA time-to-owner breached" in reasons


async def test_reopen_continues_as_new_and_a_new_report_reopens_instead_of_duplicating(
    incident: Incident,
) -> None:
    await incident.open("bank-a", "nfc-payment")
    await all_answer(incident, {"sim-secure-element": 0.9}, NFC)
    await incident.answer_offer("bank-a", accept=True)
    await incident.resolve("bank-a")
    await incident.until(lambda s: s.status == "RESOLVED")
    first_run = (await incident.env.client.get_workflow_handle(incident.case_id).describe()).run_id

    # The customer calls again about the same service: same case, reopened.
    again = await incident.open("bank-a", "nfc-payment", customer=incident.customer)
    assert again == incident.case_id
    state = await incident.until(lambda s: s.round == 2 and s.status == "DIAGNOSING")
    assert state.owner_id == "bank-a"
    description = await incident.env.client.get_workflow_handle(incident.case_id).describe()
    assert description.run_id != first_run
    assert description.status == WorkflowExecutionStatus.RUNNING

    await all_answer(incident, {"sim-secure-element": 0.9}, NFC)
    await incident.resolve("bank-a")
    await incident.confirm("bank-a")
    outcome = await incident.env.client.get_workflow_handle_for(
        IncidentWorkflow.run, incident.case_id
    ).result()
    assert outcome.status == "CLOSED"
    async with incident.runtime.store.read() as conn:
        kpi = (
            await conn.execute(select(case_kpis).where(case_kpis.c.case_id == incident.case_id))
        ).one()
    assert (kpi.reopens, kpi.first_contact_resolution) == (1, False)

    # The workflow's histories, both runs, hold ids only: not the customer's words (the
    # summary that reopened the case), not the customer's id (erasure cannot reach them).
    for run_id in (first_run, description.run_id):
        history = await incident.env.client.get_workflow_handle(
            incident.case_id, run_id=run_id
        ).fetch_history()
        recorded = b"".join(event.SerializeToString() for event in history.events)
        assert b"nfc-payment" in recorded  # payloads are there to be searched
        assert b"it does not work" not in recorded
        assert incident.customer.encode() not in recorded


async def test_wrong_answers_are_refused_and_duplicates_are_harmless(
    incident: Incident,
) -> None:
    await incident.open("bank-a", "nfc-payment")
    await all_answer(incident, {"sim-secure-element": 0.9}, NFC)
    await all_answer(incident, {"sim-secure-element": 0.9}, NFC)  # delivered twice
    state = await incident.until(lambda s: s.current_offer_partner_id == "bank-a")
    with pytest.raises(FailedPrecondition):
        await incident.runtime.domain.cases.progress.answer_offer(
            incident.caller("telco-a"),
            cases_pb2.AcceptOwnershipRequest(
                idempotency_key=uuid.uuid4().hex,
                case_id=incident.case_id,
                offer_id=state.current_offer_id,
            ),
        )
    with pytest.raises(FailedPrecondition):
        await incident.runtime.domain.cases.progress.resolve(
            incident.caller("telco-a"),
            cases_pb2.ResolveCaseRequest(
                idempotency_key=uuid.uuid4().hex, case_id=incident.case_id, resolution="x"
            ),
        )
    await incident.answer_offer("bank-a", accept=True)
    await incident.until(lambda s: s.status == "OWNED")
    view = await incident.view("bank-a")
    assert len(decisions(view)) == 1


async def test_recorded_history_replays_deterministically(incident: Incident) -> None:
    await incident.open("bank-a", "nfc-payment")
    await all_answer(incident, {"sim-secure-element": 0.9}, NFC)
    await incident.answer_offer("bank-a", accept=False)
    await incident.answer_offer("telco-a", accept=True)
    await incident.resolve("telco-a")
    await incident.confirm("bank-a")
    handle = incident.env.client.get_workflow_handle(incident.case_id)
    await handle.result()
    history = await handle.fetch_history()
    # Replayed as the gateway's worker runs it: its data converter and workflow runner.
    replayer = Replayer(
        workflows=[IncidentWorkflow],
        data_converter=DATA_CONVERTER,
        workflow_runner=WORKER_OPTIONS["workflow_runner"],
    )
    await replayer.replay_workflow(history)


async def test_an_agreement_overrides_the_policy_and_the_partners_deadline(
    incident: Incident,
) -> None:
    deadline = duration_pb2.Duration()
    deadline.FromTimedelta(timedelta(minutes=5))
    await incident.runtime.domain.agreements.define_sharing_agreement(
        ADMIN,
        admin_pb2.DefineSharingAgreementRequest(
            idempotency_key=uuid.uuid4().hex,
            agreement=admin_pb2.SharingAgreement(
                agreement_id="agr-sim-host",
                source_partner_id="telco-a",
                recipient_partner_id="bank-a",
                service_id="nfc-payment",
                categories=["diagnostic.findings"],
                purposes=["incident-diagnosis"],
                source_diagnosis_deadline=deadline,
                ownership_override=admin_pb2.OwnershipPolicy(host_partner_id="telco-a"),
            ),
        ),
    )
    await incident.open("bank-a", "nfc-payment")
    for component, partner in NFC.items():
        if partner != "telco-a":
            await incident.finding(partner, component, OK, 0.9)
    await incident.env.sleep(timedelta(minutes=3))  # past the service's 30 s, not the agreed 5 min
    state = await incident.state()
    assert state.decision is None  # still waiting for the operator, within its agreed time
    await incident.finding("telco-a", "sim-secure-element", FAULTY, 0.9, "SE_LOCKED")
    state = await incident.until(lambda s: s.decision is not None)
    assert state.decision is not None
    assert state.decision.owner_candidates[0] == "telco-a"
    assert "agreement agr-sim-host names telco-a as host" in state.decision.explanation
