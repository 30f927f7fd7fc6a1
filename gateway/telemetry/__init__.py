"""Observability: providers from the standard ``OTEL_*`` variables, the gateway's
metrics, log lines with trace ids, and the embedded stack's own telemetry store."""

from gateway.telemetry.local import LocalTelemetry, PointRow, SpanRow
from gateway.telemetry.logs import configure_logging
from gateway.telemetry.setup import (
    Telemetry,
    TelemetryError,
    configure,
    metrics_on,
    observing,
    set_tracing,
    tracing_on,
    waiting_work_gauge,
)
from gateway.telemetry.spans import annotate, inject_into, tracer

__all__ = [
    "LocalTelemetry",
    "PointRow",
    "SpanRow",
    "Telemetry",
    "TelemetryError",
    "annotate",
    "configure",
    "configure_logging",
    "inject_into",
    "metrics_on",
    "observing",
    "set_tracing",
    "tracer",
    "tracing_on",
    "waiting_work_gauge",
]
