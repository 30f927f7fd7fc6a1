"""The span helpers: a step's span that names a failure's type and nothing it said; a
module's tracer that stops going through OpenTelemetry's proxy once a provider is in;
the trace context written into a work item."""

from __future__ import annotations

import pytest
from coopgate.v1 import work_pb2
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.telemetry.lean import LeanTracer, LeanTracerProvider
from gateway.telemetry.spans import ModuleTracer, inject_into, step_span
from tests.gateway.telemetry.conftest import Memory

SECRET = "Jeanne Martin, 12 rue des Lilas"


def _tracer() -> tuple[trace.Tracer, InMemorySpanExporter]:
    provider = LeanTracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


def test_a_failed_step_names_the_errors_type_alone() -> None:
    steps, exporter = _tracer()
    with step_span(steps, "RunActivity:ok", attributes={"coopgate.partner": "bank-a"}) as ok:
        assert trace.get_current_span() is ok
    with pytest.raises(LookupError), step_span(steps, "RunActivity:fails", SpanKind.SERVER):
        raise LookupError(SECRET)
    done, failed = exporter.get_finished_spans()

    assert done.status.status_code is StatusCode.UNSET
    assert dict(done.attributes or {}) == {"coopgate.partner": "bank-a"}
    assert failed.kind is SpanKind.SERVER
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "LookupError"
    assert not failed.events  # no exception event: no message, no stack


def test_a_modules_tracer_is_the_providers_own_once_one_is_installed(memory: Memory) -> None:
    made = ModuleTracer("gateway.test")  # as `tracer()` at import, the provider asked later
    with made.start_as_current_span("step") as span:
        pass

    assert isinstance(made.resolved(), LeanTracer)  # not OpenTelemetry's ProxyTracer
    assert made.resolved() is made.resolved()
    finished = {s.context.span_id for s in memory.finished() if s.context}
    assert span.get_span_context().span_id in finished


def test_a_work_item_carries_the_trace_context_and_no_baggage() -> None:
    steps, _ = _tracer()
    token = otel_context.attach(baggage.set_baggage("note", SECRET))
    try:
        with steps.start_as_current_span("current") as current:
            other = steps.start_span("other")
            item, given = work_pb2.WorkItem(), work_pb2.WorkItem()
            inject_into(item)
            inject_into(given, trace.set_span_in_context(other))
    finally:
        otel_context.detach(token)

    at = current.get_span_context()
    assert item.traceparent == f"00-{at.trace_id:032x}-{at.span_id:016x}-{at.trace_flags:02x}"
    assert f"{other.get_span_context().span_id:016x}" in given.traceparent
    assert SECRET not in str(item) + str(given)
