"""Temporal's side of the incident's trace, when this process traces: a span for each
start, signal and update the gateway sends a workflow (on the client), for the
workflow's run, each signal and update it takes and its completion (in the workflow),
and for each activity's run (on the worker), named as Temporal's own tracing
interceptor names them (``StartWorkflow:IncidentWorkflow``, ``RunActivity:assign_owner``).

The trace context crosses in the same header as that interceptor's (``_tracer-data``, a
JSON map of the W3C fields), so workflows started under either continue under the
other. What crosses is the W3C trace context alone (trace and span ids, the vendors'
``tracestate``): a caller's W3C baggage, free text a partner chooses (it could name a
customer), stays at the gateway, out of the workflow's history (Temporal keeps headers
there, out of erasure's reach).

Leaner than Temporal's interceptor, which this replaces (an incident's instructions:
docs/BENCHMARKS.md), in three ways:

- an activity runs under the workflow's start, with the workflow's own header passed
  on as it came (Temporal's interceptor made a zero-length ``StartActivity`` span per
  activity, injected it and converted it to a payload);
- the workflow's spans are made where the workflow runs, from the workflow's context
  read once per run (Temporal's interceptor read it again for every signal and update
  and made each span through a call out of the sandbox), none while history is
  replayed, none for an update's validation;
- an activity's span carries its case, partner, rule and outcome from the start.

It covers what the gateway and its workflows use: a client's starts, signals and
updates; a workflow's activities, local activities and continuation (not queries,
child workflows, external signals or Nexus operations, which they do not use).

Span attributes are ids and outcomes; a failed step's status names the exception's
type, never its message (a driver's message can quote the values it was given)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, NoReturn

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from temporalio import activity, workflow
from temporalio import client as temporal_client
from temporalio.api.common.v1 import Payload
from temporalio.exceptions import FailureError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ContinueAsNewInput,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    HandleSignalInput,
    HandleUpdateInput,
    Interceptor,
    StartActivityInput,
    StartLocalActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from gateway.telemetry import tracer, tracing_on
from gateway.telemetry.spans import failed, named, step_span

#: The header Temporal's own tracing interceptor uses: one JSON map of the W3C fields.
HEADER = "_tracer-data"
_JSON = b"json/plain"
#: What crosses into Temporal's headers: the W3C trace context alone (no baggage).
_TRACE_CONTEXT = TraceContextTextMapPropagator()
#: Made once (at import; the provider's own tracer from the first span on).
_tracer = tracer(__name__)


def client_interceptors() -> list[Any]:
    """The Temporal client's interceptors: tracing when on, else none (a worker made
    from the client takes them too)."""
    return [TemporalTracing()] if tracing_on() else []


class TemporalTracing(temporal_client.Interceptor, Interceptor):
    """Spans for the client's starts, signals and updates, the workflows' runs and the
    activities', and the trace context carried between them."""

    def intercept_client(
        self, next: temporal_client.OutboundInterceptor
    ) -> temporal_client.OutboundInterceptor:
        return _Client(next)

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Activity(next)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        return _Workflow


# -- the header ------------------------------------------------------------------------


def _header() -> Payload | None:
    """The current trace context as the header's payload (None when nothing is traced)."""
    carrier: dict[str, str] = {}
    _TRACE_CONTEXT.inject(carrier)
    if not carrier:
        return None
    return Payload(
        metadata={"encoding": _JSON}, data=json.dumps(carrier, separators=(",", ":")).encode()
    )


def _with_header(headers: Mapping[str, Payload], header: Payload | None) -> Mapping[str, Payload]:
    return {**headers, HEADER: header} if header is not None else headers


def _context(headers: Mapping[str, Payload]) -> context_api.Context | None:
    """The trace context a header carries (None: none, or not one this can read)."""
    header = headers.get(HEADER)
    if header is None or header.metadata.get("encoding") != _JSON:
        return None
    try:
        carrier = json.loads(header.data)
    except ValueError:
        return None
    if not isinstance(carrier, dict):
        return None
    return _TRACE_CONTEXT.extract(carrier)


# -- the client --------------------------------------------------------------------------


