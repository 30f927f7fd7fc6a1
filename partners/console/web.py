"""The console's web application (Starlette): sign-in, sessions that expire, a CSRF
token on every POST, a strict Content-Security-Policy, the gateway's failures as
pages, and the advisor and compliance routes (``advisor.py``, ``compliance.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import jinja2
from coopgate.v1 import cases_pb2
from markupsafe import Markup
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import partners.console.render as render
from partners.channel import PartnerCredentials
from partners.client import PartnerClient
from partners.console.accounts import Accounts, Person
from partners.console.desk import CaseSignals, Desk
from partners.console.fanout import Watches
from partners.console.inbox import Inbox
from partners.console.settings import ConsoleSettings
from partners.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    GatewayError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)

HERE = Path(__file__).parent
#: Timeline items kept rendered (an item's HTML depends on its content alone).
RENDERED_ITEMS = 8192
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
)


class SecurityHeaders:
    """Adds the CSP and its companions to every response (ASGI, so SSE streams too)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


class Console:
    """What the routes share: settings, templates, the gateway connections, the desk."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        self.accounts = Accounts.load(settings.accounts) if settings.accounts else None
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            auto_reload=False,
        )
        #: An item's HTML by its serialized form: timeline items never change once
        #: written, and the pages and live updates of a case show the same ones again.
        self._item_html = functools.lru_cache(maxsize=RENDERED_ITEMS)(self._render_item)
        self.signals = CaseSignals()
        self.desk = Desk(self.signals, Inbox(settings.inbox) if settings.inbox else None)
        self.watches = Watches()
        self.advisor_client: PartnerClient | None = None
        self.compliance_client: PartnerClient | None = None
        self.work_client: PartnerClient | None = None
        #: Checkpoints this console verified, by tree size (root hash), for consistency.
        self.checkpoints: dict[int, bytes] = {}
        self.verifier_key = settings.verifier_key

    def _client(self, credentials: PartnerCredentials) -> PartnerClient:
        return PartnerClient(
            self.settings.target,
            credentials,
            server_name=self.settings.server_name,
            deadline=self.settings.call_deadline,
            key_prefix=f"console-{self.settings.partner_id}",
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The gateway connections, made on the serving loop, and the desk's work stream."""
        s = self.settings
        self.advisor_client = self._client(s.advisor)
        self.compliance_client = self._client(s.compliance) if s.compliance else None
        self.work_client = self._client(s.work) if s.work else None
        subscription = self.desk.start(self.work_client) if self.work_client else None
        try:
            if subscription is not None:
                async with subscription:
                    yield
            else:
                yield
        finally:
            for client in (self.advisor_client, self.compliance_client, self.work_client):
                if client is not None:
                    await client.close()
            if self.desk.inbox is not None:
                self.desk.inbox.close()

    def as_person(self, person: Person) -> PartnerClient:
        """The connection for the person's role, acting as them on every call."""
        client = self.advisor_client if person.role == "advisor" else self.compliance_client
        if client is None:
            raise HTTPException(403, "this console has no certificate for your role")
        return client.acting_as(person.person_id)

    # -- pages ---------------------------------------------------------------

    def page(
        self, request: Request, template: str, http_status: int = 200, **context: Any
    ) -> HTMLResponse:
        person = signed_in(request, self)
        session = request.session if "session" in request.scope else {}
        flash = session.pop("flash", "") if "flash" in session else ""
        html = self.templates.get_template(template).render(
            person=person,
            partner=self.settings.partner_id,
            csrf=csrf_token(request),
            flash=flash,
            path=request.url.path,
            **context,
        )
        return HTMLResponse(html, status_code=http_status)

    def fragment(self, template: str, **context: Any) -> str:
        return self.templates.get_template(template).render(**context)

    def timeline(self, items: Any) -> Markup:
        """The ``<li>`` of each item, in sequence order (escaped by the template)."""
        ordered = sorted(items, key=lambda i: i.sequence)
        return Markup("").join(self.item_html(item) for item in ordered)

    def item_html(self, item: cases_pb2.TimelineItem) -> Markup:
        if not item.HasField("occurred_at"):  # shown with the time it is rendered
            return self._render_item(item.SerializeToString(deterministic=True))
        return self._item_html(item.SerializeToString(deterministic=True))

    def _render_item(self, serialized: bytes) -> Markup:
        item = cases_pb2.TimelineItem.FromString(serialized)
        return Markup(self.fragment("_rows.html", rows=[render.row(item)]))


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


# -- sessions and sign-in ---------------------------------------------------------


def csrf_token(request: Request) -> str:
    if "session" not in request.scope:
        return ""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return str(token)


