"""A partner's web console served in-process (uvicorn on a free port, on the test's
event loop) against the real test stack, and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import re
import socket
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from playwright.async_api import Browser, async_playwright

from gateway.core.caller import Role
from partners.console import Accounts, ConsoleSettings, create_app
from partners.scenarios import Stage, Timings

CHROMIUM = Path(os.environ.get("COOPGATE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("COOPGATE_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "console"
PEOPLE = {"lea": ("advisor", "lea-password-1"), "cora": ("compliance", "cora-password-1")}


async def nfc_service(stage: Stage, *, diagnosis: float, acceptance: float) -> str:
    """A copy of nfc-payment for the stage, each component given ``diagnosis`` seconds
    and the offer ``acceptance`` seconds."""
    components = [c.name for c in (await stage.admin.get_service("nfc-payment")).components]
    return await stage.service(
        "nfc-payment",
        Timings(
            diagnosis=dict.fromkeys(components, diagnosis),
            acceptance=acceptance,
            time_to_owner=600,
            time_to_resolution=3600,
            confirmation_window=600,
        ),
    )


@contextlib.asynccontextmanager
async def console_for(
    stage: Stage,
    partner: str,
    tmp: Path,
    *,
    target: str | None = None,
    inbox: Path | None = None,
) -> AsyncIterator[str]:
    """The console of ``partner`` (its advisor, compliance and partner certificates),
    to the stage's gateway or ``target``, its desk kept in ``inbox`` when given; yields
    its base URL."""
    accounts = tmp / "accounts.toml"
    Accounts.write(accounts, PEOPLE)
    settings = ConsoleSettings(
        partner_id=partner,
        target=target or stage.target,
        advisor=stage.credentials(partner, Role.ADVISOR),
        compliance=stage.credentials(partner, Role.COMPLIANCE),
        work=stage.credentials(partner, Role.PARTNER),
        accounts=accounts,
        inbox=inbox,
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


class Browserless:
    """Requests with one cookie jar (http.client, in a thread)."""

    def __init__(self, port: int) -> None:
        self.port, self.cookie = port, ""

    def _request(
        self, method: str, path: str, form: dict[str, str] | None
    ) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Cookie": self.cookie} if self.cookie else {}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        got = {k.lower(): v for k, v in response.getheaders()}
        if "set-cookie" in got:
            self.cookie = got["set-cookie"].split(";")[0]
        text = response.read().decode()
        conn.close()
        return response.status, got, text

    async def get(self, path: str) -> tuple[int, dict[str, str], str]:
        return await asyncio.to_thread(self._request, "GET", path, None)

    async def post(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, str], str]:
        return await asyncio.to_thread(self._request, "POST", path, form)


async def sign_in_without_browser(client: Browserless, person: str, password: str) -> int:
    _, _, page = await client.get("/sign-in")
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token is not None
    status, _, _ = await client.post(
        "/sign-in", {"csrf": token.group(1), "person": person, "password": password, "next": ""}
    )
    return status
