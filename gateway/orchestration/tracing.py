"""Temporal's side of the incident's trace: the OpenTelemetry tracing interceptor on the
client (starts, signals, updates) and, through the client, on the worker (the workflow
and each activity), when this process traces; and the activity spans' attributes,
read from each activity's one input dataclass (ids and outcomes only).

The interceptor writes the current context into each start's, signal's, update's and
activity's headers, which Temporal keeps in the workflow's history, out of erasure's
reach. Only the W3C trace context crosses there (trace and span ids, the vendors'
``tracestate``): a caller's W3C baggage, free text a partner chooses (it could name a
customer), stays at the gateway. It is the interceptor's documented way to change its
propagator (a subclass, on the client and in the workflow alike); it also spares a
baggage parse and write at each of an incident's 28 header crossings."""

from __future__ import annotations

from typing import Any

from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from temporalio.contrib.opentelemetry import TracingInterceptor, TracingWorkflowInboundInterceptor
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from gateway.telemetry import annotate, tracing_on

#: What crosses into Temporal's headers: the W3C trace context alone (no baggage).
_TRACE_CONTEXT = TraceContextTextMapPropagator()


class _TraceContextInWorkflow(TracingWorkflowInboundInterceptor):
    def __init__(self, next: WorkflowInboundInterceptor) -> None:
        super().__init__(next)
        self.text_map_propagator = _TRACE_CONTEXT


class TraceContextInterceptor(TracingInterceptor):
    """Temporal's tracing interceptor, carrying the trace context and nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.text_map_propagator = _TRACE_CONTEXT

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[TracingWorkflowInboundInterceptor]:
        super().workflow_interceptor_class(input)  # the workflow's extern functions
        return _TraceContextInWorkflow


def client_interceptors() -> list[Any]:
    """The Temporal client's interceptors: tracing when on, else none (a worker made
    from the client takes them too)."""
    return [TraceContextInterceptor()] if tracing_on() else []


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
            annotate(**activity_attributes(input.args[0]))
        return await super().execute_activity(input)


def activity_attributes(request: Any) -> dict[str, str]:
    """An activity's (or a step's) span attributes, from its one input dataclass."""
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
