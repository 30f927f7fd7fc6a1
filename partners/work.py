"""Work the gateway hands a partner, as typed values, and the subscription that
delivers it.

Delivery is at least once: the gateway keeps an item until it is acknowledged
and sends unacknowledged items again on the next subscription. The
subscription here acknowledges an item only after the partner's handler
returned, reconnects by itself when the stream breaks, and resubscribes after
a handler failure so that the failed item comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

import grpc
from coopgate.v1 import work_pb2
from google.protobuf import timestamp_pb2

from partners.enums import Channel, ErasureReason
from partners.errors import GatewayError, from_rpc_error
from partners.retry import Backoff, RetryPolicy

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class DiagnosisRequest:
    """Check your component of the service for this case; answer with
    ``PartnerClient.submit_finding`` before ``deadline``."""

    request_id: str
    case_id: str
    service_id: str
    component: str
    #: The customer as this partner knows them; empty when they are not linked.
    customer_local_id: str
    #: This partner's pairwise pseudonym for the customer.
    subject_id: str
    #: What the customer reported; empty unless consent lets this partner see it.
    summary: str
    deadline: dt.datetime | None


@dataclass(slots=True, frozen=True)
class OwnershipDecision:
    """Who the gateway's policy chose to own the relationship and resolve, and why."""

    decision_id: str
    relationship_owner_id: str
    resolver_ids: tuple[str, ...]
    rule: str
    explanation: str


@dataclass(slots=True, frozen=True)
class OwnershipOffer:
    """Become the customer's single point of contact: accept or decline before ``deadline``."""

    offer_id: str
    case_id: str
    service_id: str
    decision: OwnershipDecision
    deadline: dt.datetime | None


@dataclass(slots=True, frozen=True)
class CustomerNotification:
    """Tell the customer, on ``channel`` (the one they used), about a milestone."""

    notification_id: str
    case_id: str
    customer_local_id: str
    channel: Channel
    milestone: str
    message: str


@dataclass(slots=True, frozen=True)
class ConsentPrompt:
    """Ask the customer whether ``recipient_partner_id`` may see this data; answer
    with ``grant_consent(consent_request_id=...)`` or ``refuse_consent_request``."""

    consent_request_id: str
    case_id: str
    customer_local_id: str
    channel: Channel
    source_partner_id: str
    recipient_partner_id: str
    categories: tuple[str, ...]
    purposes: tuple[str, ...]
    reason: str


@dataclass(slots=True, frozen=True)
class CaseNotice:
    """News about a case this partner takes part in (``kind``: ownership, escalation, …)."""

    notice_id: str
    case_id: str
    kind: str
    message: str


@dataclass(slots=True, frozen=True)
class ErasureNotice:
    """A customer's data was erased at the gateway (you are told under GDPR art. 19):
    erase what you received through it. ``reason`` CUSTOMER_REQUEST (art. 17): forget
    the customer, named as you know them (``customer_local_id``, empty when you are not
    linked to them), and the cases you took part in (``case_ids``); RETENTION_EXPIRED:
    forget those cases. Acknowledging it (the subscription does, once your handler
    returned) is recorded in the gateway's audit log, and the gateway then forgets the
    notice too."""

    notice_id: str
    customer_local_id: str
    case_ids: tuple[str, ...]
    erased_at: dt.datetime | None
    reason: ErasureReason


Payload = (
    DiagnosisRequest
    | OwnershipOffer
    | CustomerNotification
    | ConsentPrompt
    | CaseNotice
    | ErasureNotice
)


@dataclass(slots=True, frozen=True)
class WorkItem:
    """One delivery: ``payload`` is None for a kind this SDK does not know yet (acknowledged
    all the same); ``traceparent``/``tracestate``: the W3C Trace Context it was made in."""

    work_id: str
    created_at: dt.datetime | None
    #: How many times it was delivered before this delivery.
    redeliveries: int
    payload: Payload | None
    traceparent: str = ""
    tracestate: str = ""


Handler = Callable[[WorkItem], Awaitable[None]]


def _time(stamp: timestamp_pb2.Timestamp, present: bool) -> dt.datetime | None:
    return stamp.ToDatetime(dt.UTC) if present else None


def work_item_from_proto(item: work_pb2.WorkItem) -> WorkItem:
    """The typed value of a wire work item."""
    payload: Payload | None = None
    match item.WhichOneof("payload"):
        case "diagnosis_request":
            r = item.diagnosis_request
            payload = DiagnosisRequest(
                request_id=r.request_id,
                case_id=r.case_id,
                service_id=r.service_id,
                component=r.component,
                customer_local_id=r.customer_local_id,
                subject_id=r.subject_id,
                summary=r.summary,
                deadline=_time(r.deadline, r.HasField("deadline")),
            )
        case "ownership_offer":
            o = item.ownership_offer
            d = o.decision
            payload = OwnershipOffer(
                offer_id=o.offer_id,
                case_id=o.case_id,
                service_id=o.service_id,
                decision=OwnershipDecision(
                    decision_id=d.decision_id,
                    relationship_owner_id=d.relationship_owner_id,
                    resolver_ids=tuple(d.resolver_ids),
                    rule=d.rule,
                    explanation=d.explanation,
                ),
                deadline=_time(o.deadline, o.HasField("deadline")),
            )
        case "customer_notification":
            n = item.customer_notification
            payload = CustomerNotification(
                notification_id=n.notification_id,
                case_id=n.case_id,
                customer_local_id=n.customer_local_id,
                channel=Channel.of(n.channel),
                milestone=n.milestone,
                message=n.message,
            )
        case "consent_prompt":
            p = item.consent_prompt
            payload = ConsentPrompt(
                consent_request_id=p.consent_request_id,
                case_id=p.case_id,
                customer_local_id=p.customer_local_id,
                channel=Channel.of(p.channel),
                source_partner_id=p.source_partner_id,
                recipient_partner_id=p.recipient_partner_id,
                categories=tuple(p.categories),
                purposes=tuple(p.purposes),
                reason=p.reason,
            )
        case "case_notice":
            c = item.case_notice
            payload = CaseNotice(
                notice_id=c.notice_id, case_id=c.case_id, kind=c.kind, message=c.message
            )
        case "erasure_notice":
            e = item.erasure_notice
            payload = ErasureNotice(
                notice_id=e.notice_id,
                customer_local_id=e.customer_local_id,
                case_ids=tuple(e.case_ids),
                erased_at=_time(e.erased_at, e.HasField("erased_at")),
                reason=ErasureReason.of(e.reason),
            )
    created = _time(item.created_at, item.HasField("created_at"))
    return WorkItem(
        item.work_id, created, item.redeliveries, payload, item.traceparent, item.tracestate
    )


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
    - an item is acknowledged only after its handler returned; a handler that
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
            try:
                await self._client.acknowledge(
                    [item.work_id], idempotency_key=f"ack-{item.work_id}"
                )
            except GatewayError as exc:
                log.warning("acknowledging %s failed (%s); it will come again", item.work_id, exc)
                self._schedule_redelivery()
                return
            self.stats.acknowledged += 1
            self._redelivery.reset()
        finally:
            self._in_progress.discard(item.work_id)
            self._slots.release()

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
