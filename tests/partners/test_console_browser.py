"""The console in a real browser (Debian's Chromium, driven by Playwright) against the
real stack: an advisor follows a case live — a finding appearing, a withheld item shown
once the customer consents and hidden again when they withdraw, without a reload —
accepts ownership and resolves; a compliance officer finds those reads in the audit log
and verifies the checkpoint; another company's `<script>` is shown as text; the browser
reports no error (a CSP violation would be one)."""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from playwright.async_api import ConsoleMessage, Page, expect

from gateway.api.server import create_server, mark_serving
from gateway.stack import Pki
from partners import Channel, Purpose
from partners.scenarios import Stage
from tests.conftest import Stack
from tests.partners.backends import running_backends
from tests.partners.console_stack import ARTIFACTS, PEOPLE, chromium, console_for, nfc_service

FINDINGS = "diagnostic.findings"
NOTES = "interaction.history"
INJECTED = '<script>window.injected = 1</script><img src=x onerror="window.injected = 2">'
LIVE = 20_000  # ms: a live change must show within this (a few seconds in practice)


async def sign_in(page: Page, base: str, person: str) -> None:
    await page.goto(f"{base}/sign-in")
    await page.get_by_label("Your id").fill(person)
    await page.get_by_label("Password").fill(PEOPLE[person][1])
    await page.get_by_label("Password").press("Enter")  # the keyboard alone signs in


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
async def test_advisor_and_compliance_in_a_browser(stage: Stage, tmp_path: Path) -> None:
    cast = stage.cast
    bank, telco = cast["bank"], cast["operator"]
    service = await nfc_service(stage, diagnosis=3.0, acceptance=60)
    await stage.agree(service, telco, bank, (FINDINGS, NOTES), (Purpose.INCIDENT_RESOLUTION,))
    customer = stage.customer(bank)
    errors: list[str] = []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    faults = {"operator": ("payment-applet-locked",)}
    # The bank's people answer its offers and consent prompts in the console: no bank backend.
    async with (
        running_backends(stage, ("operator", "acquirer", "handset"), faults),
        console_for(stage, bank, tmp_path) as base,
        chromium() as browser,
    ):
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: _error(errors, m))
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        advisor = stage.client(bank, "advisor", "lea")
        opened = await advisor.open_case(
            service_id=service,
            customer_local_id=customer,
            channel=Channel.PHONE,
            summary="Contactless payment with my phone is refused at a restaurant.",
        )
        case_id = opened.case_id

        await sign_in(page, base, "lea")
        await expect(page).to_have_url(re.compile(r"/cases$"))
        await page.get_by_role("link", name=case_id).click()
        await expect(page.locator("#live-status")).to_have_text("Live", timeout=LIVE)
        await page.evaluate("window.unreloaded = true")

        # The bank's own component goes unanswered: its finding (UNRESPONSIVE) arrives live.
        await expect(page.locator("#timeline .k-finding").first).to_be_visible(timeout=LIVE)
        withheld = page.locator("form.withheld", has_text=f"from {telco} ({FINDINGS}) withheld")
        await expect(withheld).to_contain_text("ask the customer", timeout=LIVE)
        company = page.locator(f".company:text-is('{telco}')")
        telco_items = page.locator("#timeline .item", has=company)
        await expect(telco_items).to_have_count(0)

        # Ask the customer: the prompt comes back to the bank's desk and shows live.
        await withheld.get_by_role("button", name="Ask the customer").click()
        prompt = page.locator("form.prompt")
        await expect(prompt).to_contain_text(f"{telco}'s {FINDINGS}", timeout=LIVE)
        await page.evaluate("window.unreloaded = true")
        # The customer agrees in the bank's app: the page shows Telco A's finding, live.
        consent = await advisor.grant_consent(
            customer_local_id=customer,
            source_partner_id=telco,
            recipient_partner_ids=[bank],
            categories=(FINDINGS, NOTES),
            purposes=(Purpose.INCIDENT_RESOLUTION,),
            channel=Channel.APP,
            notice_version="bank-privacy-v1",
        )
        await expect(telco_items.and_(page.locator(".k-finding"))).to_have_count(1, timeout=LIVE)
        await expect(page.locator("#timeline")).to_contain_text("payment", timeout=LIVE)

        # Another company writes markup on the case: it arrives live and reads as text.
        telco_client = stage.client(telco, "partner")
        await telco_client.append_interaction(case_id, channel=Channel.APP, summary=INJECTED)
        await expect(page.locator("#timeline")).to_contain_text(INJECTED, timeout=LIVE)
        assert await page.evaluate("window.injected === undefined")
        assert await page.locator("#timeline script, #timeline img").count() == 0
        await page.screenshot(path=str(ARTIFACTS / "case-laptop.png"), full_page=True)

        # The customer withdraws: Telco A's items leave the open page, still unreloaded.
        await advisor.revoke_consent(consent.consent.consent_id, channel=Channel.PHONE)
        await expect(telco_items).to_have_count(0, timeout=LIVE)
        await expect(page.locator("form.withheld").first).to_be_visible()
        assert await page.evaluate("window.unreloaded === true")

        # The offer reaches the bank's people; the advisor accepts, then resolves.
        accept = page.get_by_role("button", name="Accept ownership")
        await expect(accept).to_be_visible(timeout=LIVE)
        await accept.focus()
        await page.keyboard.press("Enter")
        await expect(page.locator("#owner")).to_have_text(bank, timeout=LIVE)
        resolution = page.get_by_label("Resolution")
        await expect(resolution).to_be_visible(timeout=LIVE)
        await resolution.fill("Telco re-personalised the SIM's payment applet.")
        await page.get_by_role("button", name="Resolve").click()
        await expect(page.locator("#case-header .status").first).to_have_text(
            "resolved", timeout=LIVE
        )
        await page.get_by_role("link", name="This customer's history").click()
        await expect(page.get_by_role("link", name=case_id)).to_be_visible()
        phone = await browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
        phone.on("console", lambda m: _error(errors, m))
        await sign_in(phone, base, "lea")
        await phone.goto(f"{base}/cases/{case_id}")
        await expect(phone.locator("#owner")).to_have_text(bank)
        width = await phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the case page is {width}px wide on a 390px phone"
        await phone.screenshot(path=str(ARTIFACTS / "case-phone.png"), full_page=True)

        # The compliance officer finds the advisor's reads and verifies the checkpoint.
        await page.get_by_role("button", name="Sign out").click()
        await sign_in(page, base, "cora")
        await page.get_by_label("Case", exact=True).fill(case_id)
        await page.get_by_label("Partner", exact=True).fill(bank)
        await page.get_by_label("Kind").select_option("access-decision")
        await page.get_by_role("button", name="Search").click()
        reads = page.locator("#audit-results tbody tr", has_text="lea")
        await expect(reads.first).to_be_visible()
        assert await reads.count() >= 2
        await page.screenshot(path=str(ARTIFACTS / "audit.png"))
        await reads.first.get_by_role("link", name="prove").click()
        await expect(page.get_by_role("status")).to_contain_text("Proven")
        await page.goto(f"{base}/audit/checkpoint")
        await expect(page.locator("#checkpoint-verdict")).to_contain_text("Verified")

        # A POST without the session's CSRF token changes nothing.
        refused = await page.request.post(f"{base}/cases/{case_id}/confirmation", form={})
        assert refused.status == 403
        await page.close()
        await phone.close()
    assert not errors, errors


