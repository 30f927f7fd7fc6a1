"""Temporal's side of the incident's trace: the OpenTelemetry tracing interceptor on the
client (starts, signals, updates) and, through the client, on the worker (the workflow
and each activity), when this process traces; and the activity spans' attributes,
read from each activity's one input dataclass (ids and outcomes only)."""

from __future__ import annotations

from typing import Any

from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from gateway.telemetry import annotate, tracing_on


def client_interceptors() -> list[Any]:
    """The Temporal client's interceptors: tracing when on, else none (a worker made
    from the client takes them too)."""
    return [TracingInterceptor()] if tracing_on() else []


def worker_interceptors() -> list[Interceptor]:
    return [ActivityAttributes()] if tracing_on() else []


class ActivityAttributes(Interceptor):
    """Names each activity span's case, partner, rule and outcome (inside the tracing
    interceptor's span)."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Annotating(next)


class _Annotating(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        if input.args:
            annotate(**_attributes(input.args[0]))
        return await super().execute_activity(input)


def _attributes(request: Any) -> dict[str, str]:
    decision = getattr(request, "decision", None)
    accepted = getattr(request, "accepted", None)
    if accepted is not None:
        outcome = "accepted" if accepted else "fallback"
    elif hasattr(request, "escalation_id"):
        outcome = "escalated"
    else:
        outcome = str(getattr(request, "milestone", "") or "")
    return {
        "case_id": str(getattr(request, "case_id", "") or ""),
        "service": str(getattr(request, "service_id", "") or ""),
        "partner": str(
            getattr(request, "partner_id", "") or getattr(request, "owner_id", "") or ""
        ),
        "rule": str(getattr(decision, "rule", "") or "") if decision is not None else "",
        "outcome": outcome[:64],
    }
