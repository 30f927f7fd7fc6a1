"""Change notifications: a write says what it changed, and whoever waits for it wakes.

A write transaction announces a change as a topic and a key (`announce(conn, WORK,
partner_id)`: new work for that partner; `announce(conn, CASE, case_id)`: the case's
timeline moved; `announce(conn, CONSENT, consent_key(subject_id, recipient))`: a
consent of that customer naming that recipient was granted or withdrawn). Nothing is
announced before the transaction commits, and nothing of a transaction rolled back: in
this process the store delivers its announcements once the commit returned; on
PostgreSQL the same transaction also sends them with NOTIFY, which the server delivers
at commit to every other process listening on the database (one LISTEN connection per
process, `Changes`), so replicas wake each other.

A notification may still be lost (a LISTEN connection dropped and reopened, a process
on the same SQLite file): a waiter reads again after ``SAFETY_SECONDS`` anyway, so a
lost notification delays its work by that much and never loses it. Waiters subscribe
before they read, so a change committed while they read wakes them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
from sqlalchemy import Connection, column, text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.statements import execute, execute_in

log = logging.getLogger(__name__)

#: New work for a partner (key: the partner id).
WORK = "work"
#: Work a partner acknowledged (key: the partner id): its in-flight window opened. Apart
#: from `WORK`, so that a stream whose window is not full reads again for new work only,
#: not after each acknowledgement.
WINDOW = "window"
#: A case's timeline moved (key: the case id).
CASE = "case"
#: A consent of a customer naming a recipient changed (key: `consent_key`).
CONSENT = "consent"
#: How often a waiter reads again without being told (the net under lost notifications).
SAFETY_SECONDS = 1.0
#: The PostgreSQL channel every process of a deployment listens on.
CHANNEL = "coopgate_changes"
_PENDING = "coopgate_changes_pending"
#: One statement, in the announcing transaction, for all of its announcements.
#: (Its column named, so that `statements.execute` runs it on asyncpg itself.)
_NOTIFY = text(
    f"SELECT pg_notify('{CHANNEL}', p) FROM unnest(CAST(:payloads AS text[])) AS p"
).columns(column("pg_notify"))
_RECONNECT_SECONDS = 0.5

Change = tuple[str, str]


def consent_key(subject_id: str, recipient_partner_id: str) -> str:
    """The key of the `CONSENT` topic for a customer and a recipient: a digest, so that
    the notifications PostgreSQL carries between processes name no customer."""
    digest = hashlib.sha256(f"{subject_id}\x00{recipient_partner_id}".encode()).hexdigest()
    return digest[:32]


def announce(conn: AsyncConnection | Connection, topic: str, key: str) -> None:
    """Announce, from inside a `Store.write`/`run_write` transaction, that ``key`` of
    ``topic`` changed; delivered when (and only if) the transaction commits."""
    pending: set[Change] | None = conn.info.get(_PENDING)
    if pending is None:
        raise RuntimeError("announce() outside a write transaction of the store")
    pending.add((topic, key))


class Subscription:
    """Waits for changes to one key of one topic; made by `Changes.subscribe`."""

    __slots__ = ("_changes", "_event", "_wakes", "key", "topic")

    def __init__(
        self, changes: Changes, topic: str, key: str, wakes: Subscription | None = None
    ) -> None:
        self._changes = changes
        self._event = asyncio.Event()
        self._wakes = wakes
        self.topic = topic
        self.key = key

    def notify(self) -> None:
        self._event.set()
        if self._wakes is not None:
            self._wakes.notify()

    def take(self) -> bool:
        """Whether a change was announced since the last `take` or `wait` (and forget it):
        for a subscription that wakes another one's waiter (``wakes``)."""
        told = self._event.is_set()
        self._event.clear()
        return told

    async def wait(self, within: float = SAFETY_SECONDS) -> bool:
        """Until a change is announced (since the last wait returned, or since subscribing)
        or ``within`` seconds pass; returns whether a change was announced."""
        if not self._event.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await self._event.wait()
        told = self._event.is_set()
        self._event.clear()
        return told

    def close(self) -> None:
        self._changes._forget(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Changes:
    """The store's change notifications in one process (`Store.changes`): delivers what
    this process commits, and on PostgreSQL (``listen_dsn``) what any process does."""

    def __init__(self, listen_dsn: str | None = None) -> None:
        self._dsn = listen_dsn
        self._origin = uuid.uuid4().hex[:12]
        self._waiting: dict[Change, set[Subscription]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        #: Notifications received from other processes (for tests and diagnostics).
        self.received = 0

    def subscribe(self, topic: str, key: str, wakes: Subscription | None = None) -> Subscription:
        """A subscription to ``key`` of ``topic``; close it when done (or use ``with``).
        ``wakes``: another subscription whose waiter each change wakes as well (one
        waiter told of two kinds of change; `Subscription.take` says which came)."""
        subscription = Subscription(self, topic, key, wakes)
        self._waiting.setdefault((topic, key), set()).add(subscription)
        if self._dsn is not None and (self._listener is None or self._listener.done()):
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(self._dsn), name="store-changes-listener"
            )
        return subscription

    def _forget(self, subscription: Subscription) -> None:
        group = self._waiting.get((subscription.topic, subscription.key))
        if group is not None:
            group.discard(subscription)
            if not group:
                del self._waiting[(subscription.topic, subscription.key)]

    # -- the store's side: collect in the transaction, publish in it, deliver after ------

    @contextlib.contextmanager
    def collecting(self, conn: AsyncConnection | Connection, writer: bool) -> Iterator[set[Change]]:
        """What the transaction on ``conn`` announces (a writer's only)."""
        pending: set[Change] = set()
        if not writer:
            yield pending
            return
        # The info dict held once: reading ``conn.info`` again after the connection was
        # lost (a statement cut off by a server restart) makes SQLAlchemy reconnect
        # synchronously, which fails outside its greenlet and hid the store's error.
        info = conn.info
        info[_PENDING] = pending
        try:
            yield pending
        finally:
            info.pop(_PENDING, None)

    def _payloads(self, pending: set[Change]) -> dict[str, Any]:
        return {"payloads": [f"{self._origin}:{topic}:{key}" for topic, key in sorted(pending)]}

    async def publish(self, conn: AsyncConnection, pending: set[Change]) -> None:
        """PostgreSQL: NOTIFY the others in the transaction itself (sent at its commit)."""
        if pending and self._dsn is not None:
            await execute(conn, _NOTIFY, self._payloads(pending))

    def publish_sync(self, conn: Connection, pending: set[Change]) -> None:
        if pending and self._dsn is not None:
            execute_in(conn, _NOTIFY, self._payloads(pending))

    def deliver(self, pending: set[Change]) -> None:
        """Wake this process's subscribers of what was just committed."""
        for change in pending:
            for subscription in self._waiting.get(change, ()):
                subscription.notify()

    def wake_all(self) -> None:
        """Every subscriber reads again (after a time in which changes may have been lost)."""
        for group in self._waiting.values():
            for subscription in group:
                subscription.notify()

    # -- PostgreSQL: the other processes' changes ---------------------------------------

    def _on_notify(
        self,
        _conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
        _pid: int,
        _channel: str,
        payload: object,
    ) -> None:
        origin, _, change = str(payload).partition(":")
        if origin == self._origin:
            return  # delivered in-process at commit already
        topic, _, key = change.partition(":")
        self.received += 1
        self.deliver({(topic, key)})

    async def _listen(self, dsn: str) -> None:
        """LISTEN while anyone subscribes, reconnecting when the connection is lost; each
        (re)connection wakes every subscriber, since changes may have gone by unheard."""
        while self._waiting:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(dsn)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, told=lost.set: told())
                await conn.add_listener(CHANNEL, self._on_notify)
                self._listening.set()
                self.wake_all()
                while self._waiting and not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(SAFETY_SECONDS * 5):
                            await lost.wait()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.warning("store change listener lost; reconnecting", exc_info=True)
            finally:
                self._listening.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            if self._waiting:
                await asyncio.sleep(_RECONNECT_SECONDS)
        self._listener = None

    async def listening(self) -> None:
        """Until this process listens for other processes' changes (at once on SQLite, or
        with no subscriber: it listens while anyone subscribes)."""
        if self._dsn is not None and self._waiting:
            await self._listening.wait()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
