"""The embedded telemetry store (``DATA_DIR/telemetry.db``): what its span exporter
writes is what `coopgate trace` reads back, whatever the store's layout was before."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id

from gateway.telemetry.local import LocalSpanExporter, LocalTelemetry

# The first layout, clustered on the span's ids, as stores written before hold it.
_CLUSTERED = """
CREATE TABLE spans (
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_id TEXT, name TEXT NOT NULL,
    kind TEXT NOT NULL, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    status TEXT NOT NULL, case_id TEXT, attributes TEXT NOT NULL,
    PRIMARY KEY (trace_id, span_id)
) WITHOUT ROWID;
CREATE INDEX spans_case ON spans (case_id) WHERE case_id IS NOT NULL;
CREATE INDEX spans_end ON spans (end_ns);
"""


def test_a_case_trace_holds_every_span_of_the_traces_that_touched_it(tmp_path: Path) -> None:
    store = LocalTelemetry(tmp_path / "telemetry.db")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(LocalSpanExporter(store)))
    tracer = provider.get_tracer("test")
    with (
        tracer.start_as_current_span("/coopgate.v1.CaseService/OpenCase", kind=SpanKind.SERVER),
        tracer.start_as_current_span("StartWorkflow:Incident") as child,
    ):
        child.set_attribute("temporalWorkflowID", "case-1")
        with tracer.start_as_current_span("inner") as inner:  # no case attribute
            inner.set_attribute("coopgate.outcome", "ok")
    with tracer.start_as_current_span("/coopgate.v1.CaseService/GetCaseView") as other:
        other.set_attribute("coopgate.case_id", "case-2")

    spans = store.case_trace("case-1")

    assert [s.name for s in spans] == [
        "/coopgate.v1.CaseService/OpenCase",
        "StartWorkflow:Incident",
        "inner",
    ]
    root, workflow, inner_row = spans
    assert len({s.trace_id for s in spans}) == 1
    assert root.parent_id is None
    assert root.kind == "SERVER"
    assert workflow.parent_id == root.span_id
    assert inner_row.parent_id == workflow.span_id
    assert inner_row.attributes == {"coopgate.outcome": "ok"}
    assert all(s.start_ns <= s.end_ns for s in spans)
    assert [s.name for s in store.case_trace("case-2")] == ["/coopgate.v1.CaseService/GetCaseView"]
    assert store.case_trace("case-3") == []
    store.close()


def test_a_store_in_the_first_layout_keeps_its_spans(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.db"
    now = time.time_ns() - 1_000_000
    old = sqlite3.connect(path)
    old.executescript(_CLUSTERED)
    old.execute(
        "INSERT INTO spans VALUES (?,?,?,?,?,?,?,?,?,?)",
        ("a" * 32, "b" * 16, None, "root", "SERVER", now, now + 1, "UNSET", "case-1", '{"k":1}'),
    )
    old.commit()  # (times of now: older spans would go at the next write's retention sweep)
    old.close()
    store = LocalTelemetry(path)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(LocalSpanExporter(store)))
    with provider.get_tracer("test").start_as_current_span("later") as span:
        span.set_attribute("coopgate.case_id", "case-1")
        later = span.get_span_context()

    spans = store.case_trace("case-1")

    assert [(s.trace_id, s.span_id, s.name, s.attributes) for s in spans] == [
        ("a" * 32, "b" * 16, "root", {"k": 1}),
        (
            format_trace_id(later.trace_id),
            format_span_id(later.span_id),
            "later",
            {"coopgate.case_id": "case-1"},
        ),
    ]
    store.close()
    db = sqlite3.connect(path)
    layout = db.execute("SELECT sql FROM sqlite_master WHERE name = 'spans'").fetchone()[0]
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'spans'")}
    db.close()
    assert "WITHOUT ROWID" not in layout
    assert {"spans_trace", "spans_case", "spans_end"} <= indexes
