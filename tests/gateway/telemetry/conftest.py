"""The process's telemetry for these tests: `configure` as `coopgate up` calls it, plus
in-memory exporters to assert on, installed once (OpenTelemetry takes one provider per
process). Tracing is switched on only while a test's own traced stack runs, so other
tests' servers and clients get no interceptor."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from gateway.core.caller import Role
from gateway.orchestration.temporal import create_worker
from gateway.orchestration.tracing import client_interceptors
from gateway.settings import Settings
from gateway.stack import Pki, open_runtime, start_gateway
from gateway.telemetry import Telemetry, configure, set_tracing
from gateway.telemetry.logs import JsonFormatter, TraceContextFilter
from partners import PartnerCredentials
from tests.conftest import Stack, end_open_runs


@dataclass
class Memory:
    telemetry: Telemetry
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    data_dir: Path
    lines: list[str] = field(default_factory=list)

    def finished(self) -> list[ReadableSpan]:
        assert self.telemetry.tracer_provider is not None
        self.telemetry.tracer_provider.force_flush()
        return list(self.spans.get_finished_spans())

    def metrics(self) -> MetricsData:
        data = self.reader.get_metrics_data()
        assert data is not None
        return data

    def flush_local(self) -> None:
        """Everything to DATA_DIR/telemetry.db now (its readers export every 10 s)."""
        assert self.telemetry.tracer_provider is not None
        assert self.telemetry.meter_provider is not None
        self.telemetry.tracer_provider.force_flush()
        self.telemetry.meter_provider.force_flush()


class _Lines(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines
        self.addFilter(TraceContextFilter())
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="session")
def memory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Memory]:
    data_dir = tmp_path_factory.mktemp("telemetry")
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = configure(
        Settings(data_dir=data_dir), span_exporters=[spans], metric_readers=[reader]
    )
    set_tracing(False, metrics=False)
    memory = Memory(telemetry, spans, reader, data_dir)
    handler = _Lines(memory.lines)
    logging.getLogger().addHandler(handler)
    try:
        yield memory
    finally:
        logging.getLogger().removeHandler(handler)


@pytest.fixture(scope="module")
async def stack(
    memory: Memory,
    temporal_env: WorkflowEnvironment,
    pki: Pki,
    credentials: Callable[[str, Role], PartnerCredentials],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    """The gateway and a worker with tracing on, over the session's dev server (SQLite):
    the `stage` fixture plays on it."""
    import uuid

    set_tracing(True, metrics=True)
    data_dir = tmp_path_factory.mktemp("traced")
    client = await Client.connect(
        temporal_env.client.service_client.config.target_host,
        namespace=temporal_env.client.namespace,
        interceptors=client_interceptors(),
    )
    settings = Settings(
        data_dir=data_dir,
        listen="127.0.0.1:0",
        database_url=f"sqlite:///{data_dir / 'coopgate.db'}",
        task_queue=f"tq-{uuid.uuid4()}",
    )
    try:
        async with (
            open_runtime(settings, client=client, seed=True) as runtime,
            create_worker(client, settings.task_queue, runtime.activities),
        ):
            gateway = await start_gateway(runtime, pki)
            stack = Stack(
                backend="sqlite",
                target=f"127.0.0.1:{gateway.port}",
                client=client,
                task_queue=settings.task_queue,
                settings=settings,
                runtime=runtime,
                credentials=credentials,
            )
            try:
                yield stack
            finally:
                await end_open_runs(client, settings.task_queue)
                for channel in stack.channels:
                    await channel.close()
                await gateway.stop(0)
    finally:
        set_tracing(False, metrics=False)
