"""The embedded telemetry store (``DATA_DIR/telemetry.db``): what its span exporter
writes is what `coopgate trace` reads back, whatever the store's layout was before (a
row per span, clustered by its ids or in a rowid table): its rows move into batches."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id

from gateway.telemetry.lean import LeanTracerProvider
from gateway.telemetry.local import LocalSpanExporter, LocalTelemetry, SpanFields

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
# The second layout, a row per span in a rowid table.
_ROWS = """
CREATE TABLE spans (
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_id TEXT, name TEXT NOT NULL,
    kind TEXT NOT NULL, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    status TEXT NOT NULL, case_id TEXT, attributes TEXT NOT NULL
);
CREATE INDEX spans_case ON spans (case_id) WHERE case_id IS NOT NULL;
CREATE INDEX spans_caseless ON spans (trace_id) WHERE case_id IS NULL;
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


def _tables(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    return names


@pytest.mark.parametrize("layout", [_CLUSTERED, _ROWS], ids=["clustered", "rows"])
def test_a_store_of_an_earlier_layout_keeps_its_spans(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "telemetry.db"
    now = time.time_ns() - 1_000_000
    old = sqlite3.connect(path)
    old.executescript(layout)
    old.executemany(
        "INSERT INTO spans VALUES (?,?,?,?,?,?,?,?,?,?)",
        [
            (
                "a" * 32,
                "b" * 16,
                None,
                "root",
                "SERVER",
                now,
                now + 1,
                "UNSET",
                "case-1",
                '{"k":1}',
            ),
            ("a" * 32, "c" * 16, "b" * 16, "job", "CONSUMER", now, now + 2, "OK", None, "{}"),
            ("d" * 32, "e" * 16, None, "other", "SERVER", now, now + 3, "UNSET", None, "{}"),
        ],
    )
    old.execute("UPDATE spans SET attributes = ? WHERE name = 'root'", ('{"k":1}',))
    many = [  # more than a batch: moved as two
        (f"{i:032x}", f"{i:016x}", None, f"view-{i}", "SERVER", now + i, now + i, "UNSET",
         "case-2", "{}")
        for i in range(600)
    ]  # fmt: skip
    old.executemany("INSERT INTO spans VALUES (?,?,?,?,?,?,?,?,?,?)", many)
    old.commit()  # (times of now: older spans would go at the next write's retention sweep)
    old.close()
    store = LocalTelemetry(path)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(LocalSpanExporter(store)))
    with provider.get_tracer("test").start_as_current_span("later") as span:
        span.set_attribute("coopgate.case_id", "case-1")
        later = span.get_span_context()

    spans = store.case_trace("case-1")

    assert [
        (s.trace_id, s.span_id, s.parent_id, s.name, s.status, s.attributes) for s in spans
    ] == [
        ("a" * 32, "b" * 16, None, "root", "UNSET", {"k": 1}),
        ("a" * 32, "c" * 16, "b" * 16, "job", "OK", {}),
        (
            format_trace_id(later.trace_id),
            format_span_id(later.span_id),
            None,
            "later",
            "UNSET",
            {"coopgate.case_id": "case-1"},
        ),
    ]
    assert store.cases_starting("case-") == ["case-1", "case-2"]
    assert [s.name for s in store.case_trace("case-2")] == [f"view-{i}" for i in range(600)]
    store.close()
    assert _tables(path) == {"span_batches", "span_cases", "span_traces", "points"}


def _row(name: str, end_ns: int, case_id: str | None, trace_id: str = "a" * 32) -> SpanFields:
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
        {},
    )


def test_the_retention_sweep_takes_the_spans_that_ended_before_it_and_no_other(
    tmp_path: Path,
) -> None:
    hour = 3600 * 10**9
    now = time.time_ns()
    store = LocalTelemetry(tmp_path / "telemetry.db", retention_hours=1)
    store._last_sweep = time.monotonic()  # no sweep until told
    # Batches in the order they are exported, each spans that ended by then: a batch
    # goes once every span in it ended before the horizon.
    store.write_spans([_row("old-1", now - 3 * hour, "case-1")])
    store.write_spans([_row("old-2", now - 2 * hour, "case-2")])
    store.write_spans(
        [
            _row("kept-1", now - hour // 2, "case-1"),
            _row("old-late", now - 2 * hour, "case-1"),  # exported with a younger one
        ]
    )
    assert [s.name for s in store.case_trace("case-1")] == ["old-1", "old-late", "kept-1"]
    store._last_sweep = -1e9  # the next write sweeps
    store.write_spans([_row("kept-2", now, "case-1")])
    assert [s.name for s in store.case_trace("case-1")] == ["old-late", "kept-1", "kept-2"]
    assert store.case_trace("case-2") == []
    assert store.cases_starting("case-") == ["case-1"]

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


def test_a_case_trace_reads_across_batches(tmp_path: Path) -> None:
    """A case's spans in several export batches, the spans naming no case of its traces
    in others; more batches than one statement asks for at once."""
    now = time.time_ns()
    store = LocalTelemetry(tmp_path / "telemetry.db")
    for i in range(1200):
        trace = f"{i:032x}"
        store.write_spans([_row(f"view-{i}", now + 2 * i, "case-1", trace_id=trace)])
        store.write_spans([_row(f"job-{i}", now + 2 * i + 1, None, trace_id=trace)])
    store.write_spans([_row("elsewhere", now, None, trace_id="f" * 32)])
    names = [s.name for s in store.case_trace("case-1")]
    assert len(names) == 2400
    assert names[:4] == ["view-0", "job-0", "view-1", "job-1"]
    assert names[-1] == "job-1199"
    store.close()


def test_a_batch_keeps_what_orjson_refuses(tmp_path: Path) -> None:
    """An attribute past 64 bits, which orjson refuses, is written by the standard
    library's encoder; the batch's other spans with it."""
    store = LocalTelemetry(tmp_path / "telemetry.db")
    now = time.time_ns()
    big = _row("big", now, "case-1")
    big[9]["coopgate.count"] = 2**70
    store.write_spans([_row("plain", now - 1, "case-1"), big])
    spans = store.case_trace("case-1")
    assert [(s.name, s.attributes) for s in spans] == [
        ("plain", {}),
        ("big", {"coopgate.count": 2**70}),
    ]
    store.close()
