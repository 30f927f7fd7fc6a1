"""One incident, one trace: the three demo scenarios on a traced stack (real gateway with
mTLS, real workflow on the dev server, the reference backends over gRPC), with in-memory
exporters. The bank opens the NFC case inside a span of its own: the whole incident
(gateway, workflow, activities, every partner's work and answers) is in that trace, each
span under the step that caused it. Then nothing any scenario produced (span attributes,
metric labels, log lines) names a customer or carries a case's text."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable

import grpc
import pytest
from coopgate.v1 import cases_pb2, work_pb2
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode, format_trace_id
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.core.caller import Role
from partners import Channel
from partners.scenarios import SCENARIOS, Outcome, Stage, perform
from tests.conftest import Api, Stack
from tests.gateway.telemetry.conftest import Memory
from tests.helpers import health_status
from tests.partners.backends import running_backends

#: What each scenario produced, for the scan (filled by the tests that play them).
PLAYED: dict[str, tuple[Outcome, Stage]] = {}


class Trace:
    def __init__(self, spans: Iterable[ReadableSpan]) -> None:
        self.spans = list(spans)
        self.by_id = {s.context.span_id: s for s in self.spans if s.context}

    def named(self, name: str, **attributes: str) -> list[ReadableSpan]:
        return [
            s
            for s in self.spans
            if s.name == name
            and all((s.attributes or {}).get(k) == v for k, v in attributes.items())
        ]

    def one(self, name: str, **attributes: str) -> ReadableSpan:
        found = self.named(name, **attributes)
        assert found, f"no span {name} {attributes}; have {sorted({s.name for s in self.spans})}"
        return found[0]

    def parent(self, span: ReadableSpan) -> ReadableSpan | None:
        return self.by_id.get(span.parent.span_id) if span.parent else None

    def ancestors(self, span: ReadableSpan) -> list[str]:
        names = []
        at = self.parent(span)
        while at is not None:
            names.append(at.name)
            at = self.parent(at)
        return names

    def under(self, span: ReadableSpan, ancestor: ReadableSpan) -> bool:
        at = self.parent(span)
        while at is not None:
            if at is ancestor:
                return True
            at = self.parent(at)
        return False


async def test_a_partner_that_opens_a_case_in_its_trace_finds_the_whole_incident_in_it(
    stage: Stage, memory: Memory
) -> None:
    memory.spans.clear()
    scenario = SCENARIOS["nfc-payment"]
    async with running_backends(stage, scenario.companies, scenario.faults) as backends:
        with trace.get_tracer("bank").start_as_current_span("bank: customer calls") as root:
            outcome = await perform(scenario, stage)
        await _until_closed_told(backends["bank"], outcome.case_id)
    PLAYED["nfc-payment"] = (outcome, stage)
    bank, telco = stage.cast["bank"], stage.cast["operator"]
    trace_id = root.get_span_context().trace_id
    incident = Trace(s for s in memory.finished() if s.context.trace_id == trace_id)

    opened = incident.one(
        "/coopgate.v1.CaseService/OpenCase", **{"coopgate.case_id": outcome.case_id}
    )
    assert opened.kind is SpanKind.SERVER
    assert incident.parent(opened) is incident.by_id[root.get_span_context().span_id]
    assert opened.attributes["coopgate.partner"] == bank  # type: ignore[index]
    # Gateway -> Temporal client -> the workflow -> its activities.
    start = incident.one("StartWorkflow:IncidentWorkflow")
    assert incident.under(start, opened)
    assert incident.parent(incident.one("RunWorkflow:IncidentWorkflow")) is start
    asked = incident.named("RunActivity:request_diagnosis", **{"coopgate.case_id": outcome.case_id})
    assert {s.attributes["coopgate.partner"] for s in asked} == set(  # type: ignore[index]
        stage.cast[kind] for kind in scenario.companies
    )
    # The workflow's spans (its run, each activity's) are under the span that started
    # it. The workflow runs a milestone's steps as one batch (`run_steps`): each step's
    # span is under the batch's run, itself under the workflow's start.
    for span in asked:
        batch = incident.parent(span)
        assert batch is not None
        assert batch.name == "RunActivity:run_steps"
        assert batch.kind is SpanKind.SERVER
        assert incident.parent(batch) is start
    # Its signals and updates are instants under the workflow's start, linked to the
    # call that sent them.
    took = incident.named("HandleSignal:submit_finding")
    sent = {s.context.span_id for s in incident.named("SignalWorkflow:submit_finding")}
    assert len(took) == len(sent) == len(scenario.companies)
    assert all(incident.parent(span) is start for span in took)
    assert all(len(span.links) == 1 for span in took)
    assert {span.links[0].context.span_id for span in took} == sent
    assert not incident.named("ValidateUpdate:accept_ownership")
    # Each request is a work item (producer span) the partner's SDK continued (consumer
    # span), under which its SubmitFinding reached the gateway, which signalled the workflow.
    telco_asked = next(s for s in asked if s.attributes["coopgate.partner"] == telco)  # type: ignore[index]
    item = incident.one("work diagnosis_request", **{"coopgate.partner": telco})
    assert item.kind is SpanKind.PRODUCER
    assert incident.parent(item) is telco_asked
    handled = next(
        s for s in incident.named("coopgate.work DiagnosisRequest") if incident.parent(s) is item
    )
    assert handled.kind is SpanKind.CONSUMER
    submitted = next(
        s
        for s in incident.named("/coopgate.v1.CaseService/SubmitFinding")
        if incident.under(s, handled)
    )
    assert submitted.attributes["coopgate.partner"] == telco  # type: ignore[index]
    assert any(
        incident.under(s, submitted) for s in incident.named("SignalWorkflow:submit_finding")
    )
    # The decision, the offer and its acceptance, the owner, the notifications.
    decided = incident.one("RunActivity:record_ownership_decision")
    assert decided.attributes["coopgate.rule"] == "single-faulty-component"  # type: ignore[index]
    offer = incident.one("work ownership_offer", **{"coopgate.partner": bank})
    assert incident.under(offer, incident.one("RunActivity:offer_ownership"))
    accepted = incident.one("/coopgate.v1.CaseService/AcceptOwnership")
    assert incident.under(accepted, offer)
    assigned = incident.one("RunActivity:assign_owner")
    assert (assigned.attributes or {}).get("coopgate.outcome") == "accepted"
    notified = {
        (s.attributes or {}).get("coopgate.outcome")
        for s in incident.named("RunActivity:tell_customer")
    }
    assert {"received", "diagnosing", "owner-assigned", "resolved", "closed"} <= notified
    assert incident.one("RunActivity:record_kpis").attributes["coopgate.outcome"] == "closed"  # type: ignore[index]


async def _until_closed_told(backend: object, case_id: str) -> None:
    from tests.partners.test_scenarios import told

    await told(backend, case_id)  # type: ignore[arg-type]


async def test_streams_are_traced_work_subscriptions_and_case_watches(
    stage: Stage, memory: Memory
) -> None:
    """Server-streaming calls get a span each, ended when the stream ends, that knows its
    caller (and, for a watch, its case): the aio stream interceptor's known gaps."""
    memory.spans.clear()
    scenario = SCENARIOS["transit-pass"]
    async with running_backends(stage, scenario.companies, scenario.faults):
        outcome = await perform(scenario, stage)
    PLAYED["transit-pass"] = (outcome, stage)
    owner = stage.client(outcome.owner, "advisor", person="advisor-1")
    watched = [
        r.item.sequence
        async for r in owner.watch_case(outcome.case_id, purpose="incident-resolution")
    ]
    assert watched  # a closed case: its whole timeline, then the stream ends
    spans = Trace(memory.finished())
    subscriptions = spans.named("/coopgate.v1.PartnerWorkService/Subscribe")
    assert {s.attributes.get("coopgate.partner") for s in subscriptions} >= {  # type: ignore[union-attr]
        stage.cast[kind] for kind in scenario.companies
    }
    assert all(s.kind is SpanKind.SERVER and s.end_time for s in subscriptions)
    watches = spans.named("/coopgate.v1.CaseService/WatchCase")
    assert len(watches) == 1
    assert watches[0].attributes["coopgate.case_id"] == outcome.case_id  # type: ignore[index]
    assert watches[0].attributes["coopgate.partner"] == outcome.owner  # type: ignore[index]


