"""The subscription that delivers the work the gateway hands a partner (the work
items themselves, as typed values, are in `partners.items`).

Delivery is at least once: the gateway keeps an item until it is acknowledged
and sends unacknowledged items again on the next subscription. The
subscription here acknowledges an item only after the partner's handler
returned, reconnects by itself when the stream breaks, and resubscribes after
a handler failure so that the failed item comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

import grpc
from coopgate.v1 import work_pb2

from partners.errors import GatewayError, from_rpc_error
from partners.items import (
    CaseNotice,
    ConsentPrompt,
    CustomerNotification,
    DiagnosisRequest,
    ErasureNotice,
    OwnershipDecision,
    OwnershipOffer,
    WorkItem,
    work_item_from_proto,
)
from partners.retry import Backoff, RetryPolicy

#: The work items are defined in `partners.items`; importable from here as before.
__all__ = [
    "RECONNECT",
    "REDELIVERY",
    "CaseNotice",
    "ConsentPrompt",
    "CustomerNotification",
    "DiagnosisRequest",
    "ErasureNotice",
    "Handler",
    "OwnershipDecision",
    "OwnershipOffer",
    "SubscriptionStats",
    "WorkItem",
    "WorkSource",
    "WorkSubscription",
    "work_item_from_proto",
]

log = logging.getLogger(__name__)

Handler = Callable[[WorkItem], Awaitable[None]]


#: Stream failures worth subscribing again for; any other code means the
#: subscription itself is refused (wrong role, bad request) and is raised.
_RECONNECTABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)


#: The most work ids one acknowledgement carries (the gateway's limit per call).
MAX_ACK_BATCH = 1000


def acknowledgement_key(work_ids: Sequence[str]) -> str:
    """The idempotency key of acknowledging ``work_ids``: the same ids, the same key (a
    retried acknowledgement replays), whatever order they were handled in."""
    if len(work_ids) == 1:
        return f"ack-{work_ids[0]}"
    joined = "\n".join(sorted(work_ids)).encode()
    return f"ack-{len(work_ids)}-{hashlib.sha256(joined).hexdigest()}"


#: Backoff between attempts to reopen a broken stream (unbounded attempts).
RECONNECT = RetryPolicy(initial_backoff=0.2, max_backoff=10.0)
#: Backoff before subscribing again to get a failed item back.
REDELIVERY = RetryPolicy(initial_backoff=0.5, max_backoff=30.0)


@dataclass(slots=True)
class SubscriptionStats:
    """What a subscription did so far (for logs, metrics and tests)."""

    subscriptions: int = 0
    delivered: int = 0
    handled: int = 0
    failed: int = 0
    acknowledged: int = 0
    #: Items of kinds this subscription leaves to the partner's other subscribers.
    left: int = 0


class WorkSource(Protocol):
    """What a subscription needs from the client that made it (``PartnerClient``):
    the stream of work, and acknowledging what was handled."""

    def _subscribe_call(
        self, max_in_flight: int
    ) -> grpc.aio.UnaryStreamCall[work_pb2.SubscribeRequest, work_pb2.SubscribeResponse]: ...

    async def acknowledge(
        self,
        work_ids: Sequence[str],
        *,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> int: ...


class _Drop:
    """Queue marker: end the current stream and subscribe again."""


class _End:
    def __init__(self, error: grpc.aio.AioRpcError | None) -> None:
        self.error = error


class WorkSubscription:
    """Receives work for one partner and runs ``handler`` on each item.

    - at most ``concurrency`` handlers run at once; the gateway sends at most
      ``max_in_flight`` unacknowledged items;
    - an item is acknowledged only after its handler returned (items whose handlers
      return while an acknowledgement is on its way go together in the next one, so a
      busy partner makes one call for many items, and an idle one waits for nothing);
      a handler that
      raises leaves it unacknowledged, and the subscription starts again after
      ``redelivery`` backoff so the gateway sends it again;
    - a broken stream is reopened with ``reconnect`` backoff, forever, until
      ``stop``; a refused subscription (wrong role, …) raises its ``GatewayError``.

    Handlers must tolerate seeing an item twice (at-least-once delivery): keying
    the calls they make on ``item.work_id`` makes the gateway replay them.
    """

    def __init__(
        self,
        client: WorkSource,
        handler: Handler,
        *,
        max_in_flight: int = 16,
        concurrency: int = 4,
        reconnect: RetryPolicy = RECONNECT,
        redelivery: RetryPolicy = REDELIVERY,
        stop_grace: float = 5.0,
        kinds: tuple[type, ...] = (),
    ) -> None:
        if concurrency < 1 or max_in_flight < 1:
            raise ValueError("concurrency and max_in_flight must be at least 1")
        self._client = client
        self._handler = handler
        self._max_in_flight = max_in_flight
        self._slots = asyncio.Semaphore(concurrency)
        self._reconnect = Backoff(reconnect)
        self._redelivery = Backoff(redelivery)
        self._stop_grace = stop_grace
        self._kinds = kinds
        self._queue: asyncio.Queue[work_pb2.WorkItem | _Drop | _End] | None = None
        self._in_progress: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._redelivery_timer: asyncio.TimerHandle | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Handled items waiting for their acknowledgement, and the task sending them.
        self._acks: list[tuple[str, asyncio.Future[bool]]] = []
        self._acking: asyncio.Task[None] | None = None
        self.stats = SubscriptionStats()

    # -- lifecycle ----------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self.run(), name="coopgate-work-subscription")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait(self) -> None:
        """Until the subscription ends (``stop``, or a refused subscription, raised here)."""
        if self._task is not None:
            await self._task

    def stop(self) -> None:
        """End the subscription; handlers still running get ``stop_grace`` to finish."""
        self._stopping.set()
        self._drop()

    async def close(self) -> None:
        """Stop, and wait for the background run (cancelled if its handlers hang)."""
        self.stop()
        if self._task is None:
            return
        done, _ = await asyncio.wait({self._task}, timeout=self._stop_grace + 1)
        if not done:
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def reconnect(self) -> None:
        """Drop the current stream now and subscribe again: every unacknowledged
        item not being handled is delivered again."""
        self._drop()

    def _drop(self) -> None:
        if self._queue is not None:
            self._queue.put_nowait(_Drop())

    # -- the loop -------------------------------------------------------------

    async def run(self) -> None:
        """Subscribe, handle, acknowledge; reconnect on stream failures until ``stop``."""
        try:
            while not self._stopping.is_set():
                queue: asyncio.Queue[work_pb2.WorkItem | _Drop | _End] = asyncio.Queue()
                self._queue = queue
                call = self._client._subscribe_call(self._max_in_flight)
                self.stats.subscriptions += 1
                reader = asyncio.create_task(self._read(call, queue))
                try:
                    error = await self._consume(queue)
                finally:
                    call.cancel()
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
                if self._stopping.is_set():
                    break
                if error is not None:
                    if error.code() not in _RECONNECTABLE:
                        raise from_rpc_error(error, method="Subscribe")
                    delay = self._reconnect.next()
                    log.warning(
                        "work stream broke (%s: %s); subscribing again in %.2fs",
                        error.code().name,
                        error.details(),
                        delay,
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), delay)
        finally:
            self._queue = None
            if self._redelivery_timer is not None:
                self._redelivery_timer.cancel()
            await self._finish_handlers()
            if self._acking is not None and not self._acking.done():
                self._acking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._acking

    async def _read(
        self,
        call: grpc.aio.UnaryStreamCall[work_pb2.SubscribeRequest, work_pb2.SubscribeResponse],
        queue: asyncio.Queue[work_pb2.WorkItem | _Drop | _End],
    ) -> None:
        try:
            async for response in call:
                queue.put_nowait(response.item)
        except grpc.aio.AioRpcError as error:
            queue.put_nowait(_End(error))
            return
        queue.put_nowait(_End(None))

    async def _consume(
        self, queue: asyncio.Queue[work_pb2.WorkItem | _Drop | _End]
    ) -> grpc.aio.AioRpcError | None:
        """Handle items until the stream ends (its error, if any) or a drop is asked."""
        while True:
            got = await queue.get()
            if isinstance(got, _Drop):
                return None
            if isinstance(got, _End):
                if got.error is None:
                    log.info("the gateway ended the work stream; subscribing again")
                return got.error
            self._reconnect.reset()
            item = work_item_from_proto(got)
            if item.work_id in self._in_progress:
                continue  # redelivered while its handler still runs
            if self._kinds and not isinstance(item.payload, self._kinds):
                self.stats.left += 1
                continue  # another subscriber of this partner handles it
            self.stats.delivered += 1
            await self._slots.acquire()
            self._in_progress.add(item.work_id)
            task = asyncio.create_task(self._handle(item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, item: WorkItem) -> None:
        try:
            try:
                await self._handler(item)
            except Exception as exc:
                self.stats.failed += 1
                log.warning(
                    "handler failed on %s (%s: %s); left unacknowledged for redelivery",
                    item.work_id,
                    type(exc).__name__,
                    str(exc).partition("\n")[0],
                )
                self._schedule_redelivery()
                return
            self.stats.handled += 1
            if not await self._acknowledged(item.work_id):
                self._schedule_redelivery()
                return
            self.stats.acknowledged += 1
            self._redelivery.reset()
        finally:
            self._in_progress.discard(item.work_id)
            self._slots.release()

    def _acknowledged(self, work_id: str) -> asyncio.Future[bool]:
        """Whether ``work_id`` was acknowledged: it goes in the next acknowledgement,
        sent at once unless one is on its way (then right after it)."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._acks.append((work_id, done))
        if self._acking is None or self._acking.done():
            self._acking = asyncio.create_task(self._acknowledge_batches())
        return done

    async def _acknowledge_batches(self) -> None:
        while self._acks:
            batch, self._acks = self._acks[:MAX_ACK_BATCH], self._acks[MAX_ACK_BATCH:]
            ids = [work_id for work_id, _ in batch]
            try:
                await self._client.acknowledge(ids, idempotency_key=acknowledgement_key(ids))
            except GatewayError as exc:
                log.warning(
                    "acknowledging %d item(s) failed (%s); they will come again", len(ids), exc
                )
                _settle(batch, False)
            except asyncio.CancelledError:
                for _, done in [*batch, *self._acks]:
                    done.cancel()
                raise
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)  # raised in each item's handling task
            else:
                _settle(batch, True)

    def _schedule_redelivery(self) -> None:
        if self._redelivery_timer is not None or self._stopping.is_set():
            return
        delay = self._redelivery.next()

        def fire() -> None:
            self._redelivery_timer = None
            self._drop()

        self._redelivery_timer = asyncio.get_running_loop().call_later(delay, fire)

    async def _finish_handlers(self) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=self._stop_grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


def _settle(batch: Sequence[tuple[str, asyncio.Future[bool]]], acknowledged: bool) -> None:
    for _, done in batch:
        if not done.done():
            done.set_result(acknowledged)
