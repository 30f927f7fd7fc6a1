"""The three scenarios end to end: the real gateway, the real incident workflow on
the Temporal dev server, the reference backends over gRPC with mTLS, each
playing a fresh cast on its own copy of the service."""

from __future__ import annotations

import logging

import pytest

from partners import (
    CaseStatus,
    Channel,
    FailedPrecondition,
    FindingStatus,
    InvalidArgument,
    ParticipantRole,
)
from partners.reference import ReferenceBackend
from partners.scenarios import SCENARIOS, Stage, perform
from partners.scenarios.timeline import items, withheld
from tests.partners.backends import eventually, running_backends


async def told(backend: ReferenceBackend, case_id: str) -> None:
    """Until the backend has shown the customer the case's closing notification."""
    await eventually(
        lambda: any(s.case_id == case_id and s.milestone == "closed" for s in backend.shown),
        f"{backend.partner_id} tells the customer {case_id} is closed",
    )


async def test_nfc_payment_bank_keeps_the_customer_the_operator_fixes_the_sim(
    stage: Stage, caplog: pytest.LogCaptureFixture
) -> None:
    scenario = SCENARIOS["nfc-payment"]
    bank, telco = stage.cast["bank"], stage.cast["operator"]
    lines: list[str] = []
    caplog.set_level(logging.WARNING, logger="partners.work")
    async with running_backends(stage, scenario.companies, scenario.faults, lines) as backends:
        outcome = await perform(scenario, stage)
        await told(backends["bank"], outcome.case_id)

    assert outcome.status == CaseStatus.CLOSED
    assert outcome.owner == bank
    assert outcome.resolvers == (telco,)
    assert outcome.decision is not None
    assert outcome.decision.rule == "single-faulty-component"
    assert "sim-secure-element" in outcome.decision.explanation
    assert "SE_PAYMENT_APPLET_LOCKED" in outcome.decision.explanation
    assert outcome.escalations == ()
    # The consent, and only the consent, shows the bank the operator's finding: withheld
    # are the finding and its part in the ownership decision's explanation.
    assert outcome.consent is not None
    assert outcome.consent.withheld_before == 2
    assert outcome.consent.shown_with_consent == 1
    assert outcome.consent.withheld_after_withdrawal == 2
    telco_findings = items(outcome.owner_view, "finding", telco)
    assert [f.finding.fault_code for f in telco_findings] == ["SE_PAYMENT_APPLET_LOCKED"]
    after = outcome.views["after withdrawal"]
    assert items(after, "finding", telco) == []
    assert items(after, "interaction", telco) == []
    assert withheld(after, telco) == 3
    # Other partners' findings stay withheld from the bank, in the decision too: no
    # agreement covers them.
    assert withheld(outcome.owner_view, stage.cast["acquirer"], "diagnostic.findings") == 2
    assert "payment-terminal" not in outcome.decision.explanation
    # The operator, as resolver, repaired its SIM and said so on the case.
    assert outcome.case_id in backends["operator"].repaired
    assert backends["operator"].model.batch_applets["payment"] == "personalised"  # type: ignore[attr-defined]
    # Every notification reached the customer by phone, through the bank.
    shown = [s for s in backends["bank"].shown if s.case_id == outcome.case_id]
    assert {s.channel for s in shown} == {Channel.PHONE}
    assert [s.milestone for s in shown][-2:] == ["resolved", "closed"]
    assert all(s.customer_local_id == outcome.customer_local_id for s in shown)
    # The acquirer answered garbage first: refused with named fields, then answered.
    refusal = backends["acquirer"].refused[0]
    assert isinstance(refusal, InvalidArgument)
    assert {v.field for v in refusal.violations} >= {"finding.status", "finding.confidence"}
    acquirer = [
        i.finding
        for i in items(outcome.owner_view, "finding")
        if i.finding.component == "payment-terminal"
    ]
    assert acquirer == []  # withheld from the bank, but answered in time:
    assert outcome.case_id in backends["acquirer"].diagnoses
    # What the injected faults made the partners do reads as such, never as an error:
    # the refused garbage, the SDK's redelivery, the operator's locked applet.
    acquirer_lines = [line for line in lines if line.startswith(stage.cast["acquirer"])]
    assert any("injected" in line and "refused it as it should" in line for line in acquirer_lines)
    assert not [line for line in lines if line.split()[2] in ("refused", "fault")]
    redelivered = [r.getMessage() for r in caplog.records if "handler failed" in r.getMessage()]
    assert redelivered
    assert all("injected fault garbage (expected, a drill)" in m for m in redelivered)
    telco_found = [line for line in lines if f"{telco} " in line and "SE_PAYMENT" in line]
    assert any("[injected fault: payment-applet-locked]" in line for line in telco_found)


