"""The gateway's own SERVER spans export what the SDK's would: same ids' rules, parent,
attributes, status, events, sampling; only cheaper to make."""

from __future__ import annotations

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AnyValue

from gateway.telemetry.callspan import CallSpan, CallSpans

ATTRIBUTES: dict[str, AnyValue] = {
    "rpc.system": "grpc",
    "rpc.method": "GetCaseView",
    "rpc.grpc.status_code": 0,
}
CALLER = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def _provider(**kwargs: object) -> tuple[trace.Tracer, InMemorySpanExporter]:
    exported = InMemorySpanExporter()
    provider = TracerProvider(**kwargs)  # type: ignore[arg-type]
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return provider.get_tracer("gateway.api"), exported


def _call(make: str, tracer: trace.Tracer, carrier: dict[str, str]) -> None:
    parent = propagate.extract(carrier) if carrier else None
    if make == "ours":
        spans = CallSpans.for_tracer(tracer)
        assert spans is not None
        span = spans.start("/svc/M", parent, ATTRIBUTES)
    else:
        span = tracer.start_span("/svc/M", parent, SpanKind.SERVER, ATTRIBUTES)
    span.set_attribute("coopgate.case_id", "case-1")
    span.set_attribute("coopgate.tags", ["a", "b"])  # cleaned to a tuple, as the SDK does
    span.set_attribute("", "dropped")
    span.set_status(Status(StatusCode.ERROR, "INTERNAL"))
    span.set_status(StatusCode.UNSET)  # ignored
    span.record_exception(ValueError("boom"))
    span.end()
    span.set_attribute("after", "end")  # ignored


def _shape(span: ReadableSpan) -> tuple[object, ...]:
    assert span.context is not None
    return (
        span.name,
        span.kind,
        span.parent.span_id if span.parent else None,
        span.parent.trace_id if span.parent else None,
        span.context.trace_flags,
        dict(span.attributes or {}),
        span.status.status_code,
        span.status.description,
        [(e.name, sorted((e.attributes or {}).keys())) for e in span.events],
        span.resource,
        span.instrumentation_scope,
        span.start_time is not None and span.end_time is not None,
    )


def test_our_spans_export_what_the_sdk_spans_would() -> None:
    for carrier in ({}, CALLER):
        tracer, exported = _provider()
        _call("sdk", tracer, carrier)
        _call("ours", tracer, carrier)
        sdk, ours = exported.get_finished_spans()
        assert _shape(ours) == _shape(sdk)
        assert ours.events[0].attributes["exception.type"] == "ValueError"  # type: ignore[index]
        assert ours.start_time <= ours.end_time  # type: ignore[operator]
        if carrier:
            assert ours.context is not None
            assert ours.context.trace_id == int("0af7651916cd43dd8448eb211c80319c", 16)


def test_the_sampler_decides_and_unsampled_calls_still_carry_their_trace() -> None:
    tracer, exported = _provider(sampler=ParentBased(ALWAYS_OFF))
    spans = CallSpans.for_tracer(tracer)
    assert spans is not None
    dropped = spans.start("/svc/M", None, ATTRIBUTES)
    assert not isinstance(dropped, CallSpan)
    assert not dropped.is_recording()
    assert dropped.get_span_context().is_valid
    dropped.end()
    kept = spans.start("/svc/M", propagate.extract(CALLER), ATTRIBUTES)  # sampled caller
    assert kept.is_recording()
    kept.end()
    assert [s.name for s in exported.get_finished_spans()] == ["/svc/M"]
    assert CallSpans.for_tracer(trace.NoOpTracer()) is None


def test_attribute_limits_hold_as_in_the_sdk() -> None:
    limits = SpanLimits(max_span_attributes=4, max_span_attribute_length=3)
    tracer, exported = _provider(span_limits=limits, sampler=ALWAYS_ON)
    spans = CallSpans.for_tracer(tracer)
    assert spans is not None
    span = spans.start("/svc/M", None, ATTRIBUTES)
    span.set_attribute("coopgate.case_id", "case-1")
    span.set_attribute("coopgate.partner", "bank-a")
    span.end()
    (ours,) = exported.get_finished_spans()
    assert dict(ours.attributes or {}) == {
        "rpc.method": "Get",
        "rpc.grpc.status_code": 0,
        "coopgate.case_id": "cas",
        "coopgate.partner": "ban",
    }
