"""The console's ASGI application: the routes of ``web`` (sign-in), ``advisor`` and
``compliance``, behind the security headers and signed, expiring sessions; the
gateway connections open and close with it (lifespan)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from partners.console.advisor import routes as advisor_routes
from partners.console.compliance import routes as compliance_routes
from partners.console.proofs import ProofFailed
from partners.console.settings import ConsoleSettings
from partners.console.web import (
    HERE,
    Console,
    SecurityHeaders,
    gateway_failed,
    home,
    http_failed,
    proof_failed,
    sign_in,
    sign_in_page,
    sign_out,
)
from partners.errors import GatewayError


def create_app(settings: ConsoleSettings, console: Console | None = None) -> Starlette:
    """The console for one partner; the gateway connections open with the app."""
    console = console or Console(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with console.running():
            yield

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        GatewayError: gateway_failed,
        HTTPException: http_failed,
        ProofFailed: proof_failed,
    }
    app = Starlette(
        routes=[
            Route("/", home),
            Route("/sign-in", sign_in_page, methods=["GET"]),
            Route("/sign-in", sign_in, methods=["POST"]),
            Route("/sign-out", sign_out, methods=["POST"]),
            *advisor_routes(),
            *compliance_routes(),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(
                SessionMiddleware,
                secret_key=settings.secret,
                session_cookie="console_session",
                max_age=settings.session_seconds,
                same_site="strict",
                https_only=settings.https_only,
            ),
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    app.state.console = console
    return app
