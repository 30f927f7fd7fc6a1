"""A server call's span at a fraction of the SDK's cost: `CallSpans.start` decides as the
SDK's ``Tracer.start_span`` does (the tracer's sampler, id generator, processors,
resource and scope; the parent from the context given, else the current one) and hands
the ended span to the same processors as a ``ReadableSpan``, so exporters see what they
would have seen. What it leaves out is the SDK span's general machinery, paid on every
call: a lock, the attribute cleaning of ``BoundedAttributes``, bounded event and link
lists, the SDK's own span metrics (off unless asked for) and the processors' not yet
specified ``_on_ending`` hook (no processor here has one). Measured in the gateway
serving the case view at 16 callers: the SDK's ``start_span`` took 30 µs of the event
loop's time a call, about a third of what tracing added there; start and end together
cost a third of the SDK's (micro-benchmark, warm: 6 µs against 19).

Only the gateway's SERVER spans are made here (`gateway.telemetry.server`); every other
span is the SDK's. With a tracer that is not the SDK's, the tracer makes them."""

from __future__ import annotations

import traceback
from time import time_ns
from typing import Any

from opentelemetry import trace
from opentelemetry.attributes import _clean_attribute_value  # the SDK's own
from opentelemetry.context import Context
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AnyValue, Attributes

_PLAIN = (str, bool, int, float)
_UNSET = Status(StatusCode.UNSET)


class CallSpans:
    """Makes the SERVER spans of one tracer (an SDK ``Tracer``: see `for_tracer`)."""

    def __init__(self, tracer: sdk_trace.Tracer) -> None:
        self._tracer = tracer
        limits = tracer._span_limits  # (private: the SDK is pinned in pyproject)
        self._max_attributes = limits.max_span_attributes
        self._max_length = limits.max_span_attribute_length

    @staticmethod
    def for_tracer(tracer: trace.Tracer) -> CallSpans | None:
        return CallSpans(tracer) if isinstance(tracer, sdk_trace.Tracer) else None

    def start(
        self, name: str, parent: Context | None, attributes: dict[str, AnyValue]
    ) -> trace.Span:
        """A started SERVER span, as ``tracer.start_span(name, parent, SERVER, attributes)``
        (not made current: the caller attaches it)."""
        tracer = self._tracer
        if not tracer._is_enabled():
            return tracer.start_span(name, parent, SpanKind.SERVER, attributes)
        parent_span: SpanContext | None = trace.get_current_span(parent).get_span_context()
        if parent_span is not None and parent_span.is_valid:
            trace_id = parent_span.trace_id
            random_id = parent_span.trace_flags.random_trace_id
        else:
            parent_span = None
            trace_id = tracer.id_generator.generate_trace_id()
            random_id = tracer.id_generator.is_trace_id_random()
        sampling = tracer.sampler.should_sample(
            parent, trace_id, name, SpanKind.SERVER, attributes, ()
        )
        sampled = sampling.decision is Decision.RECORD_AND_SAMPLE
        flags = TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT
        if random_id:
            flags |= TraceFlags.RANDOM_TRACE_ID
        context = SpanContext(
            trace_id,
            tracer.id_generator.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(flags),
            trace_state=sampling.trace_state,
        )
        if sampling.decision is Decision.DROP:
            return trace.NonRecordingSpan(context)
        span = CallSpan(self, name, context, parent_span, dict(sampling.attributes))
        tracer.span_processor.on_start(span, parent_context=parent)  # type: ignore[arg-type]
        return span

    def _ended(self, span: CallSpan) -> None:
        tracer = self._tracer
        tracer.span_processor.on_end(
            sdk_trace.ReadableSpan(
                name=span._name,
                context=span._context,
                parent=span._parent,
                resource=tracer.resource,
                attributes=span._attributes,
                events=tuple(span._events),
                kind=SpanKind.SERVER,
                instrumentation_info=tracer.instrumentation_info,
                status=span._status,
                start_time=span._start,
                end_time=span._end,
                instrumentation_scope=tracer._instrumentation_scope,
            )
        )


class CallSpan(trace.Span):
    """A recording SERVER span: attributes in a plain dict (strings, numbers and booleans
    as given, other values cleaned as the SDK cleans them), within the tracer's limits."""

    __slots__ = (
        "_attributes",
        "_context",
        "_end",
        "_events",
        "_name",
        "_parent",
        "_spans",
        "_start",
        "_status",
    )

    def __init__(
        self,
        spans: CallSpans,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, Any],
    ) -> None:
        self._spans = spans
        self._name = name
        self._context = context
        self._parent = parent
        self._attributes: dict[str, Any] = {}
        self._events: list[sdk_trace.Event] = []
        self._status = _UNSET
        self._end: int | None = None
        for key, value in attributes.items():
            self.set_attribute(key, value)
        self._start = time_ns()

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end is None

    def set_attribute(self, key: str, value: AnyValue) -> None:
        """As ``BoundedAttributes`` keeps it: a bad key dropped, values cleaned (strings,
        numbers and booleans as given unless a length limit is set), the oldest attribute
        dropped for a new one past the count limit."""
        if self._end is not None or not key or type(key) is not str:
            return
        spans = self._spans
        if type(value) not in _PLAIN or (spans._max_length is not None and type(value) is str):
            value = _clean_attribute_value(value, spans._max_length)
        attributes = self._attributes
        limit = spans._max_attributes
        if limit is not None and key not in attributes and len(attributes) >= limit:
            if limit == 0:
                return
            del attributes[next(iter(attributes))]
        attributes[key] = value

    def set_attributes(self, attributes: dict[str, AnyValue]) -> None:  # type: ignore[override]
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._end is not None:
            return
        cleaned = {
            key: _clean_attribute_value(value, self._spans._max_length)
            for key, value in (attributes or {}).items()
            if key and type(key) is str
        }
        self._events.append(
            sdk_trace.Event(name, cleaned, timestamp if timestamp is not None else time_ns())
        )

    def update_name(self, name: str) -> None:
        if self._end is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._end is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is not StatusCode.UNSET:
                self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """As the SDK records it: an ``exception`` event with its type, message and trace."""
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        event: dict[str, AnyValue] = {
            "exception.type": f"{module}.{qualname}"
            if module and module != "builtins"
            else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        event.update(attributes or {})
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end is not None:
            return
        self._end = end_time if end_time is not None else time_ns()
        self._spans._ended(self)