async def test_no_span_metric_or_log_line_names_a_customer_or_carries_case_text(
    stage: Stage, memory: Memory
) -> None:
    scenario = SCENARIOS["smart-heating"]
    async with running_backends(stage, scenario.companies, scenario.faults):
        PLAYED["smart-heating"] = (await perform(scenario, stage), stage)
    assert set(PLAYED) == set(SCENARIOS), "the scenarios' tests ran first, in this module"
    secrets = _customer_data(PLAYED.values())
    assert len(secrets) > 10
    found: list[str] = []
    for span in memory.finished():
        found += [
            f"span {span.name} {k}={v!r}"
            for k, v in (span.attributes or {}).items()
            if _leaks(str(v), secrets)
        ]
    for resource in memory.metrics().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    found += [
                        f"metric {metric.name} {k}={v!r}"
                        for k, v in (point.attributes or {}).items()
                        if _leaks(str(v), secrets)
                    ]
    assert memory.lines, "the scenarios logged"
    found += [f"log {line}" for line in memory.lines if _leaks(line, secrets)]
    assert found == []
    # Every log line names its trace and span (when it was written in one).
    parsed = [json.loads(line) for line in memory.lines]
    assert all("trace_id" in p and "span_id" in p for p in parsed)


def _customer_data(played: Iterable[tuple[Outcome, Stage]]) -> set[str]:
    """The customers' ids (local ids, pseudonyms) and every text the scenarios' views
    showed (summaries, interactions, notifications, resolutions)."""
    secrets: set[str] = set()
    for outcome, stage in played:
        secrets.add(outcome.customer_local_id)
        for _, view in stage.narrator.views:  # type: ignore[attr-defined]
            secrets.add(view.header.subject_id)
            secrets.add(view.header.summary)
            for item in view.timeline:
                secrets.update(_texts(item))
    return {s for s in secrets if len(s) >= 8}


