"""The console's live streams against the real stack (no browser): the open pages of
one person on one case share one ``WatchCase`` at the gateway, each page receives every
new item, a page opened behind the shared stream gets what it missed, and the gateway's
watch ends with the last page."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from partners import Channel
from partners.scenarios import Stage
from tests.benchmarks.console import Http, until
from tests.conftest import Stack
from tests.partners.console_stack import PEOPLE, console_for

PAGES = 5


async def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
async def test_pages_of_one_person_share_one_watch(
    stage: Stage, stack: Stack, tmp_path: Path
) -> None:
    feed = stack.runtime.domain.cases.watching.feed
    bank = stage.cast["bank"]
    service = await stage.service("nfc-payment")
    advisor = stage.client(bank, "advisor", "lea")
    opened = await advisor.open_case(
        service_id=service,
        customer_local_id=stage.customer(bank),
        channel=Channel.PHONE,
        summary="Phone payments refused.",
    )
    view = await advisor.get_case_view(opened.case_id, purpose="incident-resolution")
    async with console_for(stage, bank, tmp_path) as base:
        host, _, port = base.removeprefix("http://").rpartition(":")
        http = Http(host, int(port))
        _, _, page = await http.request("GET", "/sign-in")
        csrf = re.search(rb'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        form = {"csrf": csrf.group(1).decode(), "person": "lea", "password": PEOPLE["lea"][1]}
        assert (await http.request("POST", "/sign-in", form))[0] == 303
        events = f"/cases/{opened.case_id}/events?after={view.position}&v=0"
        before = feed.watching
        async with contextlib.AsyncExitStack() as pages:
            readers = [await pages.enter_async_context(http.stream(events)) for _ in range(PAGES)]
            await eventually(lambda: feed.watching == before + 1)
            await asyncio.sleep(0.5)
            assert feed.watching == before + 1  # one watch for the five pages

            marker = f"shared-{uuid.uuid4().hex[:8]}"
            await advisor.append_interaction(opened.case_id, channel=Channel.CHAT, summary=marker)
            async with asyncio.timeout(15):
                await asyncio.gather(*(until(r, marker.encode()) for r in readers))

            # A page rendered before that item opens now: it gets it from the stream's
            # history, through the same watch.
            late = await pages.enter_async_context(http.stream(events))
            async with asyncio.timeout(15):
                await until(late, marker.encode())
            assert feed.watching == before + 1
        # The last page left: the console's watch at the gateway ends.
        await eventually(lambda: feed.watching == before)
