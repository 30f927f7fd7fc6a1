"""Retry timing: exponential backoff with jitter.

Jitter spreads the retries of many partners that lost the gateway at the same
moment, so they do not all come back in the same millisecond.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a call that found the gateway UNAVAILABLE.

    The n-th retry (from 0) waits ``min(max_backoff, initial_backoff * multiplier**n)``
    scaled down by a random factor in ``[1 - jitter, 1]``.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be in [0, 1]")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("need 0 <= initial_backoff <= max_backoff")

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first retry)."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** min(retry, 64))
        return ceiling * (1 - self.jitter * (rng or random).random())


class Backoff:
    """The growing delays of an unbounded retry loop (reconnecting a stream);
    ``reset`` after a success starts again from the shortest delay."""

    def __init__(self, policy: RetryPolicy, rng: random.Random | None = None) -> None:
        self._policy = policy
        self._rng = rng
        self._retries = 0

    def next(self) -> float:
        delay = self._policy.delay(self._retries, self._rng)
        self._retries += 1
        return delay

    def reset(self) -> None:
        self._retries = 0

    @property
    def retries(self) -> int:
        return self._retries