def _texts(item: cases_pb2.TimelineItem) -> Iterable[str]:
    kind = item.WhichOneof("item")
    if kind == "interaction":
        yield item.interaction.summary
    elif kind == "notification":
        yield item.notification.message


def _leaks(text: str, secrets: set[str]) -> bool:
    # A whole value, or its first 24 characters (a truncated copy is a leak too).
    return any(s in text or (len(s) > 24 and s[:24] in text) for s in secrets)


def test_coopgate_trace_prints_the_waterfall_and_stats_the_kpis(memory: Memory) -> None:
    outcome, stage = PLAYED["nfc-payment"]
    memory.flush_local()
    runner = CliRunner()
    shown = runner.invoke(app, ["trace", outcome.case_id, "--data-dir", str(memory.data_dir)])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any("OpenCase" in line and stage.cast["bank"][:10] in line for line in lines)
    assert any("request_diagnosis" in line for line in lines)
    assert "partners, from being asked to acting:" in shown.output
    assert stage.cast["operator"] in shown.output.split("acting:")[1]
    stats = runner.invoke(app, ["stats", "--since", "1h", "--data-dir", str(memory.data_dir)])
    assert stats.exit_code == 0, stats.output
    assert max(len(line) for line in stats.output.splitlines()) <= 80
    assert "per service" in stats.output
    assert "per partner" in stats.output
    assert any("audit appends" in line for line in stats.output.splitlines())
    missing = runner.invoke(app, ["trace", "no-such-case", "--data-dir", str(memory.data_dir)])
    assert missing.exit_code == 1
    # The short id the demo's summary prints finds the same trace.
    short = runner.invoke(app, ["trace", outcome.case_id[:13], "--data-dir", str(memory.data_dir)])
    assert short.exit_code == 0, short.output
    assert short.output == shown.output
    several = runner.invoke(app, ["trace", "case-", "--data-dir", str(memory.data_dir)])
    assert several.exit_code == 1
    assert outcome.case_id in several.output


