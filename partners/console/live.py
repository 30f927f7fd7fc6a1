"""The case page's live part: server-sent events fed by the gateway's ``WatchCase``
stream (each new item as the reader may see it), and a fresh read of the whole view
when what the watch does not carry changed: a consent granted here or withdrawn
anywhere (the customer's consents are checked every ``consent_poll_seconds``), an
offer or consent prompt arriving, the gateway coming back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from coopgate.v1 import cases_pb2
from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response

import partners.console.render as render
from partners.client import PartnerClient
from partners.console.advisor_context import case_context
from partners.console.web import Console, console_of, csrf_token, require
from partners.errors import DeadlineExceeded, GatewayError, Unavailable

#: Seconds between attempts to reach the gateway again while it is down.
RETRY_SECONDS = 1.0

__all__ = ["case_context", "events"]


async def events(request: Request) -> Response:
    person = require(request, "advisor")
    console = console_of(request)
    case_id = request.path_params["case_id"]
    try:
        after = int(request.query_params.get("after", "0"))
    except ValueError:
        after = 0
    subject = request.query_params.get("subject", "")[:128]
    seen = request.query_params.get("v", "")
    client = console.as_person(person)
    page = {"csrf": csrf_token(request), "partner": console.settings.partner_id}
    return EventSourceResponse(
        _stream(console, client, case_id, subject, max(0, after), page, seen),
        ping=15,
        send_timeout=10,
    )


def _item_events(console: Console, change: cases_pb2.WatchCaseResponse) -> list[dict[str, str]]:
    row = render.row(change.item)
    return [
        {"event": "item", "data": console.fragment("_item.html", r=row)},
        {
            "event": "header",
            "data": console.fragment("_header.html", h=render.header(change.header)),
        },
    ]


def _status(text: str, tone: str = "") -> dict[str, str]:
    return {"event": "status", "data": f"{tone}|{text}"}


async def _stream(
    console: Console,
    client: PartnerClient,
    case_id: str,
    subject_id: str,
    after: int,
    page: dict[str, str],
    seen: str = "",
) -> AsyncIterator[dict[str, str]]:
    purpose = console.settings.purpose
    wake = console.signals.open(case_id)
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    position = after

    async def watch(start: int) -> None:
        async for change in client.watch_case(case_id, purpose=purpose, after_sequence=start):
            await queue.put(("item", change))
        await queue.put(("closed", None))

    async def consents(subject_id: str) -> None:
        seen: tuple[tuple[str, int], ...] | None = None
        while True:
            found = await client.list_consents(subject_id=subject_id)
            now = tuple(sorted((c.consent_id, c.state) for c in found))
            if seen is not None and now != seen:
                await queue.put(("refresh", "consent"))
            seen = now
            await asyncio.sleep(console.settings.consent_poll_seconds)

    async def woken() -> None:
        while True:
            await queue.put(("refresh", await wake.get()))

    tasks: list[asyncio.Task[None]] = [asyncio.create_task(woken())]

    def start(subject_id: str, at: int) -> None:
        for task in tasks[1:]:
            task.cancel()
        del tasks[1:]
        for job in (watch(at), consents(subject_id)):
            task = asyncio.create_task(job)
            task.add_done_callback(_report(queue))
            tasks.append(task)

    try:
        start(subject_id, after)
        if seen and seen != str(console.signals.version(case_id)):
            queue.put_nowait(("refresh", "desk"))  # an offer or prompt came since the render
        while True:
            kind, value = await queue.get()
            if kind == "item":
                position = max(position, value.item.sequence)
                for event in _item_events(console, value):
                    yield event
            elif kind == "refresh":
                view = await client.get_case_view(case_id, purpose=purpose)
                yield _view_event(console, view, page, changed=str(value))
            elif kind == "closed":
                yield _status("The case is closed.", "done")
            elif kind == "failed":
                yield _status("The gateway cannot be reached; retrying…", "down")
                view = await _reconnect(client, case_id, purpose)
                start(view.header.subject_id, position)
                yield _status("Connected to the gateway again.", "up")
                yield _view_event(console, view, page)
            elif kind == "error":
                yield _status(f"The live view stopped: {value}", "down")
                return
    finally:
        for task in tasks:
            task.cancel()
        console.signals.close(case_id, wake)


def _report(queue: asyncio.Queue[tuple[str, Any]]) -> Any:
    def done(task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, Unavailable | DeadlineExceeded):
            queue.put_nowait(("failed", None))
        elif isinstance(exc, GatewayError):
            queue.put_nowait(("error", str(exc).partition("\n")[0][:200]))
        elif exc is not None:
            queue.put_nowait(("error", type(exc).__name__))

    return done


async def _reconnect(client: PartnerClient, case_id: str, purpose: str) -> cases_pb2.CaseView:
    while True:
        with contextlib.suppress(Unavailable, DeadlineExceeded):
            return await client.get_case_view(case_id, purpose=purpose, deadline=5)
        await asyncio.sleep(RETRY_SECONDS)


def _view_event(
    console: Console, view: cases_pb2.CaseView, page: dict[str, str], changed: str = ""
) -> dict[str, str]:
    context = case_context(console, view)
    return {
        "event": "view",
        "data": console.fragment("_live.html", changed=changed, **page, **context),
    }
