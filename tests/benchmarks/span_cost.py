"""What one server span costs, the SDK's against the lean provider's: a span as the
gateway makes it for a call (started with its 4 RPC attributes, made current, 2
attributes set, ended into a batch processor whose exporter keeps nothing), N times in
a loop; ``noop`` is the same loop with OpenTelemetry's no-op tracer (the floor).

    python -m tests.benchmarks.span_cost [--kinds sdk,lean,noop] [--spans 20000]

prints CPU µs per span for each, three times. Timings on a busy machine move; the
instruction count does not: run one kind at two sizes under callgrind and take the
difference, e.g.

    valgrind --tool=callgrind python -m tests.benchmarks.span_cost --kinds lean --spans 1000
    valgrind --tool=callgrind python -m tests.benchmarks.span_cost --kinds lean --spans 3000

(the ``Collected`` totals' difference over 2 x 3 x 2000 spans; docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import time

from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AnyValue

from gateway.telemetry.lean import LeanTracerProvider

ATTRIBUTES: dict[str, AnyValue] = {
    "rpc.system": "grpc",
    "rpc.service": "coopgate.v1.CaseService",
    "rpc.method": "GetCaseView",
    "rpc.grpc.status_code": 0,
}


class Discard(SpanExporter):
    """Keeps nothing: what the span costs, without an exporter's work."""

    def export(self, spans: object) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def tracer(kind: str) -> trace.Tracer:
    if kind == "noop":
        return trace.NoOpTracer()
    made = LeanTracerProvider if kind == "lean" else TracerProvider
    provider = made(resource=Resource.create({"service.name": "bench"}), shutdown_on_exit=False)
    # Nothing is exported during the loop (no export thread's work in the figure).
    provider.add_span_processor(
        BatchSpanProcessor(
            Discard(),
            max_queue_size=1 << 20,
            schedule_delay_millis=600_000,
            max_export_batch_size=1 << 19,
        )
    )
    got: trace.Tracer = provider.get_tracer("gateway.api")
    return got


def one(made: trace.Tracer) -> None:
    span = made.start_span(
        "/coopgate.v1.CaseService/GetCaseView",
        None,
        SpanKind.SERVER,
        ATTRIBUTES,
        record_exception=False,
        set_status_on_exception=False,
    )
    token = context.attach(trace.set_span_in_context(span, None))
    span.set_attribute("coopgate.partner", "bank-a")
    span.set_attribute("coopgate.case_id", "case-0123456789abcdef")
    context.detach(token)
    span.end()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kinds", default="sdk,lean,noop")
    parser.add_argument("--spans", type=int, default=20000)
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    tracers = {kind: tracer(kind) for kind in kinds}
    for _ in range(3):
        for kind in kinds:
            started = time.process_time()
            for _ in range(args.spans):
                one(tracers[kind])
            spent = (time.process_time() - started) / args.spans * 1e6
            print(f"{kind:5s} {spent:6.1f} µs CPU per span")


if __name__ == "__main__":
    main()
