"""Smart heating: before a cold snap, the heating cannot be switched on from the
energy supplier's app. The thermostat maker (slow to answer), the energy
supplier and the internet provider (not answering) diagnose; the time-to-owner
SLA runs out meanwhile and the case is escalated to a level-2 expert. Played on
a copy of the service whose SLA is counted in seconds."""

from __future__ import annotations

from partners.enums import CaseStatus, Channel, ConsentState, Purpose
from partners.scenarios.stage import (
    Outcome,
    Scenario,
    Stage,
    Timings,
    closed,
    owned_by,
    told,
)
from partners.scenarios.timeline import items, latest_decision

FINDINGS = "diagnostic.findings"
NOTES = "interaction.history"
PURPOSES = (Purpose.INCIDENT_DIAGNOSIS, Purpose.INCIDENT_RESOLUTION)
DRILL = Timings(
    diagnosis={"thermostat": 8, "heating-command": 8, "home-broadband": 3},
    acceptance=10,
    time_to_owner=2,
    time_to_resolution=120,
    confirmation_window=3600,
)


async def play(stage: Stage) -> Outcome:
    cast, say = stage.cast, stage.narrator.step
    energy, thermo, isp = cast["energy"], cast["thermostat"], cast["isp"]
    service_id = await stage.service("smart-heating", DRILL)
    say(
        f"Service {service_id}: a copy of smart-heating whose time-to-owner SLA is "
        f"{DRILL.time_to_owner:g} s (instead of 1 h), so a breach shows within the demo."
    )
    for source in (thermo, isp):
        await stage.agree(service_id, source, energy, (FINDINGS, NOTES), PURPOSES)

    customer = stage.customer(energy)
    app = stage.client(energy, "partner", "energy-app-bot")
    say(f"A cold snap is forecast; {customer} cannot switch the heating on from {energy}'s app.")
    opened = await app.open_case(
        service_id=service_id,
        customer_local_id=customer,
        channel=Channel.APP,
        summary="The heating does not start when I switch it on in the app; -6 °C tonight.",
        author_id="energy-app-bot",
    )
    case_id = opened.case_id
    advisor = stage.client(energy, "advisor", "hugo.bernard@energy")
    say(f"{case_id} opened from the app; the advisor asks the customer to share diagnostics.")
    for source in (thermo, isp):
        await advisor.request_consent(
            case_id,
            source_partner_id=source,
            categories=(FINDINGS, NOTES),
            purposes=PURPOSES,
            reason=f"to see {source}'s diagnosis of your heating problem",
        )

    async def both_given() -> bool:
        given = await advisor.list_consents(customer_local_id=customer, state=ConsentState.GIVEN)
        return {c.source_partner_id for c in given} >= {thermo, isp}

    await stage.until("the customer's answers to the consent prompts", both_given)
    say("The customer agreed in the app to both prompts.")

    escalated = await stage.view_when(
        advisor, case_id, "the SLA escalation", lambda v: bool(items(v, "escalation"))
    )
    reason = items(escalated, "escalation")[0].escalation
    say(f"Escalation: {reason.reason} → a level-2 expert of {reason.expert_partner_id} joins.")
    owned = await stage.view_when(advisor, case_id, f"{energy} to own the case", owned_by(energy))
    decision = latest_decision(owned)
    if decision is not None:
        stage.narrator.decision(decision)
    repaired = await stage.view_when(
        advisor, case_id, f"{thermo}'s repair note", lambda v: bool(items(v, "interaction", thermo))
    )
    note = items(repaired, "interaction", thermo)[-1].interaction.summary
    say(f"{thermo} (resolver) reports: {note}")
    await advisor.resolve_case(
        case_id, resolution="The thermostat maker renewed its relay certificate; heating is on."
    )
    await stage.view_when(advisor, case_id, "the customer to hear it is resolved", told("resolved"))
    say("The house warms up; the customer confirms in the app.")
    await app.confirm_resolution(case_id)
    final = await stage.view_when(advisor, case_id, "the case to close", closed)
    stage.narrator.view("Closed: the combined view", final, reader=f"{energy} advisor (owner)")
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
    )


SCENARIO = Scenario(
    name="smart-heating",
    title="Heating that cannot be switched on remotely",
    story="a slow thermostat maker, a silent internet provider, an SLA breach, a level-2 expert",
    companies=("energy", "thermostat", "isp"),
    faults={"thermostat": ("relay-cert-expired", "slow:2.5"), "isp": ("silent",)},
    play=play,
)
