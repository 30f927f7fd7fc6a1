"""The case page's live part: server-sent events fed by the gateway's ``WatchCase``
stream, one per person and case however many of their pages are open (``fanout``):
each new item as the reader may see it, and a fresh read of the whole view when what
the items do not say changed: a consent granted or withdrawn anywhere (the watch says
so, ``consent_change``), an offer or consent prompt reaching the desk, the gateway
coming back after it could not be reached."""

from __future__ import annotations

from collections.abc import AsyncIterator

from coopgate.v1 import cases_pb2
from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response

import partners.console.render as render
from partners.client import PartnerClient
from partners.console.advisor_context import case_context
from partners.console.fanout import View, encode
from partners.console.web import Console, console_of, csrf_token, require
from partners.errors import DeadlineExceeded, Unavailable

__all__ = ["case_context", "events"]


async def events(request: Request) -> Response:
    person = require(request, "advisor")
    console = console_of(request)
    case_id = request.path_params["case_id"]
    try:
        after = int(request.query_params.get("after", "0"))
    except ValueError:
        after = 0
    seen = request.query_params.get("v", "")
    client = console.as_person(person)
    page = {"csrf": csrf_token(request), "partner": console.settings.partner_id}
    return EventSourceResponse(
        _stream(console, person.person_id, client, case_id, max(0, after), page, seen),
        ping=15,
        send_timeout=10,
    )


def _item_events(console: Console, change: cases_pb2.WatchCaseResponse) -> list[tuple[str, str]]:
    return [
        ("item", console.item_html(change.item)),
        ("header", console.fragment("_header.html", h=render.header(change.header))),
    ]


async def _stream(
    console: Console,
    person_id: str,
    client: PartnerClient,
    case_id: str,
    after: int,
    page: dict[str, str],
    seen: str = "",
) -> AsyncIterator[bytes]:
    purpose = console.settings.purpose
    shared, mine = console.watches.join(
        person_id,
        client,
        case_id,
        purpose,
        after,
        lambda change: _item_events(console, change),
        console.signals,
    )
    if seen and seen != str(console.signals.version(case_id)):
        mine.inbox.put_nowait(("read", "desk"))  # an offer or prompt came since the render
    try:
        while True:
            kind, value = await mine.inbox.get()
            if kind == "items":
                sequence, encoded = value
                if sequence > mine.after:
                    mine.after = sequence
                    for event in encoded:
                        yield event
            elif kind in ("view", "read"):
                if kind == "read":
                    try:
                        view = await client.get_case_view(case_id, purpose=purpose)
                    except (Unavailable, DeadlineExceeded):
                        shared.refresh("read")  # fails there too: all pages say so, recover
                        continue
                    value = View(view, str(value))
                yield _view_event(console, value, page)
                # Items sent before this view was read and not in it: shown again (the
                # page keeps one of each).
                for sequence, encoded in list(shared.history):
                    if sequence > value.view.position:
                        mine.after = max(mine.after, sequence)
                        for event in encoded:
                            yield event
            elif kind == "status":
                yield value
            elif kind == "end":
                yield value
                return
    finally:
        await console.watches.leave(shared, mine)


def _view_event(console: Console, shared: View, page: dict[str, str]) -> bytes:
    """The live part for this page's session (one rendering per CSRF token)."""
    rendered = shared.rendered.get(page["csrf"])
    if rendered is None:
        context = case_context(console, shared.view)
        html = console.fragment("_live.html", changed=shared.changed, **page, **context)
        rendered = shared.rendered[page["csrf"]] = encode("view", html)
    return rendered
