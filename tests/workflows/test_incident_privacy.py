"""What the case workflow keeps of the customer: nothing. Under the time-skipping test
server, with the gateway's real activities on a real SQLite store: the customer's id,
the case summary, an interaction and the owner's resolution, each with a marker, driven
to a closed case; no event of the workflow's history holds a marker (its bytes as
Temporal stores them, not a JSON rendering that would base64-encode payloads), while
the customer was told the resolution in words composed by the gateway. And an erased
customer's case ends its workflow: nobody is told anything more, and the log says so.
OpenCase hashes the customer's local id once."""

from __future__ import annotations

import json
import uuid
from collections import Counter

from coopgate.v1 import cases_pb2, common_pb2, identity_pb2
from sqlalchemy import select
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory

from gateway.core.caller import Caller, Role
from gateway.store.localids import LocalIdIndex
from gateway.store.schema import audit_entries
from tests.workflows.driver import Incident, asked
from tests.workflows.test_incident_timeskipping import NFC, all_answer
from workflows import IncidentWorkflow


def _markers() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {
        "local id": f"LOCALID{tag}",
        "summary": f"SUMMARY{tag}",
        "interaction": f"INTERACTION{tag}",
        "resolution": f"RESOLUTION{tag}",
    }


async def test_the_history_holds_no_customer_text_the_customer_is_told_in_clean_words(
    incident: Incident,
) -> None:
    markers = _markers()
    await incident.open(
        "bank-a",
        "nfc-payment",
        customer=f"cust-{markers['local id']}",
        summary=f"the card is refused {markers['summary']}",
    )
    await incident.runtime.domain.cases.intake.append_interaction(
        incident.caller("bank-a"),
        cases_pb2.AppendInteractionRequest(
            idempotency_key=uuid.uuid4().hex,
            case_id=incident.case_id,
            interaction=cases_pb2.Interaction(
                channel=common_pb2.CHANNEL_APP,
                summary=f"customer called back {markers['interaction']}",
            ),
        ),
    )
    await all_answer(incident, {"sim-secure-element": 0.92}, NFC)
    await incident.answer_offer("bank-a", accept=True)
    resolution = f"  The SIM applet was reinstalled {markers['resolution']}\n"
    await incident.resolve("bank-a", resolution)
    await incident.confirm("bank-a")
    handle = incident.env.client.get_workflow_handle_for(IncidentWorkflow.run, incident.case_id)
    assert (await handle.result()).status == "CLOSED"

    history = await handle.fetch_history()
    found = {
        name: [
            EventType.Name(e.event_type)
            for e in history.events
            if marker.encode() in e.SerializeToString()
        ]
        for name, marker in markers.items()
    }
    assert found == {name: [] for name in markers}, found
    # The markers are found where they should be, so the search could find them.
    view = await incident.view("bank-a")
    notes = [i.notification for i in view.timeline if i.HasField("notification")]
    assert [n.milestone for n in notes] == [
        "received",
        "diagnosing",
        "owner-assigned",
        "resolved",
        "closed",
    ]
    for note in notes:
        assert note.message == note.message.strip(), note.message
        assert "  " not in note.message, note.message
    (resolved,) = [n.message for n in notes if n.milestone == "resolved"]
    assert resolved == (
        f"Your problem is solved: The SIM applet was reinstalled {markers['resolution']}. "
        "Tell us if it works again, or if it does not."
    )
    (owner,) = [n.message for n in notes if n.milestone == "owner-assigned"]
    assert owner == "bank-a is now your single point of contact for this problem."
    notices = [
        w.customer_notification
        for w in await incident.work("bank-a")
        if w.HasField("customer_notification")
    ]
    assert {n.message for n in notices} == {n.message for n in notes}
    assert {n.customer_local_id for n in notices} == {incident.customer}


async def test_an_erased_customers_case_ends_its_workflow_and_nobody_is_told_more(
    incident: Incident,
) -> None:
    await incident.open("bank-a", "nfc-payment")
    await all_answer(incident, {"sim-secure-element": 0.92}, NFC)
    await incident.answer_offer("bank-a", accept=True)
    await incident.until(lambda s: s.status == "OWNED")
    handle = incident.env.client.get_workflow_handle_for(IncidentWorkflow.run, incident.case_id)
    before = len((await handle.fetch_history()).events)

    erased = await incident.runtime.domain.erasure.erase(
        Caller("bank-a", Role.ADVISOR, "bank-a-advisor"),
        identity_pb2.EraseCustomerRequest(
            idempotency_key=uuid.uuid4().hex, customer_local_id=incident.customer
        ),
    )
    assert erased.erased_cases == 1
    outcome = await handle.result()
    assert (outcome.case_id, outcome.status) == (incident.case_id, "ERASED")

    # After the erasure the run asked for nothing but the record of its end: no status,
    # no notification, no partner work.
    events = (await handle.fetch_history()).events[before:]
    done = asked(WorkflowHistory(incident.case_id, events))
    done.pop("run_steps", None)  # the batch it was asked in (coarse runs)
    assert done == Counter({"record_case_erased": 1})
    assert [w for w in await incident.work("bank-a")] == []
    async with incident.runtime.store.read() as conn:
        rows = (
            await conn.execute(
                select(audit_entries.c.actor_partner_id, audit_entries.c.canonical).where(
                    audit_entries.c.case_id == incident.case_id,
                    audit_entries.c.kind == "erasure",
                )
            )
        ).all()
    ended = [json.loads(bytes(r.canonical)) for r in rows]
    ended = [e for e in ended if e.get("action") == "case.workflow_ended"]
    assert len(ended) == 1
    assert ended[0]["details"] == {"why": "customer-request"}


class _CountingIndex(LocalIdIndex):
    """The store's own keyed hash, counting how often a local id is hashed."""

    def __init__(self, inner: LocalIdIndex) -> None:
        self.inner = inner
        self.calls = 0

    def digest(self, partner_id: str, local_id: str) -> bytes:
        self.calls += 1
        return self.inner.digest(partner_id, local_id)


async def test_open_case_hashes_the_local_id_once(incident: Incident) -> None:
    counting = _CountingIndex(incident.runtime.store.local_ids)
    incident.runtime.store.local_ids = counting
    await incident.open("bank-a", "nfc-payment")  # a customer seen for the first time
    assert counting.calls == 1
    await incident.open("bank-a", "nfc-payment", customer=incident.customer)  # known
    assert counting.calls == 2