async def test_smart_heating_sla_breach_escalates_to_a_level_two_expert(stage: Stage) -> None:
    scenario = SCENARIOS["smart-heating"]
    energy, thermo, isp = stage.cast["energy"], stage.cast["thermostat"], stage.cast["isp"]
    catalogue = await stage.admin.list_services()
    async with running_backends(stage, scenario.companies, scenario.faults) as backends:
        outcome = await perform(scenario, stage)
        await told(backends["energy"], outcome.case_id)

    view = outcome.owner_view
    assert outcome.service_id == f"smart-heating-{stage.cast.tag}"
    # The scenario's copy of the service (short SLAs) is retired at its end: the
    # catalogue is as it was, the copy's agreements ended, and it takes no new case.
    assert await stage.admin.list_services() == catalogue
    everything = await stage.admin.list_services(include_retired=True)
    copy = next(s for s in everything if s.service_id == outcome.service_id)
    assert copy.HasField("retired_at")
    agreements = await stage.admin.list_sharing_agreements(service_id=outcome.service_id)
    assert len(agreements) == 2
    assert all(a.valid_until.ToDatetime() <= copy.retired_at.ToDatetime() for a in agreements)
    assert all(a.HasField("valid_until") for a in agreements)
    with pytest.raises(FailedPrecondition, match="retired"):
        await stage.client(energy, "advisor").open_case(
            service_id=outcome.service_id,
            customer_local_id=outcome.customer_local_id,
            channel=Channel.APP,
            summary="still cold",
        )
    assert "Retired " + outcome.service_id in " ".join(stage.narrator.lines)  # type: ignore[attr-defined]
    assert outcome.status == CaseStatus.CLOSED
    assert outcome.owner == energy
    assert outcome.resolvers == (thermo,)
    assert outcome.escalations == ("SLA time-to-owner breached",)
    escalation = items(view, "escalation")[0].escalation
    assert escalation.expert_partner_id == energy
    experts = [p for p in view.participants if ParticipantRole.of(p.role) == ParticipantRole.EXPERT]
    assert [(p.partner_id, p.person_id) for p in experts] == [(energy, "level-2")]
    # The escalation came before anybody owned the case.
    owned_at = next(
        i.sequence
        for i in items(view, "status_change")
        if CaseStatus.of(i.status_change.status) == CaseStatus.OWNED
    )
    assert items(view, "escalation")[0].sequence < owned_at
    # The silent internet provider is recorded as such; the slow thermostat maker's
    # finding arrived (the customer's consent, answered through the app, shows it).
    statuses = {
        i.finding.partner_id: FindingStatus.of(i.finding.status) for i in items(view, "finding")
    }
    assert statuses[isp] == FindingStatus.UNRESPONSIVE
    assert statuses[thermo] == FindingStatus.FAULTY
    assert len(backends["energy"].consents) == 2
    assert all(agreed for _, agreed in backends["energy"].consents)
    assert any(n.kind == "escalation" for n in backends["thermostat"].notices)
    milestones = [s.milestone for s in backends["energy"].shown if s.case_id == outcome.case_id]
    assert "escalated" in milestones
    assert "waiting-on-partner" in milestones
    assert {s.channel for s in backends["energy"].shown} == {Channel.APP}


async def test_transit_pass_store_advisor_sees_the_whole_history(stage: Stage) -> None:
    scenario = SCENARIOS["transit-pass"]
    transit, handset = stage.cast["transport"], stage.cast["handset"]
    async with running_backends(stage, scenario.companies, scenario.faults) as backends:
        outcome = await perform(scenario, stage)
        await told(backends["transport"], outcome.case_id)

    assert outcome.status == CaseStatus.CLOSED
    assert outcome.owner == transit
    assert outcome.resolvers == (handset,)
    store = outcome.views["store advisor"]
    channels = [Channel.of(i.interaction.channel) for i in items(store, "interaction", transit)]
    assert channels == [Channel.APP, Channel.STORE]
    assert [i.finding.fault_code for i in items(store, "finding", handset)] == ["NFC_FW_NFC_1182"]
    assert items(store, "ownership_decision")
    told_in_app = [Channel.of(i.notification.channel) for i in items(store, "notification")]
    assert told_in_app
    assert set(told_in_app) == {Channel.APP}
    # After the customer moved to the store, the customer hears back at the store.
    shown = [s for s in backends["transport"].shown if s.case_id == outcome.case_id]
    assert shown[0].channel == Channel.APP
    assert [s.channel for s in shown if s.milestone in ("resolved", "closed")] == [
        Channel.STORE,
        Channel.STORE,
    ]
    # The handset maker dropped its stream on every new item and still did its part.
    handset_backend = backends["handset"]
    assert handset_backend.subscription is not None
    assert handset_backend.subscription.stats.subscriptions >= 2
    assert outcome.case_id in handset_backend.repaired
