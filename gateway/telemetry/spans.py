"""Span helpers: the attributes an incident's spans carry, and W3C Trace Context on the
work items that cross to partners.

Attributes are ids and outcomes only: ``coopgate.case_id``, ``coopgate.service``,
``coopgate.partner``, ``coopgate.rule``, ``coopgate.outcome``; never a customer's
identifier (not even a pseudonym) or any text of the case."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

CASE_ID = "coopgate.case_id"
SERVICE = "coopgate.service"
PARTNER = "coopgate.partner"
RULE = "coopgate.rule"
OUTCOME = "coopgate.outcome"

_ATTRIBUTES = {
    "case_id": CASE_ID,
    "service": SERVICE,
    "partner": PARTNER,
    "rule": RULE,
    "outcome": OUTCOME,
}


def tracer(name: str) -> trace.Tracer:
    """A module's tracer, which may be made at import, before `configure` installs the
    provider (`ModuleTracer`)."""
    return ModuleTracer(name)


class ModuleTracer(trace.Tracer):
    """A tracer asked of the provider at its first span once a provider is installed:
    OpenTelemetry's `ProxyTracer`, which a tracer made before then is, puts one more
    context manager around each of its spans for the process's life."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._real: trace.Tracer | None = None

    def resolved(self) -> trace.Tracer:
        """The provider's tracer (OpenTelemetry's proxy until a provider is installed)."""
        if self._real is not None:
            return self._real
        provider = trace.get_tracer_provider()
        real = provider.get_tracer(self._name)
        if not isinstance(provider, trace.ProxyTracerProvider):
            self._real = real
        return real

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self.resolved().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolved().start_as_current_span(*args, **kwargs)


@contextmanager
def step_span(
    tracer: trace.Tracer,
    name: str,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: dict[str, str] | None = None,
    context: Context | None = None,
) -> Iterator[trace.Span]:
    """A span current while a step runs. A step that fails leaves the status ERROR with
    its exception's type alone: no message, no stack (a driver's message can quote the
    values it was given, a customer's among them)."""
    with tracer.start_as_current_span(
        name,
        context=context,
        kind=kind,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except Exception as error:
            failed(span, error)
            raise


def failed(span: trace.Span, error: BaseException) -> None:
    """``span``'s status: ERROR, naming ``error``'s type (never its message)."""
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))


def annotate(**values: str) -> None:
    """Set ``case_id``, ``service``, ``partner``, ``rule``, ``outcome`` (empty ones
    skipped) on the current span, if it records."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    for key, value in values.items():
        if value:
            span.set_attribute(_ATTRIBUTES[key], value)


def named(**values: str) -> dict[str, str]:
    """``case_id``, ``service``, ``partner``, ``rule``, ``outcome`` as span attributes
    (``coopgate.case_id``...), empty ones left out."""
    return {_ATTRIBUTES[key]: value for key, value in values.items() if value}


class _TraceCarrier(Protocol):
    traceparent: str
    tracestate: str


#: The W3C Trace Context fields alone (a work item has no other: no baggage crosses).
_TRACE_CONTEXT = TraceContextTextMapPropagator()


def inject_into(item: _TraceCarrier, context: Context | None = None) -> None:
    """Write the trace context (``context``'s, else the current one) into ``item``'s
    ``traceparent`` / ``tracestate`` (left empty when nothing is traced)."""
    carrier: dict[str, str] = {}
    _TRACE_CONTEXT.inject(carrier, context)
    item.traceparent = carrier.get("traceparent", "")
    item.tracestate = carrier.get("tracestate", "")


#: Server-side codes that make a span an error (OpenTelemetry's RPC conventions); the
#: others are the caller's mistakes, recorded as the status code only.
_SERVER_ERRORS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)


def mark_status(code: Any) -> None:
    """The current (server) span ends with ``code`` (a ``grpc.StatusCode``)."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code.name in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, code.name))
