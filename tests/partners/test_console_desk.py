"""The console's desk keeps what the gateway handed it once: an ownership offer or a
consent prompt is written to the console's inbox before the work stream acknowledges
it, so a console that stops (or crashes) and starts again still shows it, and the
advisor can still answer it. The gateway does not send an acknowledged item again."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from pathlib import Path

import pytest

from partners import Channel
from partners.console.desk import CaseSignals, Desk
from partners.console.inbox import Inbox
from partners.enums import CaseStatus
from partners.items import ConsentPrompt, OwnershipDecision, OwnershipOffer, WorkItem
from partners.scenarios import Stage
from tests.partners.backends import running_backends
from tests.partners.console_stack import (
    PEOPLE,
    Browserless,
    console_for,
    nfc_service,
    sign_in_without_browser,
)


def _offer(case_id: str, deadline: dt.datetime | None) -> OwnershipOffer:
    return OwnershipOffer(
        offer_id=f"{case_id}-offer-1",
        case_id=case_id,
        service_id="nfc-payment",
        deadline=deadline,
        decision=OwnershipDecision(
            decision_id="d-1",
            relationship_owner_id="bank-a",
            resolver_ids=("telco-a", "bank-a"),
            rule="single-faulty-component",
            explanation="telco-a's SIM applet is faulty; l'opérateur résout",
        ),
    )


def _prompt(case_id: str, request_id: str) -> ConsentPrompt:
    return ConsentPrompt(
        consent_request_id=request_id,
        case_id=case_id,
        customer_local_id="cust-42",
        channel=Channel.PHONE,
        source_partner_id="telco-a",
        recipient_partner_id="bank-a",
        categories=("diagnostic.findings",),
        purposes=("incident-resolution",),
        reason="to see telco-a's findings",
    )


def _item(payload: OwnershipOffer | ConsentPrompt) -> WorkItem:
    return WorkItem(
        work_id="w", created_at=dt.datetime.now(dt.UTC), redeliveries=0, payload=payload
    )


async def test_the_desk_reads_back_what_it_kept_and_forgets_what_was_answered(
    tmp_path: Path,
) -> None:
    path = tmp_path / "desk.sqlite"
    desk = Desk(CaseSignals(), Inbox(path))
    now = dt.datetime.now(dt.UTC)
    open_offer = _offer("case-1", now + dt.timedelta(minutes=5))
    await desk.handle(_item(open_offer))
    await desk.handle(_item(_offer("case-2", now - dt.timedelta(seconds=1))))  # past due
    await desk.handle(_item(_prompt("case-1", "cr-1")))
    await desk.handle(_item(_prompt("case-1", "cr-2")))
    await desk.handle(_item(_offer("case-3", None)))
    await desk.handle(_item(_prompt("case-3", "cr-3")))
    await desk.forget("case-3")  # erased at the gateway
    assert desk.inbox is not None
    desk.inbox.close()
    assert path.stat().st_mode & 0o077 == 0  # a prompt names the customer: owner only

    again = Desk(CaseSignals(), Inbox(path))
    assert again.offer("case-1") == open_offer
    assert again.offer("case-2") is None
    assert again.prompts_of("case-1") == [_prompt("case-1", "cr-1"), _prompt("case-1", "cr-2")]
    await again.answered("case-1")
    await again.prompt_answered("case-1", "cr-1")
    assert again.inbox is not None
    again.inbox.close()

    third = Desk(CaseSignals(), Inbox(path))
    assert third.offer("case-1") is None
    assert third.prompts_of("case-1") == [_prompt("case-1", "cr-2")]
    assert third.offer("case-3") is None
    assert third.prompts_of("case-3") == []


async def test_an_item_the_desk_could_not_write_down_is_not_taken(tmp_path: Path) -> None:
    """The handler fails, so the subscription leaves the item unacknowledged and the
    gateway sends it again; the page does not show what a restart would lose."""
    inbox = Inbox(tmp_path / "desk.sqlite")
    desk = Desk(CaseSignals(), inbox)
    inbox.close()
    with pytest.raises(Exception, match="closed"):
        await desk.handle(_item(_offer("case-1", None)))
    assert desk.offer("case-1") is None


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
async def test_an_offer_survives_the_console_restarting(stage: Stage, tmp_path: Path) -> None:
    cast = stage.cast
    bank = cast["bank"]
    service = await nfc_service(stage, diagnosis=2.0, acceptance=120)
    inbox = tmp_path / "console" / "desk.sqlite"
    faults = {"operator": ("payment-applet-locked",)}
    advisor = stage.client(bank, "advisor", "lea")
    # The bank has no backend: its console's desk takes the offer.
    async with running_backends(stage, ("operator", "acquirer", "handset"), faults):
        async with console_for(stage, bank, tmp_path, inbox=inbox):
            opened = await advisor.open_case(
                service_id=service,
                customer_local_id=stage.customer(bank),
                channel=Channel.PHONE,
                summary="Contactless payment refused at a restaurant.",
            )
            case_id = opened.case_id
            async with asyncio.timeout(60):
                while not Inbox(inbox).load(dt.datetime.now(dt.UTC))[0]:
                    await asyncio.sleep(0.2)
        # The first console is gone, and the gateway took its acknowledgement.
        async with console_for(stage, bank, tmp_path, inbox=inbox) as base:
            client = Browserless(int(base.rpartition(":")[2]))
            assert await sign_in_without_browser(client, "lea", PEOPLE["lea"][1]) == 303
            status, _, page = await client.get(f"/cases/{case_id}")
            assert status == 200
            assert "Accept ownership" in page
            offer_id = re.search(r'name="offer_id" value="([^"]+)"', page)
            csrf = re.search(r'name="csrf" value="([^"]+)"', page)
            assert offer_id is not None
            assert csrf is not None
            answer = {"csrf": csrf.group(1), "offer_id": offer_id.group(1), "answer": "accept"}
            status, _, _ = await client.post(f"/cases/{case_id}/ownership", answer)
            assert status == 303
            async with asyncio.timeout(30):
                while True:
                    view = await advisor.get_case_view(case_id, purpose="incident-resolution")
                    if view.header.relationship_owner_id == bank:
                        break
                    await asyncio.sleep(0.2)
            assert CaseStatus.of(view.header.status) == CaseStatus.OWNED
            assert Inbox(inbox).load(dt.datetime.now(dt.UTC))[0] == []
