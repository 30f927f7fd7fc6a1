"""The embedded telemetry store (``DATA_DIR/telemetry.db``): what its span exporter
writes is what `coopgate trace` reads back, whatever the store's layout was before."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id

from gateway.telemetry.lean import LeanTracerProvider
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


@pytest.mark.parametrize("kind", [TracerProvider, LeanTracerProvider])
def test_a_case_trace_holds_every_span_of_the_traces_that_touched_it(
    tmp_path: Path, kind: type[TracerProvider]
) -> None:
    store = LocalTelemetry(tmp_path / "telemetry.db")
    provider = kind(shutdown_on_exit=False)
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
    assert indexes == {"spans", "spans_case", "spans_caseless"}


def _row(
    name: str, end_ns: int, case_id: str | None, trace_id: str = "a" * 32
) -> tuple[object, ...]:
    return (
        trace_id,
        name[:16].ljust(16, "0"),
        None,
        name,
        "INTERNAL",
        end_ns - 1,
        end_ns,
        "UNSET",
        case_id,
        "{}",
    )


def test_the_retention_sweep_takes_the_spans_that_ended_before_it_and_no_other(
    tmp_path: Path,
) -> None:
    hour = 3600 * 10**9
    now = time.time_ns()
    store = LocalTelemetry(tmp_path / "telemetry.db", retention_hours=1)
    store._last_sweep = -1e9  # the next write sweeps
    # In the order they are exported: by their end, give or take a batch.
    store.write_spans(
        [
            _row("old-1", now - 3 * hour, "case-1"),
            _row("old-2", now - 2 * hour, "case-1"),
            _row("kept-1", now - hour // 2, "case-1"),
            _row("old-late", now - 2 * hour, "case-1"),  # exported after a younger one
            _row("kept-2", now, "case-1"),
        ]
    )
    assert [s.name for s in store.case_trace("case-1")] == ["old-late", "kept-1", "kept-2"]
    store._last_sweep = -1e9
    store.write_spans([_row("kept-3", now, "case-1")])
    assert [s.name for s in store.case_trace("case-1")] == [
        "old-late",
        "kept-1",
        "kept-2",
        "kept-3",
    ]

    store._retention_ns = 0  # everything ended before now: every row goes
    store._last_sweep = -1e9
    store.write_spans([])
    assert store.case_trace("case-1") == []
    store.close()


def test_a_case_trace_leaves_out_the_spans_of_other_cases_in_its_traces(tmp_path: Path) -> None:
    now = time.time_ns()
    store = LocalTelemetry(tmp_path / "telemetry.db")
    store.write_spans(
        [
            _row("partner-job", now, None),
            _row("view-1", now + 1, "case-1"),
            _row("view-2", now + 2, "case-2"),
            _row("elsewhere", now + 3, None, trace_id="b" * 32),
        ]
    )
    assert [s.name for s in store.case_trace("case-1")] == ["partner-job", "view-1"]
    assert [s.name for s in store.case_trace("case-2")] == ["partner-job", "view-2"]
    store.close()


def test_a_store_indexed_by_every_span_s_trace_drops_those_indexes(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.db"
    store = LocalTelemetry(path)
    store.write_spans([_row("root", time.time_ns(), "case-1")])
    store.close()
    db = sqlite3.connect(path)
    db.execute("DROP INDEX spans_caseless")
    db.execute("CREATE INDEX spans_trace ON spans (trace_id)")
    db.execute("CREATE INDEX spans_end ON spans (end_ns)")
    db.commit()
    db.close()

    store = LocalTelemetry(path)
    assert [s.name for s in store.case_trace("case-1")] == ["root"]
    store.close()
    db = sqlite3.connect(path)
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'spans'")}
    db.close()
    assert indexes == {"spans", "spans_case", "spans_caseless"}