def signed_in(request: Request, console: Console) -> Person | None:
    """The person of this request: the trusted proxy's header, or the session while it
    has not expired (absolute and idle limits)."""
    s = console.settings
    if s.trusted_header:
        host = request.client.host if request.client else ""
        named = request.headers.get(s.trusted_header, "")
        if named and host in s.trusted_proxies:
            role = request.headers.get(s.trusted_role_header, "advisor")
            return Person(named, role if role in ("advisor", "compliance") else "advisor")
    if "session" not in request.scope:
        return None
    session = request.session
    if "person" not in session:
        return None
    now = time.time()
    if now - session.get("at", 0) > s.session_seconds or now - session.get("seen", 0) > (
        s.idle_seconds
    ):
        session.clear()
        return None
    if now - session.get("seen", 0) > min(60.0, s.idle_seconds / 20):
        session["seen"] = now  # not at every request: each change signs a new cookie
    return Person(session["person"], session["role"], session.get("name", ""))


def require(request: Request, role: str) -> Person:
    console = console_of(request)
    person = signed_in(request, console)
    if person is None:
        raise HTTPException(303, headers={"location": f"/sign-in?next={request.url.path}"})
    if person.role != role:
        raise HTTPException(403, f"this page is for the {role} role; you sign in as {person.role}")
    return person


async def checked_form(request: Request) -> FormData:
    """The POSTed form once its CSRF token matches the session's; 403 otherwise."""
    form = await request.form()
    sent = form.get("csrf")
    expected = request.session.get("csrf") if "session" in request.scope else None
    if not isinstance(sent, str) or not expected or not secrets.compare_digest(sent, expected):
        raise HTTPException(403, "the form's security token is missing or stale: reload the page")
    return form


def field(form: FormData, name: str, limit: int = 4000) -> str:
    value = form.get(name, "")
    if not isinstance(value, str):
        raise HTTPException(400, f"{name} must be text")
    if len(value) > limit:
        raise HTTPException(400, f"{name} is longer than {limit} characters")
    return value.strip()


async def sign_in_page(request: Request) -> Response:
    console = console_of(request)
    return console.page(request, "sign_in.html", next=request.query_params.get("next", ""))


async def sign_in(request: Request) -> Response:
    console = console_of(request)
    form = await checked_form(request)
    person_id, password = field(form, "person", 128), field(form, "password", 1024)
    # Argon2 takes tens of milliseconds of CPU by design: in a thread (it releases the
    # GIL), not on the loop that serves every open page.
    accounts = console.accounts
    person = await asyncio.to_thread(accounts.check, person_id, password) if accounts else None
    if person is None:
        return console.page(
            request,
            "sign_in.html",
            http_status=401,
            error="That name and password do not match an account.",
            next=field(form, "next", 500),
            entered=person_id,
        )
    now = time.time()
    request.session.clear()
    request.session.update(
        person=person.person_id,
        role=person.role,
        name=person.name,
        at=now,
        seen=now,
        csrf=secrets.token_urlsafe(32),
    )
    target = field(form, "next", 500)
    if not target.startswith("/") or target.startswith("//"):
        target = "/"
    return RedirectResponse(target, status_code=303)


async def sign_out(request: Request) -> Response:
    await checked_form(request)
    request.session.clear()
    return RedirectResponse("/sign-in", status_code=303)


async def home(request: Request) -> Response:
    person = signed_in(request, console_of(request))
    if person is None:
        return RedirectResponse("/sign-in", status_code=303)
    return RedirectResponse("/cases" if person.role == "advisor" else "/audit", status_code=303)


# -- failures as pages ----------------------------------------------------------------

_GATEWAY_STATUS: Mapping[type[GatewayError], tuple[int, str]] = {
    Unavailable: (503, "The gateway cannot be reached"),
    DeadlineExceeded: (504, "The gateway did not answer in time"),
    NotFound: (404, "Not found (or not one of your cases)"),
    PermissionDenied: (403, "Not allowed"),
    InvalidArgument: (400, "The gateway refused the request"),
    FailedPrecondition: (409, "Not possible now"),
}


async def gateway_failed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    status, title = next(
        (v for k, v in _GATEWAY_STATUS.items() if isinstance(exc, k)),
        (502, "The gateway failed"),
    )
    detail = str(exc).partition("\n")[0][:300]
    return console_of(request).page(
        request, "error.html", http_status=status, title=title, detail=detail
    )


async def proof_failed(request: Request, exc: Exception) -> Response:
    """A checkpoint or proof from the gateway that does not hold: said, never hidden."""
    return console_of(request).page(
        request, "error.html", http_status=502, title="Verification failed", detail=str(exc)
    )


async def http_failed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (301, 302, 303) and exc.headers:
        return RedirectResponse(exc.headers["location"], status_code=exc.status_code)
    titles = {403: "Not allowed", 404: "Not found", 400: "Bad request", 405: "Not allowed"}
    return console_of(request).page(
        request,
        "error.html",
        http_status=exc.status_code,
        title=titles.get(exc.status_code, "Error"),
        detail=exc.detail,
    )
