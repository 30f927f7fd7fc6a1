"""Waking case watchers when their case changes, without a query per watcher.

Each watcher subscribes to its case's change notifications (`store.changes`, topic
``CASE``): a timeline write wakes it when it commits, whichever replica or worker
made it (PostgreSQL NOTIFY across processes). Under that, one poller per gateway
process reads the last sequence of every watched case in a single query each
``interval`` and wakes the watchers whose case moved, so a lost notification delays
a watcher by that much at most, and a thousand watchers cost one query per tick. A
watcher whose client stops reading is cut off after ``slow_after`` seconds instead
of holding the gateway: it resumes from the last sequence it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from gateway.store import Store
from gateway.store.changes import CASE, SAFETY_SECONDS, Subscription
from gateway.store.schema import cases

log = logging.getLogger(__name__)
_CHUNK = 500


@dataclass(eq=False)
class Watcher:
    case_id: str
    position: int
    #: Called once with the last sequence sent when the client stops reading.
    on_slow: Callable[[int], Coroutine[Any, Any, None]] | None
    #: Told when the case changes (by its writer, or by the feed's safety poll).
    changes: Subscription
    #: Loop time at which the current write to the client began (None: not writing).
    writing_since: float | None = None
    delivered: int = 0
    dropped: bool = False


class CaseFeed:
    def __init__(
        self, store: Store, interval: float = SAFETY_SECONDS, slow_after: float = 30.0
    ) -> None:
        self.store = store
        self.interval = interval
        self.slow_after = slow_after
        self._watchers: dict[str, set[Watcher]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._drops: set[asyncio.Task[None]] = set()

    def watch(
        self,
        case_id: str,
        position: int,
        on_slow: Callable[[int], Coroutine[Any, Any, None]] | None = None,
    ) -> Watcher:
        subscription = self.store.changes.subscribe(CASE, case_id)
        watcher = Watcher(case_id, position, on_slow, subscription, delivered=position)
        self._watchers.setdefault(case_id, set()).add(watcher)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="case-feed")
        return watcher

    def forget(self, watcher: Watcher) -> None:
        watcher.changes.close()
        group = self._watchers.get(watcher.case_id)
        if group is not None:
            group.discard(watcher)
            if not group:
                del self._watchers[watcher.case_id]

    async def wait(self, watcher: Watcher, idle: float) -> None:
        """Until the case moves past ``watcher.position`` or ``idle`` seconds pass."""
        await watcher.changes.wait(idle)

    @property
    def watching(self) -> int:
        return sum(len(group) for group in self._watchers.values())

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        while self._watchers:
            case_ids = list(self._watchers)
            try:
                async with self.store.read() as conn:
                    for start in range(0, len(case_ids), _CHUNK):
                        rows = await conn.execute(
                            select(cases.c.case_id, cases.c.last_sequence).where(
                                cases.c.case_id.in_(case_ids[start : start + _CHUNK])
                            )
                        )
                        for case_id, last in rows:
                            for watcher in self._watchers.get(case_id, ()):
                                if last > watcher.position:
                                    watcher.changes.notify()
            except Exception:
                log.exception("case feed poll failed; retrying")
            now = loop.time()
            for group in list(self._watchers.values()):
                for watcher in list(group):
                    since = watcher.writing_since
                    if since is not None and now - since > self.slow_after and not watcher.dropped:
                        watcher.dropped = True
                        if watcher.on_slow is not None:
                            task = asyncio.create_task(watcher.on_slow(watcher.delivered))
                            self._drops.add(task)
                            task.add_done_callback(self._drops.discard)
            await asyncio.sleep(self.interval)
        self._poller = None

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
