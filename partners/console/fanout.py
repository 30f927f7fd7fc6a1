"""One live watch per person and case, however many of that person's pages show it.

The gateway filters a case by its reader's company and purpose and records each read
for the acting person, so the open pages of one signed-in person on one case would
receive exactly the same stream: they share one upstream ``WatchCase`` (with consent
changes) and every item is rendered once, its events encoded once, then handed to each
page. A page that opens after the shared stream went past the page's own position
gets the items it missed from the stream's recent history, or reads the view again.
Pages of different people never share (each person's reads are theirs in the audit
log). Whatever the watch does not carry (an offer or consent prompt reaching the desk)
wakes the shared stream through ``CaseSignals``; a consent change arrives on the watch
itself; both make it read the view once for all its pages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from coopgate.v1 import cases_pb2
from sse_starlette.event import ServerSentEvent

from partners.client import PartnerClient
from partners.console.desk import CaseSignals
from partners.errors import DeadlineExceeded, GatewayError, Unavailable

log = logging.getLogger(__name__)

#: Seconds between attempts to reach the gateway again while it is down.
RETRY_SECONDS = 1.0
#: Items kept for pages that open a little behind the shared stream.
HISTORY = 256

#: What a page receives: ("items", (sequence, encoded events)), ("view", View),
#: ("status", encoded event), ("read", why: the page reads the view itself), ("end", encoded).
Message = tuple[str, Any]


@dataclass(slots=True, eq=False)
class View:
    """A view read once for every page of the stream; each page renders it with its
    own session's CSRF token (``rendered`` keeps one rendering per token)."""

    view: cases_pb2.CaseView
    changed: str
    rendered: dict[str, bytes] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class Page:
    """One open page: what it has shown up to (``after``) and its inbox."""

    after: int
    inbox: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)


def encode(event: str, data: str) -> bytes:
    return ServerSentEvent(data=data, event=event).encode()


def status(text: str, tone: str = "") -> bytes:
    return encode("status", f"{tone}|{text}")


DOWN = status("The gateway cannot be reached; retrying…", "offline")
UP = status("Connected to the gateway again.", "up")


