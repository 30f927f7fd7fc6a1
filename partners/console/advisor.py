"""The advisor's pages: the case list, the case page with its actions, the
customer's history. Every call acts as the signed-in advisor."""

from __future__ import annotations

import datetime as dt
import time

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

import partners.console.render as render
from partners.console.advisor_context import case_context
from partners.console.live import events
from partners.console.web import checked_form, console_of, field, require
from partners.enums import CaseStatus, Channel
from partners.errors import NotFound

STATUSES = [s.label for s in CaseStatus if s != CaseStatus.UNSPECIFIED]
#: The time-left filter's choices: label → seconds before the next SLA deadline.
DUE_WITHIN = {"overdue": 0, "15 min": 900, "1 hour": 3600, "1 day": 86400}
MAX_LISTED = 500


def _status(label: str) -> CaseStatus | None:
    if not label:
        return None
    for status in CaseStatus:
        if status.label == label:
            return status
    raise HTTPException(400, f"unknown status {label[:40]!r}")


async def case_list(request: Request) -> Response:
    person = require(request, "advisor")
    console = console_of(request)
    q = request.query_params
    search, service, customer = q.get("q", "")[:200], q.get("service", "")[:63], ""
    customer = q.get("customer", "")[:128]
    status, due = _status(q.get("status", "")), q.get("due", "")
    if due and due not in DUE_WITHIN:
        raise HTTPException(400, f"unknown time-left choice {due[:40]!r}")
    client = console.as_person(person)
    now = dt.datetime.now(dt.UTC)
    rows = []
    async for h in client.list_cases(
        service_id=service,
        status=status,
        customer_local_id=customer,
        purpose=console.settings.purpose if customer else "",
    ):
        text = f"{h.case_id} {h.summary} {h.service_id}".lower()
        if search and search.lower() not in text:
            continue
        seconds = render.due_in_seconds(h, now)
        if due and (seconds is None or seconds > DUE_WITHIN[due]):
            continue
        rows.append((render.header(h), seconds))
        if len(rows) >= MAX_LISTED:
            break
    return console.page(
        request,
        "cases.html",
        rows=rows,
        q=search,
        service=service,
        customer=customer,
        status=status.label if status else "",
        due=due,
        statuses=STATUSES,
        dues=list(DUE_WITHIN),
    )


async def case_page(request: Request) -> Response:
    person = require(request, "advisor")
    console = console_of(request)
    case_id = request.path_params["case_id"]
    start = time.perf_counter()
    try:
        view = await console.as_person(person).get_case_view(
            case_id, purpose=console.settings.purpose
        )
    except NotFound:
        await console.desk.forget(case_id)  # erased, or shredded at retention
        raise
    answered = (time.perf_counter() - start) * 1000
    response = console.page(request, "case.html", **case_context(console, view))
    # The gateway's own answer time, for the browser's tools and the benchmark: what
    # the console adds is the page's time less this.
    response.headers["server-timing"] = f'gateway;dur={answered:.1f};desc="GetCaseView"'
    return response


async def customer_page(request: Request) -> Response:
    person = require(request, "advisor")
    console = console_of(request)
    local = request.query_params.get("customer", "")[:128]
    subject = request.query_params.get("subject", "")[:128]
    if not (local or subject):
        raise HTTPException(400, "name the customer: your customer id, or their subject id")
    rows = [
        render.header(h)
        async for h in console.as_person(person).list_cases(
            customer_local_id=local,
            subject_id="" if local else subject,
            purpose=console.settings.purpose,
        )
    ]
    return console.page(request, "customer.html", customer=local or subject, rows=rows)


def _back(request: Request, case_id: str, flash: str) -> Response:
    request.session["flash"] = flash
    return RedirectResponse(f"/cases/{case_id}", status_code=303)


async def add_interaction(request: Request) -> Response:
    person = require(request, "advisor")
    form = await checked_form(request)
    case_id = request.path_params["case_id"]
    summary = field(form, "summary")
    channel = field(form, "channel", 20)
    if not summary:
        raise HTTPException(400, "write what the customer said or was told")
    chosen = next((c for c in Channel if c.label == channel), None)
    if chosen is None or chosen == Channel.UNSPECIFIED:
        raise HTTPException(400, "choose the channel")
    await (
        console_of(request)
        .as_person(person)
        .append_interaction(case_id, channel=chosen, summary=summary, author_id=person.person_id)
    )
    return _back(request, case_id, "Interaction added.")


