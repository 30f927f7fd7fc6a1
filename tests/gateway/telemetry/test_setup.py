"""Configuration by the standard OTEL_* variables, and log lines with trace ids. No
provider is installed here (`configure` is the session fixture's, once): these check
what it decides from the environment."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from opentelemetry import trace

from gateway.settings import Settings
from gateway.telemetry import TelemetryError, configure, tracing_on
from gateway.telemetry.lean import LeanSpan, LeanTracerProvider
from gateway.telemetry.logs import JsonFormatter, TraceContextFilter
from gateway.telemetry.setup import _load, _names, _resource, keeps_local
from tests.gateway.telemetry.conftest import Memory


def test_exporters_follow_otel_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert _names("traces") == []  # no collector named: nothing exported, nothing retried
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    assert _names("traces") == ["otlp"]
    assert _load("otlp", "traces").__module__.startswith("opentelemetry.exporter.otlp.proto.grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    assert _load("otlp", "traces").__module__.startswith("opentelemetry.exporter.otlp.proto.http")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console, otlp")
    assert _names("traces") == ["console", "otlp"]
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert _names("traces") == []
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "prometheus")
    assert _load("prometheus", "metrics").__name__.endswith("PrometheusMetricReader")
    with pytest.raises(TelemetryError, match="'zipkin', not installed"):
        _load("zipkin", "traces")


def test_service_name_from_otel_service_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert _resource().attributes["service.name"] == "coopgate-gateway"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-eu-1")
    assert _resource().attributes["service.name"] == "gateway-eu-1"


def test_sdk_disabled_sets_up_nothing(monkeypatch: pytest.MonkeyPatch, memory: Memory) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    telemetry = configure(Settings(data_dir=memory.data_dir))
    assert telemetry.tracer_provider is None
    assert telemetry.meter_provider is None
    assert not tracing_on()


def test_log_lines_name_their_trace_and_span(memory: Memory) -> None:
    record = logging.LogRecord("gateway.x", logging.INFO, __file__, 1, "case %s", ("c1",), None)
    formatter, stamp = JsonFormatter(), TraceContextFilter()
    with trace.get_tracer("test").start_as_current_span("step") as span:
        stamp.filter(record)
    line = json.loads(formatter.format(record))
    context = span.get_span_context()
    assert line["trace_id"] == trace.format_trace_id(context.trace_id)
    assert line["span_id"] == trace.format_span_id(context.span_id)
    assert (line["level"], line["logger"], line["message"]) == ("INFO", "gateway.x", "case c1")
    outside = logging.LogRecord("gateway.x", logging.INFO, __file__, 1, "idle", (), None)
    stamp.filter(outside)
    assert json.loads(formatter.format(outside))["trace_id"] == "-"


def test_no_exemplars_unless_asked(memory: Memory) -> None:
    """OTEL_METRICS_EXEMPLAR_FILTER unset: a measure made in a sampled span keeps no
    exemplar (the SDK's trace_based default doubled the per-call measures' cost)."""
    from gateway.telemetry.instruments import PARTNER, SERVICE, partner_response

    with trace.get_tracer("test").start_as_current_span("sampled") as span:
        assert span.get_span_context().trace_flags.sampled
        partner_response.record(0.5, {SERVICE: "exemplars", PARTNER: "none"})
    points = [
        point
        for resource in memory.metrics().resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "coopgate.partner.response_time"
        for point in metric.data.data_points
    ]
    assert points
    assert all(not point.exemplars for point in points)


def test_local_store_where_the_data_dir_exists(tmp_path: Path) -> None:
    """`coopgate up` makes its data dir and keeps telemetry there; a replica configured
    by settings alone has none and makes none, unless told to keep a store."""
    absent = tmp_path / "absent"
    assert not keeps_local(Settings(data_dir=absent))
    assert not absent.exists()
    assert keeps_local(Settings(data_dir=tmp_path))
    assert keeps_local(Settings(data_dir=absent, telemetry_store=True))
    assert not keeps_local(Settings(data_dir=tmp_path, telemetry_store=False))


def test_untraced_methods_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``COOPGATE_UNTRACED_METHODS`` is a JSON list; ``[]`` traces every call."""
    assert "/coopgate.v1.PartnerWorkService/Acknowledge" in Settings().untraced_methods
    monkeypatch.setenv("COOPGATE_UNTRACED_METHODS", '["/coopgate.v1.CaseService/GetCaseView"]')
    assert Settings().untraced_methods == {"/coopgate.v1.CaseService/GetCaseView"}
    monkeypatch.setenv("COOPGATE_UNTRACED_METHODS", "[]")
    assert Settings().untraced_methods == frozenset()


def test_the_configured_provider_makes_lean_spans(memory: Memory) -> None:
    """`configure` installs the lean provider: the spans it hands the exporters (those
    of the whole incident trace in test_incident_trace) are `LeanSpan`s."""
    provider = memory.telemetry.tracer_provider
    assert isinstance(provider, LeanTracerProvider)
    with provider.get_tracer("test").start_as_current_span("lean") as span:
        span.set_attribute("coopgate.case_id", "case-lean")
    assert isinstance(span, LeanSpan)
    provider.force_flush()
    (exported,) = [s for s in memory.spans.get_finished_spans() if s.name == "lean"]
    assert dict(exported.attributes or {}) == {"coopgate.case_id": "case-lean"}
