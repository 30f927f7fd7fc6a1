"""Per-partner quotas: how many streams and in-flight calls one partner may hold at once.

One noisy partner (a leak of watchers, a retry storm) then meets RESOURCE_EXHAUSTED
``PARTNER_QUOTA_EXCEEDED`` with ``google.rpc.RetryInfo``, and the others are served as
before. The count is by partner (the certificate's organisation), whatever the role.
A server-streaming call holds a stream slot for as long as it is open; a unary call
holds a call slot until it answers. The interceptor takes a slot before the handler
runs and gives it back in ``finally`` (cancelled calls included). Everything runs on
the server's event loop: plain counters, no lock.
"""

from __future__ import annotations

from gateway.core.errors import ResourceExhausted

#: What a refused caller is told to wait before trying again (``RetryInfo``).
RETRY_AFTER_SECONDS = 1.0


class Slots:
    """At most ``limit`` held at once per partner, of one ``kind`` (streams, calls)."""

    __slots__ = ("held", "kind", "limit", "retry_after")

    def __init__(self, kind: str, limit: int, retry_after: float = RETRY_AFTER_SECONDS) -> None:
        if limit < 1:
            raise ValueError(f"a partner's {kind} limit must be at least 1, not {limit}")
        self.kind = kind
        self.limit = limit
        self.retry_after = retry_after
        self.held: dict[str, int] = {}

    def take(self, partner_id: str) -> None:
        """Hold one more slot for ``partner_id``, or refuse: RESOURCE_EXHAUSTED. Every
        successful ``take`` is followed by exactly one ``give_back``."""
        held = self.held.get(partner_id, 0)
        if held >= self.limit:
            raise ResourceExhausted(
                f"too many concurrent {self.kind} for this partner (at most {self.limit}); "
                "retry later",
                retry_after=self.retry_after,
                reason="PARTNER_QUOTA_EXCEEDED",
                metadata={"quota": self.kind, "limit": str(self.limit)},
            )
        self.held[partner_id] = held + 1

    def give_back(self, partner_id: str) -> None:
        held = self.held[partner_id] - 1
        if held:
            self.held[partner_id] = held
        else:
            del self.held[partner_id]


class PartnerQuota:
    """The two per-partner limits of one gateway process."""

    __slots__ = ("calls", "streams")

    def __init__(
        self, max_streams: int, max_in_flight: int, retry_after: float = RETRY_AFTER_SECONDS
    ) -> None:
        self.streams = Slots("streams", max_streams, retry_after)
        self.calls = Slots("calls", max_in_flight, retry_after)
