"""W3C Trace Context through the SDK, with the OpenTelemetry API alone: a work item's
``traceparent`` is continued while its handler runs, and every call the SDK makes
carries the current context as ``traceparent`` / ``tracestate`` metadata. Your answer
to a diagnosis request thus joins the incident's trace at the gateway; with an
OpenTelemetry SDK configured in your process, your own spans join it too (the handler
runs in a ``coopgate.work <kind>`` consumer span). Without one, nothing is recorded and
the context is only passed on."""

from __future__ import annotations

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from partners.work import Handler, WorkItem

_tracer = trace.get_tracer("partners")


def continuing(handler: Handler) -> Handler:
    """``handler``, run as the consumer of each item in the item's trace (as is when
    the item carries none)."""

    async def handle(item: WorkItem) -> None:
        if not item.traceparent:
            return await handler(item)
        parent = propagate.extract({"traceparent": item.traceparent, "tracestate": item.tracestate})
        case_id = getattr(item.payload, "case_id", "")
        with _tracer.start_as_current_span(
            f"coopgate.work {type(item.payload).__name__}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={"coopgate.case_id": case_id} if case_id else {},
        ):
            return await handler(item)

    return handle


def with_trace_context(
    metadata: tuple[tuple[str, str], ...] | None,
) -> tuple[tuple[str, str], ...] | None:
    """``metadata`` and the current trace context (unchanged when there is none)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        return metadata
    return (*(metadata or ()), *carrier.items())
