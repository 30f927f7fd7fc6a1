"""The partner SDK's calls to the gateway's work service: acknowledging, and the
subscription that delivers work (``PartnerClient`` composes them)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from coopgate.v1 import work_pb2

from partners.calls import ClientBase
from partners.retry import RetryPolicy
from partners.tracing import continuing
from partners.work import RECONNECT, REDELIVERY, Handler, WorkSubscription


class WorkCalls(ClientBase):
    """The work service's calls: acknowledge work and subscribe to it."""

    # -- work ----------------------------------------------------------------------

    async def acknowledge(
        self,
        work_ids: Sequence[str],
        *,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> int:
        """Tell the gateway these items were handled; returns how many were still pending."""
        request = work_pb2.AcknowledgeRequest(
            idempotency_key=self._key(idempotency_key), work_ids=list(work_ids)
        )
        response = await self._call("Acknowledge", self._work.Acknowledge, request, deadline)
        return response.acknowledged

    def subscribe(
        self,
        handler: Handler,
        *,
        max_in_flight: int = 16,
        concurrency: int = 4,
        reconnect: RetryPolicy | None = None,
        redelivery: RetryPolicy | None = None,
        kinds: tuple[type, ...] = (),
    ) -> WorkSubscription:
        """This partner's work, handled by ``handler``; ``async with`` runs it in the
        background, ``await subscription.run()`` in the foreground (partner role only).
        With ``kinds`` (payload classes), items of other kinds are neither handled nor
        acknowledged: they stay for this partner's other subscribers (its backend)."""
        return WorkSubscription(
            self,
            continuing(handler),
            max_in_flight=max_in_flight,
            concurrency=concurrency,
            reconnect=reconnect or RECONNECT,
            redelivery=redelivery or REDELIVERY,
            kinds=kinds,
        )

    def _subscribe_call(
        self, max_in_flight: int
    ) -> grpc.aio.UnaryStreamCall[work_pb2.SubscribeRequest, work_pb2.SubscribeResponse]:
        return self._work.Subscribe(
            work_pb2.SubscribeRequest(max_in_flight=max_in_flight), metadata=self._metadata()
        )
