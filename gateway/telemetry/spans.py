"""Span helpers: the attributes an incident's spans carry, and W3C Trace Context on the
work items that cross to partners.

Attributes are ids and outcomes only: ``coopgate.case_id``, ``coopgate.service``,
``coopgate.partner``, ``coopgate.rule``, ``coopgate.outcome``; never a customer's
identifier (not even a pseudonym) or any text of the case."""

from __future__ import annotations

from typing import Any, Protocol

from opentelemetry import propagate, trace
from opentelemetry.trace import Status, StatusCode

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
    return trace.get_tracer(name)


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


def inject_into(item: _TraceCarrier) -> None:
    """Write the current trace context into ``item``'s ``traceparent`` / ``tracestate``
    (left empty when nothing is traced)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
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