async def request_consent(request: Request) -> Response:
    person = require(request, "advisor")
    console = console_of(request)
    form = await checked_form(request)
    case_id = request.path_params["case_id"]
    source, category = field(form, "source", 63), field(form, "category", 64)
    await console.as_person(person).request_consent(
        case_id,
        source_partner_id=source,
        categories=[category],
        purposes=[console.settings.purpose],
        reason=f"to see {source}'s {category} while resolving this incident",
    )
    return _back(request, case_id, f"The customer is being asked about {source}'s {category}.")


async def answer_consent(request: Request) -> Response:
    """The customer on the line answers a consent prompt; the advisor records it."""
    person = require(request, "advisor")
    console = console_of(request)
    form = await checked_form(request)
    case_id = request.path_params["case_id"]
    prompt = console.desk.prompt(case_id, field(form, "request_id", 128))
    if prompt is None:
        raise HTTPException(409, "that consent request is no longer open")
    client = console.as_person(person)
    if field(form, "answer", 10) == "agree":
        await client.grant_consent(
            customer_local_id=prompt.customer_local_id,
            source_partner_id=prompt.source_partner_id,
            recipient_partner_ids=[prompt.recipient_partner_id],
            categories=prompt.categories,
            purposes=prompt.purposes,
            channel=prompt.channel,
            notice_version=f"{console.settings.partner_id}-privacy-notice",
            consent_request_id=prompt.consent_request_id,
        )
        flash = "The customer's consent is recorded."
    else:
        await client.refuse_consent_request(prompt.consent_request_id, channel=prompt.channel)
        flash = "The customer's refusal is recorded."
    await console.desk.prompt_answered(case_id, prompt.consent_request_id)
    return _back(request, case_id, flash)


async def answer_offer(request: Request) -> Response:
    person = require(request, "advisor")
    console = console_of(request)
    form = await checked_form(request)
    case_id = request.path_params["case_id"]
    offer = console.desk.offer(case_id)
    if offer is None or offer.offer_id != field(form, "offer_id", 128):
        raise HTTPException(409, "that ownership offer is no longer open")
    client = console.as_person(person)
    if field(form, "answer", 10) == "accept":
        await client.accept_ownership(case_id, offer.offer_id)
        flash = "You accepted ownership: your company is the customer's single point of contact."
    else:
        reason = field(form, "reason", 2000) or "declined by the advisor"
        await client.decline_ownership(case_id, offer.offer_id, reason=reason)
        flash = "Ownership declined."
    await console.desk.answered(case_id)
    return _back(request, case_id, flash)


async def resolve(request: Request) -> Response:
    person = require(request, "advisor")
    form = await checked_form(request)
    case_id = request.path_params["case_id"]
    resolution = field(form, "resolution")
    if not resolution:
        raise HTTPException(400, "say what fixed it")
    await console_of(request).as_person(person).resolve_case(case_id, resolution=resolution)
    return _back(request, case_id, "Resolved: the customer is asked to confirm.")


async def confirm(request: Request) -> Response:
    person = require(request, "advisor")
    await checked_form(request)
    case_id = request.path_params["case_id"]
    await console_of(request).as_person(person).confirm_resolution(case_id)
    return _back(request, case_id, "The customer's confirmation is recorded.")


def routes() -> list[BaseRoute]:
    return [
        Route("/cases", case_list),
        Route("/cases/{case_id}", case_page),
        Route("/cases/{case_id}/events", events),
        Route("/cases/{case_id}/interactions", add_interaction, methods=["POST"]),
        Route("/cases/{case_id}/consent-requests", request_consent, methods=["POST"]),
        Route("/cases/{case_id}/consent-answers", answer_consent, methods=["POST"]),
        Route("/cases/{case_id}/ownership", answer_offer, methods=["POST"]),
        Route("/cases/{case_id}/resolution", resolve, methods=["POST"]),
        Route("/cases/{case_id}/confirmation", confirm, methods=["POST"]),
        Route("/customers", customer_page),
    ]
