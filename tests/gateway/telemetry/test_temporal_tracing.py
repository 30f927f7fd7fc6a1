"""Temporal's part of the trace (`gateway.orchestration.tracing`), on the dev server with
in-memory exporters: spans made once although the worker replays the history at every
task; a workflow started under Temporal's own tracing interceptor continued; a failed
step's span naming the error's type and nothing it said."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from temporalio.client import Client, WorkflowFailureError
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from gateway.orchestration.tracing import TemporalTracing, client_interceptors
from gateway.telemetry import set_tracing
from tests.gateway.telemetry.conftest import Memory
from tests.gateway.telemetry.traced_workflow import SECRET, Traced, step


@pytest.fixture
def tracing(memory: Memory) -> Iterator[Memory]:
    set_tracing(True, metrics=False)
    memory.spans.clear()
    try:
        yield memory
    finally:
        set_tracing(False, metrics=False)


async def _client(env: WorkflowEnvironment, interceptors: list[object]) -> Client:
    return await Client.connect(
        env.client.service_client.config.target_host,
        namespace=env.client.namespace,
        interceptors=interceptors,  # type: ignore[arg-type]
    )


@pytest.fixture
async def queue(temporal_env: WorkflowEnvironment, tracing: Memory) -> AsyncIterator[str]:
    """A worker of ``Traced`` that keeps no workflow in its cache: every task replays the
    history from the start, as after a restart."""
    client = await _client(temporal_env, client_interceptors())
    task_queue = f"traced-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[Traced],
        activities=[step],
        max_cached_workflows=0,
    ):
        yield task_queue


def _in(spans: list[ReadableSpan], trace_id: int) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        if span.context is not None and span.context.trace_id == trace_id:
            named.setdefault(span.name, []).append(span)
    return named


async def test_each_span_is_made_once_although_every_task_replays_the_history(
    temporal_env: WorkflowEnvironment, tracing: Memory, queue: str
) -> None:
    client = await _client(temporal_env, client_interceptors())
    with trace.get_tracer("test").start_as_current_span("caller") as caller:
        handle = await client.start_workflow(
            Traced.run, ["one", "two"], id=f"traced-{uuid.uuid4()}", task_queue=queue
        )
        await handle.signal(Traced.tell, "done")
        assert await handle.result() == ["one", "two", "done"]
    spans = _in(tracing.finished(), caller.get_span_context().trace_id)

    assert {name: len(found) for name, found in spans.items()} == {
        "caller": 1,
        "StartWorkflow:Traced": 1,
        "RunWorkflow:Traced": 1,
        "RunActivity:step": 2,
        "SignalWorkflow:tell": 1,
        "HandleSignal:tell": 1,
        "CompleteWorkflow:Traced": 1,
    }
    (start,) = spans["StartWorkflow:Traced"]
    assert start.kind is SpanKind.CLIENT
    assert start.parent is not None
    assert start.parent.span_id == caller.get_span_context().span_id
    for name in ("RunWorkflow:Traced", "RunActivity:step", "HandleSignal:tell"):
        for span in spans[name]:
            assert span.parent is not None
            assert span.parent.span_id == start.context.span_id
            assert span.kind is SpanKind.SERVER
    (took,) = spans["HandleSignal:tell"]
    (sent,) = spans["SignalWorkflow:tell"]
    assert [link.context.span_id for link in took.links] == [sent.context.span_id]
    (done,) = spans["CompleteWorkflow:Traced"]
    assert done.status.status_code is StatusCode.UNSET


async def test_a_workflow_started_under_temporals_own_interceptor_continues_its_trace(
    temporal_env: WorkflowEnvironment, tracing: Memory
) -> None:
    """Workflows started before this interceptor replaced Temporal's: same header."""
    theirs = TracingInterceptor()
    theirs.text_map_propagator = TraceContextTextMapPropagator()
    starter = await _client(temporal_env, [theirs])
    plain = await _client(temporal_env, [])
    task_queue = f"traced-{uuid.uuid4().hex[:8]}"
    async with Worker(
        plain,
        task_queue=task_queue,
        workflows=[Traced],
        activities=[step],
        interceptors=[TemporalTracing()],
    ):
        with trace.get_tracer("test").start_as_current_span("caller") as caller:
            handle = await starter.start_workflow(
                Traced.run, ["one"], id=f"traced-{uuid.uuid4()}", task_queue=task_queue
            )
            await handle.signal(Traced.tell, "done")
            assert await handle.result() == ["one", "done"]
    spans = _in(tracing.finished(), caller.get_span_context().trace_id)

    (start,) = spans["StartWorkflow:Traced"]  # Temporal's interceptor's, on the starter
    (ran,) = spans["RunActivity:step"]  # this one's, on the worker
    assert ran.parent is not None
    assert ran.parent.span_id == start.context.span_id
    assert (ran.attributes or {}).get("temporalWorkflowID") == handle.id


async def test_a_failed_step_names_the_errors_type_and_nothing_it_said(
    temporal_env: WorkflowEnvironment, tracing: Memory, queue: str
) -> None:
    client = await _client(temporal_env, client_interceptors())
    with trace.get_tracer("test").start_as_current_span("caller") as caller:
        handle = await client.start_workflow(
            Traced.run, ["one", "fail"], id=f"traced-{uuid.uuid4()}", task_queue=queue
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    spans = _in(tracing.finished(), caller.get_span_context().trace_id)

    ok, failed = sorted(spans["RunActivity:step"], key=lambda s: s.start_time or 0)
    assert ok.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "RuntimeError"
    (done,) = spans["CompleteWorkflow:Traced"]
    assert done.status.status_code is StatusCode.ERROR
    assert done.status.description == "ActivityError"
    everything = repr(
        [
            (
                s.name,
                dict(s.attributes or {}),
                s.status.description,
                [e.attributes for e in s.events],
            )
            for found in spans.values()
            for s in found
        ]
    )
    assert SECRET not in everything
    assert "card" not in everything
