"""NFC payment: the customer cannot pay by phone at a restaurant and calls their
bank. The SIM's secure element is at fault: the operator resolves, the bank
keeps the relationship, and the customer's consent (given by phone at the bank)
is what lets the bank's advisor see the operator's finding — until it is withdrawn."""

from __future__ import annotations

from partners.enums import CaseStatus, Channel, Purpose
from partners.scenarios.stage import (
    ConsentEffect,
    Outcome,
    Scenario,
    Stage,
    closed,
    owned_by,
    told,
)
from partners.scenarios.timeline import items, latest_decision, withheld

FINDINGS = "diagnostic.findings"
NOTES = "interaction.history"
PURPOSES = (Purpose.INCIDENT_DIAGNOSIS, Purpose.INCIDENT_RESOLUTION)


async def play(stage: Stage) -> Outcome:
    cast, say = stage.cast, stage.narrator.step
    bank, telco = cast["bank"], cast["operator"]
    service_id = await stage.service("nfc-payment")
    await stage.agree(service_id, telco, bank, (FINDINGS, NOTES), PURPOSES)
    say(f"The administrator records the sharing agreement {telco} → {bank} ({FINDINGS}).")

    customer = stage.customer(bank)
    advisor = stage.client(bank, "advisor", "lea.martin@bank")
    say(f"Customer {customer} cannot pay by phone at a restaurant and calls {bank}.")
    opened = await advisor.open_case(
        service_id=service_id,
        customer_local_id=customer,
        channel=Channel.PHONE,
        summary="Contactless payment with my phone is refused at a restaurant terminal; "
        "my physical card works.",
    )
    case_id = opened.case_id
    say(f"{bank}'s advisor opened {case_id}; every company of the chain is asked to check.")

    diagnosed = await stage.view_when(
        advisor, case_id, "the ownership decision", lambda v: latest_decision(v) is not None
    )
    before = withheld(diagnosed, telco, FINDINGS)
    stage.narrator.view("Before consent", diagnosed, reader=f"{bank} advisor", only_from=telco)
    say(
        f"{before} item(s) of {telco}'s findings withheld (its finding, and what the ownership "
        "decision says of it): the advisor asks the customer whether "
        f"{bank} may see {telco}'s diagnosis of this incident. The customer agrees by phone."
    )
    consent = await advisor.grant_consent(
        customer_local_id=customer,
        source_partner_id=telco,
        recipient_partner_ids=[bank],
        categories=(FINDINGS, NOTES),
        purposes=PURPOSES,
        channel=Channel.PHONE,
        notice_version="bank-a-privacy-2024-06",
    )
    say(f"Consent {consent.consent.consent_id} recorded, signed receipt {consent.receipt.key_id}.")
    with_consent = await advisor.get_case_view(case_id, purpose=Purpose.INCIDENT_RESOLUTION)
    shown = len(items(with_consent, "finding", telco))
    stage.narrator.view(
        "With the customer's consent", with_consent, reader=f"{bank} advisor", only_from=telco
    )

    owned = await stage.view_when(advisor, case_id, f"{bank} to own the case", owned_by(bank))
    decision = latest_decision(owned)
    if decision is not None:
        stage.narrator.decision(decision)
    repaired = await stage.view_when(
        advisor,
        case_id,
        f"{telco}'s repair note",
        lambda v: bool(items(v, "interaction", telco)),
    )
    note = items(repaired, "interaction", telco)[-1].interaction.summary
    say(f"{telco} (resolver) reports: {note}")
    await advisor.resolve_case(
        case_id, resolution="Telco A re-personalised the SIM's payment applet over the air."
    )
    await stage.view_when(advisor, case_id, "the customer to hear it is resolved", told("resolved"))
    say("The customer restarts the phone, pays at the restaurant, and confirms by phone.")
    await advisor.confirm_resolution(case_id)
    final = await stage.view_when(advisor, case_id, "the case to close", closed)

    stage.narrator.view("Closed: the combined view", final, reader=f"{bank} advisor (owner)")
    say("Later, the customer withdraws the consent (by phone at the bank).")
    await advisor.revoke_consent(consent.consent.consent_id, channel=Channel.PHONE)
    after = await advisor.get_case_view(case_id, purpose=Purpose.INCIDENT_RESOLUTION)
    say(
        f"Next read: {withheld(after, telco)} item(s) from {telco} withheld again "
        f"({len(items(after, 'finding', telco))} of its findings shown)."
    )
    stage.narrator.view("After the withdrawal", after, reader=f"{bank} advisor", only_from=telco)
    return Outcome(
        scenario=SCENARIO.name,
        case_id=case_id,
        service_id=service_id,
        customer_local_id=customer,
        status=CaseStatus.of(final.header.status),
        owner=final.header.relationship_owner_id,
        resolvers=tuple(final.header.resolver_ids),
        decision=latest_decision(final),
        escalations=tuple(i.escalation.reason for i in items(final, "escalation")),
        owner_view=final,
        consent=ConsentEffect(
            source_partner_id=telco,
            category=FINDINGS,
            withheld_before=before,
            shown_with_consent=shown,
            withheld_after_withdrawal=withheld(after, telco, FINDINGS),
        ),
        views={"after withdrawal": after},
    )


SCENARIO = Scenario(
    name="nfc-payment",
    title="Paying by phone at a restaurant",
    story="the SIM's secure element is at fault; the bank keeps the customer, the operator fixes",
    companies=("bank", "operator", "acquirer", "handset"),
    faults={"operator": ("payment-applet-locked",), "acquirer": ("garbage",)},
    play=play,
)