def _error(errors: list[str], message: ConsoleMessage) -> None:
    if message.type == "error":
        errors.append(f"console: {message.text}")


@contextlib.asynccontextmanager
async def gateway_replica(stack: Stack, pki: Pki, port: int) -> AsyncIterator[grpc.aio.Server]:
    """Another gateway server for the stack's runtime (same store, same workflows) on
    ``port``, which the test stops and starts again without touching the shared one."""
    server, _, health = create_server(f"127.0.0.1:{port}", pki.server, stack.runtime.domain)
    await server.start()
    await mark_serving(health, True)
    try:
        yield server
    finally:
        await server.stop(0)


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
async def test_the_gateway_going_away_while_a_case_page_is_open(
    stage: Stage, stack: Stack, pki: Pki, tmp_path: Path
) -> None:
    bank = stage.cast["bank"]
    errors: list[str] = []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = f"127.0.0.1:{port}"
    service = await stage.service("nfc-payment")  # the cast's own copy
    advisor = stage.client(bank, "advisor", "lea")  # through the shared gateway
    opened = await advisor.open_case(
        service_id=service,
        customer_local_id=stage.customer(bank),
        channel=Channel.PHONE,
        summary="Card payments with the phone fail since this morning.",
    )
    async with (
        gateway_replica(stack, pki, port) as replica,
        console_for(stage, bank, tmp_path, target=target) as base,
        chromium() as browser,
    ):
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: _error(errors, m))
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        await sign_in(page, base, "lea")
        await page.goto(f"{base}/cases/{opened.case_id}")
        status = page.locator("#live-status")
        await expect(status).to_have_text("Live", timeout=LIVE)
        banner = page.locator("#gateway-down")
        await expect(banner).to_be_hidden()
        await page.evaluate("window.unreloaded = true")

        await replica.stop(0)  # the console's gateway is gone; the page stays open
        await expect(status).to_have_text(re.compile("cannot be reached"), timeout=LIVE)
        await expect(banner).to_be_visible()
        await expect(banner).to_contain_text("reconnects by itself")
        body = await page.locator("body").inner_text()
        assert "Traceback" not in body, body
        assert "Error" not in body, body
        await page.screenshot(path=str(ARTIFACTS / "gateway-down.png"), full_page=True)

        # It comes back (same address): the page says so and is live again, unreloaded.
        async with gateway_replica(stack, pki, port):
            await expect(status).to_have_text(re.compile("again"), timeout=LIVE)
            await expect(banner).to_be_hidden()
            await advisor.append_interaction(
                opened.case_id, channel=Channel.PHONE, summary="Called back after the outage."
            )
            await expect(page.locator("#timeline")).to_contain_text(
                "Called back after the outage.", timeout=LIVE
            )
            assert await page.evaluate("window.unreloaded === true")
            await page.close()
    assert not errors, errors
