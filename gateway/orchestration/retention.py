"""The activity of `RetentionWorkflow`: shred the cases closed for longer than the
retention period before the workflow's time (`Erasure.expire`, audited like an
erasure, every recipient told), and say when the next one is due."""

from __future__ import annotations

import datetime as dt

from temporalio import activity

from gateway.identity.erasure import Erasure
from gateway.orchestration.shared import ts
from workflows.contracts import EXPIRE_CLOSED_CASES, ExpireInput, ExpireResult


class RetentionActivities:
    def __init__(self, erasure: Erasure, retention_days: float, sweep_seconds: float) -> None:
        self._erasure = erasure
        self._retention = dt.timedelta(days=retention_days)
        self._sweep_s = sweep_seconds

    @property
    def enabled(self) -> bool:
        return self._retention > dt.timedelta(0) and self._sweep_s > 0

    @activity.defn(name=EXPIRE_CLOSED_CASES)
    async def expire_closed_cases(self, request: ExpireInput) -> ExpireResult:
        if not self.enabled:
            return ExpireResult(expired=0, sweep_s=0.0)
        expired = await self._erasure.expire(self._retention, ts(request.now_s))
        due = await self._erasure.next_expiry(self._retention)
        return ExpireResult(
            expired=expired,
            sweep_s=self._sweep_s,
            next_due_s=due.timestamp() if due is not None else None,
        )
