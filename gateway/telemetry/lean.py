"""A tracer provider whose spans cost a fraction of the SDK's own, for a process that
traces every call.

`LeanTracerProvider` is the SDK's `TracerProvider` (its sampler from
``OTEL_TRACES_SAMPLER``, its id generator, resource, span limits, processors, flush and
shutdown) handing out `LeanTracer`s. Their spans are `LeanSpan`s: SDK spans to every
processor and exporter (a `ReadableSpan` with the same fields), made without what the
SDK's `Span` pays for on every span whatever it holds: a lock, a bounded attribute
mapping that checks each value through several calls, two bounded lists, and a second
`ReadableSpan` copied out at the end.

Under the case view's load at 16 callers on a 2-core machine, the SDK's span start
took about 98 µs and its end 29 µs, several times their cost in a tight loop. A lean
server span takes 76 k instructions where the SDK's takes 182 k
(`tests.benchmarks.span_cost` under callgrind), and tracing's cost to an incident's
latency fell from +20% to +3..+11% (docs/BENCHMARKS.md, "Tracing's cost").

What a span holds follows the SDK's rules: attribute values of the primitive types (and
the sequences and maps of them the SDK takes), at most ``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT``,
strings cut at ``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT``; an attribute that is not a
string, bool, int or float of a legal length, or one past the limit, moves the span's
attributes into the SDK's own `BoundedAttributes`, which then checks, drops and counts
as the SDK does. Events and links go through the SDK's bounded lists and attributes.
Status follows the SDK's rules (UNSET ignored, OK final). The SDK's always-on samplers
(``always_on``, and ``parentbased_always_on``, the default) are not asked: the tracer
makes their decision itself, the same one. Left out: the SDK's
experimental tracer configurator and its internal metrics
(``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED``), which this gateway does not turn on."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Mapping, Sequence
from time import time_ns
from types import TracebackType
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import (
    Event,
    ReadableSpan,
    SpanLimits,
    SynchronousMultiSpanProcessor,
    TracerProvider,
    sampling,
)
from opentelemetry.sdk.trace import SpanProcessor as SdkSpanProcessor
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

logger = logging.getLogger(__name__)

_PRIMITIVES = frozenset({str, bool, int, float})
_ALWAYS_ON = {
    sampling.ALWAYS_ON.get_description(): True,
    sampling.ParentBased(sampling.ALWAYS_ON).get_description(): False,  # type: ignore[no-untyped-call]
}
_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


class LeanSpan(ReadableSpan, trace_api.Span):
    """A recording span: its own `ReadableSpan` once ended (processors are handed the
    span itself; nothing changes it after `end`)."""

    def __init__(
        self,
        tracer: LeanTracer,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: types.Attributes,
        links: Sequence[trace_api.Link],
        start_time: int | None,
        record_exception: bool,
        set_status_on_exception: bool,
    ) -> None:
        limits = tracer.limits
        super().__init__(
            name,
            context,
            parent,
            tracer.provider.resource,
            {},
            None,  # type: ignore[arg-type]  # made when the first event comes
            _links(links, limits) if links else (),
            kind,
            None,
            _UNSET,
            start_time if start_time is not None else time_ns(),
            None,
            tracer.scope,
        )
        self._tracer = tracer
        self._record_exception = record_exception
        self._set_status_on_exception = set_status_on_exception
        if attributes:
            if len(attributes) <= tracer.most and all(
                type(key) is str
                and key
                and type(value) in _PRIMITIVES
                and (type(value) is not str or len(value) <= tracer.longest)
                for key, value in attributes.items()
            ):  # as `set_attribute` would take each of them: at once
                self._attributes = dict(attributes)
            else:
                self.set_attributes(attributes)

    # -- recording ---------------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return self._context  # type: ignore[return-value]

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self._end_time is not None:
            logger.warning("Setting attribute on ended span.")
            return
        attributes = self._attributes
        tracer = self._tracer
        kind = type(value)
        if (
            type(attributes) is dict
            and type(key) is str
            and key
            and kind in _PRIMITIVES
            and (kind is not str or len(value) <= tracer.longest)  # type: ignore[arg-type]
            and (key in attributes or len(attributes) < tracer.most)
        ):
            attributes[key] = value
        else:  # anything else, by the SDK's rules: its own mapping takes it
            self._bounded()[key] = value

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def _bounded(self) -> BoundedAttributes:
        attributes = self._attributes
        if not isinstance(attributes, BoundedAttributes):
            limits = self._tracer.limits
            attributes = self._attributes = BoundedAttributes(
                limits.max_span_attributes,
                attributes,
                immutable=False,
                max_value_len=limits.max_span_attribute_length,
            )
        return attributes

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._end_time is not None:
            logger.warning("Calling add_event on an ended span.")
            return
        limits = self._tracer.limits
        if self._events is None:
            self._events = BoundedList(limits.max_events)
        events: BoundedList[Event] = self._events  # type: ignore[assignment]
        events.append(
            Event(
                name,
                BoundedAttributes(
                    limits.max_event_attributes,
                    attributes,
                    immutable=True,
                    max_value_len=limits.max_attribute_length,
                ),
                timestamp,
            )
        )

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self._end_time is not None:
            logger.warning("Calling add_link on an ended span.")
            return
        made = _links([trace_api.Link(context, attributes)], self._tracer.limits)
        if not made:
            return
        if not isinstance(self._links, BoundedList):
            self._links = BoundedList.from_seq(self._tracer.limits.max_links, self._links)
        self._links.extend(made)

    def update_name(self, name: str) -> None:
        if self._end_time is not None:
            logger.warning("Calling update_name on an ended span.")
            return
        self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._end_time is not None:
            logger.warning("Calling set_status on an ended span.")
            return
        if self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is StatusCode.UNSET:
                return
            if description is not None:
                logger.warning(
                    "Description %s ignored. Use either `Status` or `(StatusCode, Description)`",
                    description,
                )
            self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        kind = type(exception)
        module = kind.__module__
        recorded: dict[str, types.AnyValue] = {
            "exception.type": f"{module}.{kind.__qualname__}"
            if module and module != "builtins"
            else kind.__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            recorded.update(attributes)
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            logger.warning("Calling end() on an ended span.")
            return
        self._end_time = end_time if end_time is not None else time_ns()
        if self._events is None:
            self._events = ()
        self._tracer.processor.on_end(self)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if exc_val is not None and self.is_recording():
            if self._record_exception:
                self.record_exception(exc_val, escaped=True)
            if self._set_status_on_exception:
                self.set_status(Status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}"))
        super().__exit__(exc_type, exc_val, exc_tb)

    # -- read back (processors, exporters) ---------------------------------------

    @property
    def dropped_attributes(self) -> int:
        attributes = self._attributes
        return attributes.dropped if isinstance(attributes, BoundedAttributes) else 0

    @property
    def events(self) -> Sequence[Event]:
        return tuple(self._events or ())


def _links(links: Sequence[trace_api.Link], limits: SpanLimits) -> BoundedList[trace_api.Link]:
    """``links`` as the SDK keeps them: valid ones, their attributes bounded."""
    kept = [
        trace_api.Link(
            link.context,
            BoundedAttributes(
                limits.max_link_attributes,
                link.attributes,
                immutable=True,
                max_value_len=limits.max_attribute_length,
            ),
        )
        for link in links
        if link.context and (link.context.is_valid or link.attributes or link.context.trace_state)
    ]
    return BoundedList.from_seq(limits.max_links, kept)


def _or_max(limit: int | None) -> int:
    return sys.maxsize if limit is None else limit


class LeanTracer(trace_api.Tracer):
    """Starts `LeanSpan`s, sampled by the provider's sampler as the SDK's tracer does."""

    def __init__(self, provider: LeanTracerProvider, scope: InstrumentationScope) -> None:
        self.provider = provider  # its resource changes after a fork
        self.sampler: Sampler = provider.sampler
        self.ids = provider.id_generator
        self.processor = provider.processors
        self.limits = provider.limits
        #: The span attribute limits, as numbers (no limit: the largest).
        self.most = _or_max(self.limits.max_span_attributes)
        self.longest = _or_max(self.limits.max_span_attribute_length)
        self.scope = scope
        #: The SDK's always-on samplers, told by their description, decide here: True for
        #: ``always_on`` (every span sampled), False for ``parentbased_always_on`` (the
        #: default: a root span sampled, a child as its parent was); None: ask the sampler.
        self.always_on: bool | None = _ALWAYS_ON.get(self.sampler.get_description())

    def start_span(
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[trace_api.Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace_api.Span:
        parent: SpanContext | None = trace_api.get_current_span(context).get_span_context()
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = self.ids.generate_trace_id()
            random_trace_id = self.ids.is_trace_id_random()
        else:
            trace_id = parent.trace_id
            random_trace_id = parent.trace_flags.random_trace_id
        links = links or ()
        if self.always_on is None:
            sampled = self.sampler.should_sample(context, trace_id, name, kind, attributes, links)
            recording = sampled.decision.is_recording()  # type: ignore[no-untyped-call]
            flags = _SAMPLED if sampled.decision.is_sampled() else _NOT_SAMPLED  # type: ignore[no-untyped-call]
            trace_state = sampled.trace_state
            attributes = sampled.attributes  # the sampler's: as the SDK's tracer takes them
        else:  # what the SDK's always-on samplers decide, without asking them
            recording = self.always_on or parent is None or parent.trace_flags.sampled
            flags = _SAMPLED if recording else _NOT_SAMPLED
            trace_state = parent.trace_state if parent is not None else None
        if random_trace_id:
            flags = TraceFlags(flags | TraceFlags.RANDOM_TRACE_ID)
        span_context = SpanContext(
            trace_id,
            self.ids.generate_span_id(),
            is_remote=False,
            trace_flags=flags,
            trace_state=trace_state,
        )
        if not recording:
            return trace_api.NonRecordingSpan(span_context)
        span = LeanSpan(
            self,
            name,
            span_context,
            parent,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )
        self.processor.on_start(span, parent_context=context)  # type: ignore[arg-type]
        return span

    def start_as_current_span(  # type: ignore[override]  # a plain context manager
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[trace_api.Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Current:
        span = self.start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )
        return Current(span, end_on_exit, record_exception, set_status_on_exception)


class Current:
    """`LeanTracer.start_as_current_span`'s context manager: the span is current in the
    block; an exception (not a bare `BaseException` such as `GeneratorExit`) leaving it
    is recorded and sets the status as the flags say; the span ends after it. The same
    as the API's `use_span`, without its two generator layers (3.3 µs a span of the 7.1
    a started, current and ended span took)."""

    __slots__ = ("_end", "_record", "_span", "_status", "_token")

    def __init__(
        self,
        span: trace_api.Span,
        end_on_exit: bool,
        record_exception: bool,
        set_status_on_exception: bool,
    ) -> None:
        self._span = span
        self._end = end_on_exit
        self._record = record_exception
        self._status = set_status_on_exception

    def __enter__(self) -> trace_api.Span:
        self._token = context_api.attach(trace_api.set_span_in_context(self._span))
        return self._span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        span = self._span
        try:
            context_api.detach(self._token)
            if isinstance(exc_val, Exception) and span.is_recording():
                if self._record:
                    span.record_exception(exc_val)
                if self._status:
                    span.set_status(
                        Status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}")
                    )
        finally:
            if self._end:
                span.end()


class LeanTracerProvider(TracerProvider):
    """The SDK's provider, with `LeanTracer`s. Processors are added as to the SDK's
    (`add_span_processor`) and are flushed and shut down by it."""

    def __init__(self, *, span_limits: SpanLimits | None = None, **kwargs: Any) -> None:
        self.limits = span_limits or SpanLimits()
        self.processors = SynchronousMultiSpanProcessor()  # type: ignore[no-untyped-call]
        super().__init__(span_limits=self.limits, **kwargs)
        self._scopes: dict[InstrumentationScope, LeanTracer] = {}

    def add_span_processor(self, span_processor: SdkSpanProcessor) -> None:
        super().add_span_processor(span_processor)
        self.processors.add_span_processor(span_processor)

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: types.Attributes = None,
    ) -> trace_api.Tracer:
        scope = InstrumentationScope(
            instrumenting_module_name or "",
            instrumenting_library_version or "",
            schema_url,
            attributes,
        )
        tracer = self._scopes.get(scope)
        if tracer is None:
            tracer = self._scopes.setdefault(scope, LeanTracer(self, scope))
        return tracer