class _Client(temporal_client.OutboundInterceptor):
    def _span(self, name: str, workflow_id: str) -> AbstractContextManager[trace.Span]:
        return step_span(_tracer, name, SpanKind.CLIENT, {"temporalWorkflowID": workflow_id})

    async def start_workflow(
        self, input: temporal_client.StartWorkflowInput
    ) -> temporal_client.WorkflowHandle[Any, Any]:
        prefix = "SignalWithStartWorkflow" if input.start_signal else "StartWorkflow"
        with self._span(f"{prefix}:{input.workflow}", input.id):
            input.headers = _with_header(input.headers, _header())
            return await super().start_workflow(input)

    async def signal_workflow(self, input: temporal_client.SignalWorkflowInput) -> None:
        with self._span(f"SignalWorkflow:{input.signal}", input.id):
            input.headers = _with_header(input.headers, _header())
            await super().signal_workflow(input)

    async def start_workflow_update(
        self, input: temporal_client.StartWorkflowUpdateInput
    ) -> temporal_client.WorkflowUpdateHandle[Any]:
        with self._span(f"StartWorkflowUpdate:{input.update}", input.id):
            input.headers = _with_header(input.headers, _header())
            return await super().start_workflow_update(input)


# -- the activity ----------------------------------------------------------------------


class _Activity(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        attributes = {
            "temporalWorkflowID": info.workflow_id or "",
            "temporalRunID": info.workflow_run_id or "",
            "temporalActivityID": info.activity_id,
        }
        if input.args:
            attributes.update(named(**activity_attributes(input.args[0])))
        with step_span(
            _tracer,
            f"RunActivity:{info.activity_type}",
            SpanKind.SERVER,
            attributes,
            _context(input.headers),
        ):
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


# -- the workflow ----------------------------------------------------------------------


class _Workflow(WorkflowInboundInterceptor):
    """In the workflow: its run, signals, updates and completion as instants (the
    workflow's time, none while replaying), under the context it was started in; its
    activities and a continuation carry that context on."""

    def __init__(self, next: WorkflowInboundInterceptor) -> None:
        super().__init__(next)
        self.header: Payload | None = None
        self.parent: context_api.Context | None = None

    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        info = outbound.info()
        self.header = info.headers.get(HEADER)
        self.parent = _context(info.headers)
        self.attributes = {"temporalWorkflowID": info.workflow_id, "temporalRunID": info.run_id}
        super().init(_WorkflowOutbound(outbound, self.header))

    def _instant(
        self,
        name: str,
        caller: Mapping[str, Payload] | None = None,
        *,
        kind: SpanKind = SpanKind.SERVER,
        error: BaseException | None = None,
    ) -> None:
        """A zero-length span: the workflow took a message or a step, linked to the span
        that sent it (``caller``: the message's headers)."""
        if workflow.unsafe.is_replaying():
            return
        links: tuple[trace.Link, ...] = ()
        if caller is not None:
            context = _context(caller)
            called = trace.get_current_span(context).get_span_context() if context else None
            links = (trace.Link(called),) if called is not None and called.is_valid else ()
        at = workflow.time_ns()
        span = _tracer.start_span(
            name,
            context=self.parent,
            kind=kind,
            attributes=self.attributes,
            links=links,
            start_time=at,
        )
        if error is not None:
            failed(span, error)
        span.end(at)

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        type_ = workflow.info().workflow_type
        self._instant(f"RunWorkflow:{type_}")
        try:
            result = await super().execute_workflow(input)
        except FailureError as error:  # the workflow fails (a continuation is no failure)
            self._instant(f"CompleteWorkflow:{type_}", kind=SpanKind.INTERNAL, error=error)
            raise
        self._instant(f"CompleteWorkflow:{type_}", kind=SpanKind.INTERNAL)
        return result

    async def handle_signal(self, input: HandleSignalInput) -> None:
        self._instant(f"HandleSignal:{input.signal}", input.headers)
        await super().handle_signal(input)

    async def handle_update_handler(self, input: HandleUpdateInput) -> Any:
        self._instant(f"HandleUpdate:{input.update}", input.headers)
        return await super().handle_update_handler(input)


class _WorkflowOutbound(WorkflowOutboundInterceptor):
    """The workflow's own header, as it came, on each activity it starts and on its
    continuation."""

    def __init__(self, next: WorkflowOutboundInterceptor, header: Payload | None) -> None:
        super().__init__(next)
        self.header = header

    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
        input.headers = _with_header(input.headers, self.header)
        return super().start_activity(input)

    def start_local_activity(self, input: StartLocalActivityInput) -> workflow.ActivityHandle[Any]:
        input.headers = _with_header(input.headers, self.header)
        return super().start_local_activity(input)

    def continue_as_new(self, input: ContinueAsNewInput) -> NoReturn:
        input.headers = _with_header(input.headers, self.header)
        super().continue_as_new(input)
