"""Tracer and meter providers, configured once per process from the standard ``OTEL_*``
variables (and the settings the standard has no variable for).

- ``OTEL_SDK_DISABLED=true``: nothing is set up (no provider, no interceptor).
- ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``: comma-separated exporter names,
  found as the SDK finds them (the ``opentelemetry_traces_exporter`` /
  ``opentelemetry_metrics_exporter`` entry points: ``otlp``, ``otlp_proto_grpc``,
  ``otlp_proto_http``, ``console``, ``prometheus``), each built from its own variables
  (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``..._PROTOCOL``, ``..._HEADERS``,
  ``OTEL_EXPORTER_PROMETHEUS_HOST/PORT``). Unset: ``otlp`` when an OTLP endpoint is
  set, else none (the SDK would default to ``otlp`` and retry a missing collector).
  ``OTEL_EXPORTER_OTLP_PROTOCOL`` picks the transport of ``otlp``
  (``grpc``, the default, or ``http/protobuf``).
- ``OTEL_TRACES_SAMPLER`` / ``_ARG``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
  ``OTEL_BSP_*``, ``OTEL_METRIC_EXPORT_INTERVAL``: read by the SDK itself.
- ``OTEL_METRICS_EXEMPLAR_FILTER``: unset, ``always_off`` here (the SDK's default,
  ``trace_based``, keeps an exemplar of every measurement made in a sampled span: with
  every trace sampled, that doubled what the per-call measures cost; neither the
  embedded store nor the Prometheus reader keeps exemplars). Set it to have them.
- ``COOPGATE_TELEMETRY_STORE`` (on where the data dir exists at start, as under
  `coopgate up`; true/false to force): spans and points also go to
  ``DATA_DIR/telemetry.db`` for `coopgate trace` and `coopgate stats`.
- ``COOPGATE_PROMETHEUS_LISTEN``: a Prometheus scrape endpoint on a port of its own.

Tracing is on when any span exporter is; only then do the gRPC server and Temporal get
their tracing interceptors (`tracing_on`): off, a call costs nothing more."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from gateway.settings import Settings
from gateway.telemetry.instruments import PRODUCED, watch_work_waiting
from gateway.telemetry.lean import LeanTracerProvider
from gateway.telemetry.local import LocalMetricExporter, LocalSpanExporter, LocalTelemetry
from gateway.telemetry.produced import attach

DEFAULT_SERVICE_NAME = "coopgate-gateway"
#: KPI durations run from seconds to days.
_KPI_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400, 259200)


class TelemetryError(Exception):
    """A configuration that names an exporter this installation does not have."""


@dataclass(slots=True)
class Telemetry:
    """What `configure` set up; `shutdown` flushes and stops it (at process exit)."""

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    closers: list[Any] = field(default_factory=list)

    @property
    def tracing(self) -> bool:
        return self.tracer_provider is not None

    def shutdown(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()
        for close in self.closers:
            close()


_state = {"tracing": False, "metrics": False}


def tracing_on() -> bool:
    """Whether this process traces: the gRPC server and the Temporal client install their
    tracing interceptors only then."""
    return _state["tracing"]


def metrics_on() -> bool:
    """Whether this process has a meter provider (per-call measures are made only then)."""
    return _state["metrics"]


def set_tracing(on: bool, *, metrics: bool | None = None) -> None:
    """Set by `configure`; tests that install their own providers set it themselves."""
    _state["tracing"] = on
    if metrics is not None:
        _state["metrics"] = metrics


def _disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def _names(signal: str) -> list[str]:
    raw = os.environ.get(f"OTEL_{signal.upper()}_EXPORTER")
    if raw is None:
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
            f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    names = [n.strip() for n in raw.split(",") if n.strip()]
    return [] if "none" in names else names


def _entry_point_name(name: str, signal: str) -> str:
    if name != "otlp":
        return name
    protocol = os.environ.get(
        f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL",
        os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    )
    return "otlp_proto_http" if protocol.startswith("http") else "otlp_proto_grpc"


def _load(name: str, signal: str) -> Any:
    group = f"opentelemetry_{signal}_exporter"
    wanted = _entry_point_name(name, signal)
    found = entry_points(group=group, name=wanted)
    if not found:
        available = sorted(e.name for e in entry_points(group=group))
        raise TelemetryError(
            f"OTEL_{signal.upper()}_EXPORTER names {name!r}, not installed "
            f"(available: {', '.join(available)})"
        )
    return next(iter(found)).load()


def _resource() -> Resource:
    detected = Resource.create()
    if not str(detected.attributes.get(SERVICE_NAME, "unknown_service")).startswith(
        "unknown_service"  # the SDK's default, "unknown_service:<executable>"
    ):
        return detected
    return Resource.create({SERVICE_NAME: DEFAULT_SERVICE_NAME})


def _views() -> list[View]:
    kpis = ExplicitBucketHistogramAggregation(_KPI_BUCKETS)
    return [
        View(instrument_name="coopgate.case.time_to_*", aggregation=kpis),
        View(instrument_name="coopgate.partner.response_time", aggregation=kpis),
    ]


def keeps_local(settings: Settings) -> bool:
    """Whether this process keeps its traces and metrics in ``data_dir/telemetry.db``."""
    if settings.telemetry_store is not None:
        return settings.telemetry_store
    return settings.data_dir.is_dir()


def configure(
    settings: Settings,
    *,
    span_exporters: Sequence[SpanExporter] = (),
    metric_readers: Sequence[MetricReader] = (),
) -> Telemetry:
    """Install the global providers for this process (once: OpenTelemetry refuses a
    second provider). ``span_exporters`` and ``metric_readers`` are added to those the
    environment names (tests pass in-memory ones)."""
    if _disabled():
        set_tracing(False, metrics=False)
        return Telemetry()
    telemetry = Telemetry()
    resource = _resource()
    local = (
        LocalTelemetry(settings.telemetry_db, retention_hours=settings.telemetry_retention_hours)
        if keeps_local(settings)
        else None
    )
    exporters: list[SpanExporter] = [_load(n, "traces")() for n in _names("traces")]
    processors: list[SpanProcessor] = [BatchSpanProcessor(e) for e in exporters]
    if local is not None:
        processors.append(BatchSpanProcessor(LocalSpanExporter(local)))
    processors += [BatchSpanProcessor(e) for e in span_exporters]
    if processors:
        provider = LeanTracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER
        for processor in processors:
            provider.add_span_processor(processor)
        trace.set_tracer_provider(provider)
        telemetry.tracer_provider = provider

    readers: list[MetricReader] = list(metric_readers)
    for name in _names("metrics"):
        made = _load(name, "metrics")
        readers.append(
            made()
            if isinstance(made, type) and issubclass(made, MetricReader)
            # An exporter: pushed every OTEL_METRIC_EXPORT_INTERVAL (60 s by default).
            else PeriodicExportingMetricReader(made())
        )
    if settings.prometheus_listen:
        readers.append(_prometheus(settings.prometheus_listen, telemetry))
    if local is not None:
        readers.append(PeriodicExportingMetricReader(LocalMetricExporter(local), 10_000))
    if readers:
        meters = MeterProvider(
            metric_readers=readers,
            resource=resource,
            views=_views(),
            exemplar_filter=None
            if os.environ.get("OTEL_METRICS_EXEMPLAR_FILTER")
            else AlwaysOffExemplarFilter(),
        )
        # The per-call histograms, kept outside the SDK (`produced`), until shutdown.
        telemetry.closers.append(attach(readers, PRODUCED, resource))
        metrics.set_meter_provider(meters)
        telemetry.meter_provider = meters
    set_tracing(telemetry.tracing, metrics=telemetry.meter_provider is not None)
    return telemetry


def _prometheus(listen: str, telemetry: Telemetry) -> MetricReader:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    host, _, port = listen.rpartition(":")
    server, thread = start_http_server(int(port), addr=host or "127.0.0.1")

    def close() -> None:
        server.shutdown()
        thread.join(5)

    telemetry.closers.append(close)
    return PrometheusMetricReader()


@contextlib.asynccontextmanager
async def observing(settings: Settings, on: bool = True) -> AsyncIterator[Telemetry | None]:
    """This process's telemetry (`configure`) for the block, flushed and shut at its end;
    ``on`` false: nothing."""
    telemetry = configure(settings) if on else None
    try:
        yield telemetry
    finally:
        if telemetry is not None:
            telemetry.shutdown()


@contextlib.asynccontextmanager
async def waiting_work_gauge(
    read: Callable[[], Awaitable[dict[str, int]]], on: bool = True, every: float = 15.0
) -> AsyncIterator[None]:
    """With metrics on, the ``coopgate.work.waiting`` gauge for the block: ``read`` every
    ``every`` seconds (the gauge's callback runs on the exporter's thread and only
    returns the last count)."""
    if not (on and metrics_on()):
        yield
        return
    last: dict[str, int] = {}
    watch_work_waiting(lambda: last)

    async def count() -> None:
        nonlocal last
        while True:
            with contextlib.suppress(Exception):
                counted = await read()
                last = {partner: counted.get(partner, 0) for partner in {*last, *counted}}
            await asyncio.sleep(every)

    task = asyncio.create_task(count(), name="work-waiting-gauge")
    try:
        yield
    finally:
        task.cancel()
