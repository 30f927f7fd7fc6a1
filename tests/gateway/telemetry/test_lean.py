"""The lean tracer provider records what the SDK's records: the same script of span
calls, played on both, exports the same spans (names, kinds, parents, attributes and
what was dropped, events, links, status, scope, resource), samples alike, and hands
its spans to every processor's ``on_start`` and ``on_end``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from gateway.telemetry.lean import LeanSpan, LeanTracerProvider

PROVIDERS: list[type[TracerProvider]] = [TracerProvider, LeanTracerProvider]
RESOURCE = Resource.create({"service.name": "lean-test"})
LIMITS = SpanLimits(max_span_attributes=6, max_span_attribute_length=12, max_events=2)
REMOTE = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))


def _recorded(
    kind: type[TracerProvider], script: Callable[[trace.Tracer], None], sampler: Sampler = ALWAYS_ON
) -> tuple[list[ReadableSpan], TracerProvider]:
    provider = kind(resource=RESOURCE, span_limits=LIMITS, sampler=sampler, shutdown_on_exit=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    script(provider.get_tracer("lean.test", "1.0"))
    return list(exporter.get_finished_spans()), provider


class Refused(Exception):
    pass


def _script(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span(
        "root", kind=SpanKind.SERVER, attributes={"rpc.method": "OpenCase", "n": 3}
    ) as root:
        root.set_attribute("ok", True)
        root.set_attribute("ratio", 0.5)
        root.set_attribute("long", "x" * 40)  # cut at the length limit
        root.set_attribute("list", ["a", "b"])  # a sequence: kept as a tuple
        root.set_attribute("map", {"k": "v"})
        root.set_attribute("", "empty key")  # dropped
        root.set_attributes({"seventh": 7, "eighth": 8})  # past the count: the oldest go
        root.add_event("first", {"k": "v"})
        root.add_event("second")
        root.add_event("third")  # past the event limit: the oldest goes
        root.add_link(REMOTE, {"why": "follows"})
        root.update_name("root renamed")
        with tracer.start_as_current_span("child", kind=SpanKind.CLIENT) as child:
            child.set_status(Status(StatusCode.UNSET))  # ignored
            child.set_status(StatusCode.OK)
            child.set_status(StatusCode.ERROR, "too late")  # OK is final
        with pytest.raises(Refused), tracer.start_as_current_span("fails"):
            raise Refused("no")
        with (
            pytest.raises(Refused),
            tracer.start_as_current_span(
                "unmarked", record_exception=False, set_status_on_exception=False
            ),
        ):
            raise Refused("neither recorded nor a status")
        with pytest.raises(GeneratorExit), tracer.start_as_current_span("exits"):
            raise GeneratorExit  # not an error: no event, no status
        with tracer.start_as_current_span("ended later", end_on_exit=False) as later:
            assert trace.get_current_span() is later
        assert trace.get_current_span() is root
        later.end()
        quiet = tracer.start_span("quiet", record_exception=False, set_status_on_exception=False)
        with pytest.raises(Refused), quiet:
            raise Refused("unrecorded")
        manual = tracer.start_span(
            "manual",
            context=trace.set_span_in_context(NonRecordingSpan(REMOTE)),
            attributes={"cut": "y" * 30, "seq": [1, 2]},  # at the start, by the same rules
            start_time=10,
        )
        manual.set_status(Status(StatusCode.ERROR, "broken"))
        manual.end(end_time=20)
        manual.set_attribute("after", "end")  # ignored
        manual.end()  # a second end: ignored
        crowded = {f"a{i}": i for i in range(8)}  # more at the start than the limit
        tracer.start_span("crowded", attributes=crowded).end()


def _shape(span: ReadableSpan, names: dict[int, str]) -> dict[str, Any]:
    return {
        "name": span.name,
        "kind": span.kind,
        "parent": names.get(span.parent.span_id) if span.parent else None,
        "remote parent": span.parent.is_remote if span.parent else None,
        "attributes": dict(span.attributes or {}),
        "dropped attributes": span.dropped_attributes,
        "events": [
            (e.name, {k: v for k, v in (e.attributes or {}).items() if k != "exception.stacktrace"})
            for e in span.events
        ],
        "stack traces": [
            str((e.attributes or {}).get("exception.stacktrace", "")).splitlines()[-1:]
            for e in span.events
        ],
        "dropped events": span.dropped_events,
        "links": [(link.context.span_id, dict(link.attributes or {})) for link in span.links],
        "status": (span.status.status_code, span.status.description),
        "times": (span.start_time, span.end_time) if span.name == "manual" else None,
        "scope": (span.instrumentation_scope.name, span.instrumentation_scope.version)
        if span.instrumentation_scope
        else None,
        "resource": dict(span.resource.attributes),
        "flags": span.context.trace_flags if span.context else None,
    }


def _shapes(spans: list[ReadableSpan]) -> list[dict[str, Any]]:
    names = {s.context.span_id: s.name for s in spans if s.context}
    return [_shape(s, names) for s in spans]


def test_the_same_calls_record_the_same_spans() -> None:
    sdk, _ = _recorded(TracerProvider, _script)
    lean, _ = _recorded(LeanTracerProvider, _script)

    assert [s.name for s in lean] == [
        "child",
        "fails",
        "unmarked",
        "exits",
        "ended later",
        "quiet",
        "manual",
        "crowded",
        "root renamed",
    ]
    assert all(isinstance(s, LeanSpan) for s in lean)
    assert _shapes(lean) == _shapes(sdk)
    root = lean[-1]
    assert root.attributes is not None
    assert root.attributes["long"] == "x" * 12
    assert root.attributes["list"] == ("a", "b")
    assert "" not in root.attributes
    assert "rpc.method" not in root.attributes
    assert root.attributes["eighth"] == 8
    assert root.dropped_attributes > 0
    assert [e.name for e in root.events] == ["second", "third"]
    assert lean[1].status.status_code is StatusCode.ERROR
    assert lean[1].events[0].attributes is not None
    assert str(lean[1].events[0].attributes["exception.type"]).endswith("Refused")
    manual = lean[6]
    assert manual.parent == REMOTE
    assert manual.context.trace_id == REMOTE.trace_id
    unmarked, exits = lean[2], lean[3]
    assert unmarked.status.status_code is StatusCode.UNSET
    assert not unmarked.events
    assert exits.status.status_code is StatusCode.UNSET
    assert not exits.events


def test_one_trace_parent_to_child() -> None:
    def script(tracer: trace.Tracer) -> None:
        with tracer.start_as_current_span("a"), tracer.start_as_current_span("b"):
            tracer.start_span("c").end()

    spans, _ = _recorded(LeanTracerProvider, script)
    by_name = {s.name: s for s in spans}
    assert {s.context.trace_id for s in spans if s.context} == {by_name["a"].context.trace_id}
    assert by_name["a"].parent is None
    assert by_name["b"].parent == by_name["a"].context
    assert by_name["c"].parent == by_name["b"].context


STATE = TraceState([("vendor", "x1")])


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize(
    ("sampler", "parent", "recorded"),
    [
        (ALWAYS_OFF, None, False),
        (ParentBased(ALWAYS_ON), None, True),
        (ParentBased(ALWAYS_ON), TraceFlags(TraceFlags.DEFAULT), False),
        (ParentBased(ALWAYS_ON), TraceFlags(TraceFlags.SAMPLED), True),
        (ParentBased(ALWAYS_OFF), TraceFlags(TraceFlags.SAMPLED), True),
        # The lean tracer decides for the always-on samplers itself: the same decisions.
        (ALWAYS_ON, None, True),
        (ALWAYS_ON, TraceFlags(TraceFlags.DEFAULT), True),
    ],
)
def test_the_sampler_decides(
    kind: type[TracerProvider], sampler: Sampler, parent: TraceFlags | None, recorded: bool
) -> None:
    made: list[tuple[trace.Span, bool]] = []

    def script(tracer: trace.Tracer) -> None:
        context = None
        if parent is not None:
            remote = SpanContext(
                0x1234, 0x5678, is_remote=True, trace_flags=parent, trace_state=STATE
            )
            context = trace.set_span_in_context(NonRecordingSpan(remote))
        with tracer.start_as_current_span("decided", context=context) as span:
            made.append((span, span.is_recording()))
            assert trace.get_current_span() is span

    spans, _ = _recorded(kind, script, sampler)

    ((span, recording),) = made
    assert recording is recorded
    assert not span.is_recording()  # ended
    assert span.get_span_context().is_valid  # propagated all the same
    assert span.get_span_context().trace_flags.sampled is recorded
    assert [s.name for s in spans] == (["decided"] if recorded else [])
    if parent is not None:
        assert span.get_span_context().trace_id == 0x1234
        assert span.get_span_context().trace_state == STATE  # the parent's, carried on
    else:
        assert not span.get_span_context().trace_state


class _Stamping(SpanProcessor):
    """A processor that names the span it is handed at its start, and keeps its end."""

    def __init__(self) -> None:
        self.ended: list[ReadableSpan] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        span.set_attribute("stamped", True)

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span)


def test_every_processor_sees_each_span_start_and_end() -> None:
    provider = LeanTracerProvider(resource=RESOURCE, shutdown_on_exit=False)
    first, second = _Stamping(), _Stamping()
    provider.add_span_processor(first)
    provider.add_span_processor(second)
    tracer = provider.get_tracer("lean.test")
    assert provider.get_tracer("lean.test") is tracer

    with tracer.start_as_current_span("seen") as span:
        span.set_attribute("k", "v")

    assert [s.name for s in first.ended] == ["seen"] == [s.name for s in second.ended]
    assert dict(first.ended[0].attributes or {}) == {"stamped": True, "k": "v"}
    provider.shutdown()