class SharedWatch:
    """The upstream watch of one person on one case and the pages it feeds."""

    def __init__(
        self,
        key: tuple[str, str],
        client: PartnerClient,
        purpose: str,
        start: int,
        item_events: Callable[[cases_pb2.WatchCaseResponse], list[tuple[str, str]]],
        signals: CaseSignals,
    ) -> None:
        self.key = key
        self.case_id = key[1]
        self.client = client
        self.purpose = purpose
        self.start = start
        self.position = start
        self.pages: set[Page] = set()
        self.history: deque[tuple[int, list[bytes]]] = deque(maxlen=HISTORY)
        #: The last sequence of the items dropped from ``history``.
        self.trimmed = start
        self._item_events = item_events
        self._signals = signals
        self._wake = signals.open(self.case_id)
        self._ended: bytes | None = None
        self._task = asyncio.create_task(self._run(), name=f"console-watch-{self.case_id}")
        self._task.add_done_callback(self._stopped)

    def _stopped(self, task: asyncio.Task[None]) -> None:
        """A stream that failed unexpectedly tells its pages (which then leave; a page
        that opens again gets a new stream)."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("a case's live stream failed", exc_info=task.exception())
        self._ended = status("The live view stopped: reload the page.", "down")
        self._send(("end", self._ended))

    @property
    def failed(self) -> bool:
        return self._task.done()

    def join(self, after: int) -> Page:
        page = Page(after)
        if self._ended is not None:
            page.inbox.put_nowait(("end", self._ended))
        elif after < self.position:
            if after < self.trimmed:  # some of what it missed is no longer here
                page.inbox.put_nowait(("read", ""))
            else:
                for entry in self.history:
                    if entry[0] > after:
                        page.inbox.put_nowait(("items", entry))
        self.pages.add(page)
        return page

    def refresh(self, why: str) -> None:
        """Read the view again for every page (and recover if the gateway is gone)."""
        self._wake.put_nowait(why)

    def _send(self, message: Message) -> None:
        for page in self.pages:
            page.inbox.put_nowait(message)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._signals.close(self.case_id, self._wake)

    async def _run(self) -> None:
        inbox: asyncio.Queue[Message] = asyncio.Queue()

        generation = 0

        async def watch(generation: int) -> None:
            try:
                async for change in self.client.watch_case(
                    self.case_id,
                    purpose=self.purpose,
                    after_sequence=self.position,
                    consent_changes=True,
                ):
                    await inbox.put(("change", change))
                await inbox.put(("closed", None))
            except (Unavailable, DeadlineExceeded):
                await inbox.put(("failed", generation))
            except GatewayError as exc:
                await inbox.put(("error", str(exc).partition("\n")[0][:200]))

        async def woken() -> None:
            while True:
                await inbox.put(("refresh", await self._wake.get()))

        tasks = [asyncio.create_task(woken()), asyncio.create_task(watch(generation))]
        try:
            while True:
                kind, value = await inbox.get()
                if kind == "change" and value.HasField("consent_change"):
                    kind, value = "refresh", "consent"
                if kind == "failed" and value != generation:
                    continue  # from a watch already replaced
                if kind == "change":
                    sequence = value.item.sequence
                    events = [encode(e, d) for e, d in self._item_events(value)]
                    self.position = max(self.position, sequence)
                    if len(self.history) == self.history.maxlen:
                        self.trimmed = self.history[0][0]
                    self.history.append((sequence, events))
                    self._send(("items", (sequence, events)))
                elif kind == "refresh":
                    try:
                        view = await self.client.get_case_view(self.case_id, purpose=self.purpose)
                    except (Unavailable, DeadlineExceeded):
                        kind = "failed"  # the watch breaks too, soon: recover once, here
                    else:
                        self._send(("view", View(view, str(value))))
                if kind == "failed":
                    self._send(("status", DOWN))
                    view = await self._reconnect()
                    self._send(("status", UP))
                    self._send(("view", View(view, "")))
                    tasks[1].cancel()
                    generation += 1
                    tasks[1] = asyncio.create_task(watch(generation))
                elif kind in ("closed", "error"):
                    self._ended = (
                        status("The case is closed.", "done")
                        if kind == "closed"
                        else status(f"The live view stopped: {value}", "down")
                    )
                    self._send(("end", self._ended))
                    await asyncio.Future()  # the pages leave; the last one closes this
        finally:
            for task in tasks:
                task.cancel()

    async def _reconnect(self) -> cases_pb2.CaseView:
        while True:
            with contextlib.suppress(Unavailable, DeadlineExceeded):
                return await self.client.get_case_view(
                    self.case_id, purpose=self.purpose, deadline=5
                )
            await asyncio.sleep(RETRY_SECONDS)


class Watches:
    """The console's shared watches, by (person, case)."""

    def __init__(self) -> None:
        self._shared: dict[tuple[str, str], SharedWatch] = {}

    def join(
        self,
        person_id: str,
        client: PartnerClient,
        case_id: str,
        purpose: str,
        after: int,
        item_events: Callable[[cases_pb2.WatchCaseResponse], list[tuple[str, str]]],
        signals: CaseSignals,
    ) -> tuple[SharedWatch, Page]:
        key = (person_id, case_id)
        shared = self._shared.get(key)
        if shared is None or shared.failed:
            shared = self._shared[key] = SharedWatch(
                key, client, purpose, after, item_events, signals
            )
        return shared, shared.join(after)

    async def leave(self, shared: SharedWatch, page: Page) -> bool:
        """Whether this was the stream's last page (then it is closed)."""
        shared.pages.discard(page)
        if shared.pages:
            return False
        if self._shared.get(shared.key) is shared:
            del self._shared[shared.key]
        await shared.close()
        return True

    @property
    def open(self) -> int:
        return len(self._shared)


__all__ = ["Page", "SharedWatch", "View", "Watches", "encode", "status"]