async def test_a_cancelled_stream_ends_its_span_and_refusals_carry_their_status(
    stage: Stage, stack: Stack, memory: Memory
) -> None:
    """The aio interceptor's gaps: a stream the client cancels must still end its span
    (with no context left attached), and a call the gateway refuses through
    ``abort_with_status`` (which that interceptor does not see) must carry its code."""
    memory.spans.clear()
    logged = len(memory.lines)
    partner = stage.cast["bank"]
    api = stack.api(partner, Role.PARTNER)
    stream = api.work.Subscribe(work_pb2.SubscribeRequest(max_in_flight=1))
    await asyncio.sleep(0.3)
    stream.cancel()
    refused = api.work.Subscribe(work_pb2.SubscribeRequest(max_in_flight=5000))
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        async for _ in refused:
            pass
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    advisor = stack.api(partner, Role.ADVISOR)
    assert await _view_of_no_case(advisor) == grpc.StatusCode.NOT_FOUND
    await health_status(advisor.channel)
    await asyncio.sleep(0.3)  # the cancelled stream's handler winds down

    spans = Trace(memory.finished())
    subscribes = spans.named("/coopgate.v1.PartnerWorkService/Subscribe")
    assert len(subscribes) == 2  # both ended
    codes = [(s.attributes or {}).get("rpc.grpc.status_code") for s in subscribes]
    assert grpc.StatusCode.INVALID_ARGUMENT.value[0] in codes
    view = spans.one("/coopgate.v1.CaseService/GetCaseView")
    assert (view.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert view.attributes["coopgate.case_id"] == "case-nope"  # type: ignore[index]
    # A caller's mistake is not the server's error (OpenTelemetry's RPC conventions).
    assert view.status.status_code is not StatusCode.ERROR
    assert not [line for line in memory.lines[logged:] if "detach" in line.lower()]
    # Health checks belong to no incident: untraced (``Settings.untraced_methods``).
    assert not spans.named("/grpc.health.v1.Health/Check")


async def test_each_call_is_measured_by_method_and_status(
    stage: Stage, stack: Stack, memory: Memory
) -> None:
    """``rpc.server.call.duration``, by method and gRPC status, every call counted (kept
    by `gateway.telemetry.produced`, collected with the SDK's metrics by the reader)."""

    before = _call_counts(memory)
    advisor = stack.api(stage.cast["bank"], Role.ADVISOR)
    for _ in range(3):
        assert await _view_of_no_case(advisor) == grpc.StatusCode.NOT_FOUND
    after = _call_counts(memory)
    missing = ("GetCaseView", grpc.StatusCode.NOT_FOUND.value[0])
    assert after[missing] - before.get(missing, 0) == 3


async def test_acknowledgements_are_measured_not_traced(
    stage: Stage, stack: Stack, memory: Memory
) -> None:
    """A partner's acknowledgements (``Settings.untraced_methods``) belong to no incident:
    no span (each would be a trace of its own, about 11 an incident), but every call is
    still in ``rpc.server.call.duration``; the calls around them keep their spans."""
    memory.spans.clear()
    before = _call_counts(memory)
    api = stack.api(stage.cast["bank"], Role.PARTNER)
    for n in range(2):
        acked = await api.work.Acknowledge(
            work_pb2.AcknowledgeRequest(idempotency_key=f"ack-untraced-{n}", work_ids=["w-none"])
        )
        assert acked.acknowledged == 0
    assert await _view_of_no_case(api) == grpc.StatusCode.NOT_FOUND
    after = _call_counts(memory)
    ok = ("Acknowledge", grpc.StatusCode.OK.value[0])
    assert after[ok] - before.get(ok, 0) == 2
    names = {s.name for s in memory.finished()}
    assert "/coopgate.v1.CaseService/GetCaseView" in names
    assert not [n for n in names if n.endswith("/Acknowledge")]


def _call_counts(memory: Memory) -> dict[tuple[object, object], int]:
    """Calls counted in ``rpc.server.call.duration``, by method and status."""
    found: dict[tuple[object, object], int] = {}
    for resource in memory.metrics().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != "rpc.server.call.duration":
                    continue
                for point in metric.data.data_points:
                    labels = point.attributes or {}
                    key = (labels.get("rpc.method"), labels.get("rpc.grpc.status_code"))
                    found[key] = point.count  # type: ignore[union-attr]
    return found


async def _view_of_no_case(api: Api) -> grpc.StatusCode:
    """GetCaseView of a case that does not exist (``case-nope``): the code it fails with."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await api.cases.GetCaseView(
            cases_pb2.GetCaseViewRequest(case_id="case-nope", purpose="incident-resolution")
        )
    return refused.value.code()


async def test_a_callers_baggage_stays_out_of_the_workflow_history(
    stage: Stage, stack: Stack
) -> None:
    """A partner's OpenCase carries its trace context and W3C baggage (free text it
    chooses); the trace context crosses into the workflow's history (Temporal's headers),
    the baggage does not: the history is out of erasure's reach."""
    marker = f"BAGGAGE{uuid.uuid4().hex[:12]}"
    bank = stage.cast["bank"]
    service_id = await stage.service("nfc-payment")
    advisor = stage.client(bank, "advisor", "baggage@bank")
    token = otel_context.attach(baggage.set_baggage("bank.note", marker))
    try:
        with trace.get_tracer("bank").start_as_current_span("bank: customer calls") as root:
            opened = await advisor.open_case(
                service_id=service_id,
                customer_local_id=stage.customer(bank),
                channel=Channel.PHONE,
                summary="cannot pay by phone",
            )
    finally:
        otel_context.detach(token)
    history = await stack.client.get_workflow_handle(opened.case_id).fetch_history()
    recorded = b"".join(event.SerializeToString() for event in history.events)
    assert format_trace_id(root.get_span_context().trace_id).encode() in recorded
    assert marker.encode() not in recorded
