"""Transit pass: a pass on the phone is refused at the gate. The customer reports
it in the transit app, then walks into the ticket office mid-case: the store
advisor sees the whole history — the app report, the diagnosis, the decision,
what the customer was told — and, once the customer consents there, the handset
maker's finding too."""

from __future__ import annotations

from partners.enums import AuthorKind, CaseStatus, Channel, Purpose
from partners.scenarios.stage import Outcome, Scenario, Stage, closed, owned_by, told
from partners.scenarios.timeline import items, latest_decision, withheld

FINDINGS = "diagnostic.findings"
NOTES = "interaction.history"
PURPOSES = (Purpose.INCIDENT_RESOLUTION, Purpose.CUSTOMER_CARE)


async def play(stage: Stage) -> Outcome:
    cast, say = stage.cast, stage.narrator.step
    transit, handset = cast["transport"], cast["handset"]
    service_id = await stage.service("transit-pass")
    await stage.agree(service_id, handset, transit, (FINDINGS, NOTES), PURPOSES)

    customer = stage.customer(transit)
    app = stage.client(transit, "partner", "transit-app")
    say(f"{customer}'s phone pass is refused at gate 12; they report it in {transit}'s app.")
    opened = await app.open_case(
        service_id=service_id,
        customer_local_id=customer,
        channel=Channel.APP,
        summary="My phone pass is refused at gate 12, Gare Centrale (3 taps, nothing happens).",
        author_id="transit-app",
    )
    case_id = opened.case_id
    store = stage.client(transit, "advisor", "agent.margaux@gare-centrale")
    # Owned, and the customer told so (in the app): the case's status changes before the
    # workflow sends that notification, which goes to the channel the customer used last.
    owned = await stage.view_when(
        store,
        case_id,
        f"{transit} to own the case, and the customer to hear it in the app",
        lambda view: owned_by(transit)(view) and told("owner-assigned")(view),
    )
    decision = latest_decision(owned)
    if decision is not None:
        stage.narrator.decision(decision)

    say("Still stuck, the customer walks into the Gare Centrale ticket office (app → store).")
    await store.append_interaction(
        case_id,
        channel=Channel.STORE,
        author_kind=AuthorKind.ADVISOR,
        summary="Customer at the ticket office shows the phone pass refused at gate 12; "
        "other passengers pass the gate normally.",
    )
    before = await store.get_case_view(case_id, purpose=Purpose.CUSTOMER_CARE)
    hidden = withheld(before, handset, FINDINGS)
    say(
        f"The store advisor already sees the app report and the diagnosis; {hidden} item(s) "
        f"of {handset}'s findings withheld. The customer agrees, at the counter, to share it."
    )
    await store.grant_consent(
        customer_local_id=customer,
        source_partner_id=handset,
        recipient_partner_ids=[transit],
        categories=(FINDINGS, NOTES),
        purposes=PURPOSES,
        channel=Channel.STORE,
        notice_version="transit-a-privacy-2024-02",
    )
    at_store = await store.get_case_view(case_id, purpose=Purpose.CUSTOMER_CARE)
    stage.narrator.view("What the store advisor sees", at_store, reader=f"{transit} ticket office")
    repaired = await stage.view_when(
        store, case_id, f"{handset}'s repair note", lambda v: bool(items(v, "interaction", handset))
    )
    note = items(repaired, "interaction", handset)[-1].interaction.summary
    say(f"{handset} (resolver) reports: {note}")
    await store.resolve_case(
        case_id,
        resolution="NFC firmware updated on the phone; the pass opens the ticket-office gate.",
    )
    await stage.view_when(store, case_id, "the customer to hear it is resolved", told("resolved"))
    say("The customer passes the gate and confirms at the counter.")
    await store.confirm_resolution(case_id)
    final = await stage.view_when(store, case_id, "the case to close", closed)
    stage.narrator.view(
        "Closed: the combined view", final, reader=f"{transit} ticket office (owner)"
    )
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
        views={"store advisor": at_store},
    )


SCENARIO = Scenario(
    name="transit-pass",
    title="A phone transit pass refused at the gate",
    story="the customer changes channel, app → ticket office, and the thread is not broken",
    companies=("transport", "handset", "operator"),
    faults={"handset": ("firmware-regression", "drop-stream")},
    play=play,
)
