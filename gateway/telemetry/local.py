"""The embedded stack's own telemetry store: spans and metric points in one SQLite file
(``DATA_DIR/telemetry.db``), so that `coopgate trace` and `coopgate stats` work without
a collector.

The store is an ordinary exporter behind the SDK's batching: the ``BatchSpanProcessor``
and the ``PeriodicExportingMetricReader`` call it on their own threads, never on the
event loop. Metrics are asked for as deltas, so a window (``--since 1h``) is the sum of
the points written in it. What is older than the retention goes at the next export
(swept once a minute): points by their time, spans by their export batch, once every
span in it ended before the horizon."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    Sum,
)
from opentelemetry.sdk.metrics.export import (
    Histogram as HistogramData,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

#: The attributes a span's case is found by: ours, and Temporal's workflow id (= case id).
CASE_ATTRIBUTES = ("coopgate.case_id", "temporalWorkflowID")

#: Spans are kept as their export batches: a batch is one row, its spans one JSON array
#: (each span an array: trace id, span id, parent id, name, kind, start, end, status,
#: case id, attributes), in the order exported (a rowid table); the cases a batch's spans
#: name, and the traces of its spans that name none, index it. Measured on the
#: exporter's thread, which competes with the event loop for the GIL: a row per span
#: (its attributes' JSON, a statement step and an index entry each) cost 70 k
#: instructions a view span, a batch as one row 51 k with the standard library's JSON
#: encoder, 27 k with orjson's (docs/BENCHMARKS.md, "3 Dec 2026, morning"); a row per
#: span clustered on (trace_id, span_id), the first layout, about three times the CPU of
#: a row per span in a rowid table.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS span_batches (end_ns INTEGER NOT NULL, spans TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS span_cases (
    case_id TEXT NOT NULL, batch INTEGER NOT NULL, PRIMARY KEY (case_id, batch)
) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS span_traces (
    trace_id TEXT NOT NULL, batch INTEGER NOT NULL, PRIMARY KEY (trace_id, batch)
) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS points (
    at_ns INTEGER NOT NULL, name TEXT NOT NULL, unit TEXT NOT NULL, kind TEXT NOT NULL,
    attributes TEXT NOT NULL, count INTEGER, sum REAL, min REAL, max REAL, value REAL
)""",
    "CREATE INDEX IF NOT EXISTS points_at ON points (at_ns)",
)
#: A store written before kept a row per span (``spans``): its rows are moved into
#: batches of this many once, when opened.
_MOVED_BATCH = 512
#: The batches whose spans all ended before the horizon: those before the first (in
#: rowid order, the order exported) that did not, all of them once every one did. A span
#: exported late (a long one) keeps its batch until it too is past the horizon.
_FIRST_KEPT = """SELECT coalesce(
    (SELECT rowid FROM span_batches WHERE end_ns >= ?1 ORDER BY rowid LIMIT 1),
    (SELECT max(rowid) + 1 FROM span_batches), 0
)"""
#: Batch ids asked for in one statement (SQLite's bound-parameter limit is 999 in old
#: builds).
_IDS_PER_QUERY = 500
#: The standard library's JSON encoder, made once (``json.dumps`` with options makes one
#: a call): for what orjson refuses.
_to_json = json.JSONEncoder(default=str, separators=(",", ":")).encode


def _batch_json(rows: Sequence[SpanFields]) -> str:
    """An export batch as one JSON document: orjson (1.3 µs a span with the standard
    library's encoder, 0.13 with it, measured on view spans); what it refuses (an integer
    past 64 bits, a key that is not a string) the standard library writes, anything not
    JSON as its ``str``."""
    try:
        return orjson.dumps(rows, default=str).decode()
    except orjson.JSONEncodeError:
        return _to_json(rows)


@dataclass(slots=True, frozen=True)
class SpanRow:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, Any]


@dataclass(slots=True, frozen=True)
class PointRow:
    """One exported data point: a histogram's count/sum/min/max over the interval, a
    counter's delta (``value``), or a gauge's last value."""

    at_ns: int
    name: str
    unit: str
    kind: str
    attributes: dict[str, str]
    count: int | None
    sum: float | None
    min: float | None
    max: float | None
    value: float | None


class LocalTelemetry:
    """The file, opened by the exporters (writing) and by the CLI (reading)."""

    def __init__(self, path: Path, *, retention_hours: float = 72.0) -> None:
        self.path = path
        self._retention_ns = int(retention_hours * 3600 * 1e9)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._last_sweep = 0.0

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=2000")
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                db.execute(statement)
            old = db.execute("SELECT sql FROM sqlite_master WHERE name = 'spans'").fetchone()
            if old is not None:
                self._move_rows(db, old[0])
            db.execute("COMMIT")
            self._db = db
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- writing (exporter threads) --------------------------------------------

    def write_spans(self, rows: Sequence[SpanFields]) -> None:
        """One export batch (`span_rows`), as one row."""
        with self._lock:
            db = self._conn()
            db.execute("BEGIN")
            if rows:
                self._insert_batch(db, rows)
            self._sweep(db)
            db.execute("COMMIT")

    @staticmethod
    def _insert_batch(db: sqlite3.Connection, rows: Sequence[SpanFields]) -> None:
        batch = db.execute(
            "INSERT INTO span_batches VALUES (?, ?)",
            (max(row[6] for row in rows), _batch_json(rows)),
        ).lastrowid
        db.executemany(
            "INSERT INTO span_cases VALUES (?, ?)",
            [(case, batch) for case in {row[8] for row in rows if row[8]}],
        )
        db.executemany(
            "INSERT INTO span_traces VALUES (?, ?)",
            [(trace, batch) for trace in {row[0] for row in rows if not row[8]}],
        )

    def _move_rows(self, db: sqlite3.Connection, layout: str) -> None:
        """A store's rows of the earlier layouts (a row per span), moved into batches in
        the order they were written (the order they ended, for the first layout), a
        batch at a time."""
        order = "end_ns" if "WITHOUT ROWID" in layout else "rowid"
        old = db.execute(f"SELECT * FROM spans ORDER BY {order}")
        while rows := old.fetchmany(_MOVED_BATCH):
            self._insert_batch(db, [(*row[:9], json.loads(row[9])) for row in rows])
        db.execute("DROP TABLE spans")

    def write_points(self, rows: Sequence[tuple[Any, ...]]) -> None:
        with self._lock:
            db = self._conn()
            db.execute("BEGIN")
            db.executemany("INSERT INTO points VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            self._sweep(db)
            db.execute("COMMIT")

    def _sweep(self, db: sqlite3.Connection) -> None:
        if time.monotonic() - self._last_sweep < 60:
            return
        self._last_sweep = time.monotonic()
        horizon = time.time_ns() - self._retention_ns
        (first_kept,) = db.execute(_FIRST_KEPT, (horizon,)).fetchone()
        db.execute("DELETE FROM span_batches WHERE rowid < ?", (first_kept,))
        db.execute("DELETE FROM span_cases WHERE batch < ?", (first_kept,))
        db.execute("DELETE FROM span_traces WHERE batch < ?", (first_kept,))
        db.execute("DELETE FROM points WHERE at_ns < ?", (horizon,))

    # -- reading (the CLI) -----------------------------------------------------

    def case_trace(self, case_id: str) -> list[SpanRow]:
        """The case's spans and, in the traces that touched it, the spans that name no
        case, oldest first."""
        with self._lock:
            db = self._conn()
            own = [
                row
                for row in self._spans_in(db, "span_cases", "case_id", [case_id])
                if row[8] == case_id
            ]
            traces = {row[0] for row in own}
            caseless = [
                row
                for row in self._spans_in(db, "span_traces", "trace_id", sorted(traces))
                if row[8] is None and row[0] in traces
            ]
        rows = sorted(own + caseless, key=lambda row: row[5])
        return [
            SpanRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], attributes=r[9]) for r in rows
        ]

    @staticmethod
    def _spans_in(
        db: sqlite3.Connection, index: str, column: str, keys: Sequence[str]
    ) -> list[list[Any]]:
        """Every span of the batches ``index`` lists under ``keys``, in batch order."""
        batches = sorted(
            {
                batch
                for (batch,) in _each_in(
                    db, f"SELECT batch FROM {index} WHERE {column} IN ({{}})", keys
                )
            }
        )
        spans: list[list[Any]] = []
        for (document,) in _each_in(
            db, "SELECT spans FROM span_batches WHERE rowid IN ({}) ORDER BY rowid", batches
        ):
            spans.extend(json.loads(document))
        return spans

    def cases_starting(self, prefix: str, limit: int = 5) -> list[str]:
        """The cases whose id starts with ``prefix`` (as short as the demo prints them),
        at most ``limit``, by the case index."""
        with self._lock:
            rows = (
                self._conn()
                .execute(
                    "SELECT DISTINCT case_id FROM span_cases WHERE case_id >= ?1 AND case_id < ?2 "
                    "ORDER BY case_id LIMIT ?3",
                    (prefix, prefix + "\U0010ffff", limit),
                )
                .fetchall()
            )
        return [r[0] for r in rows]

    def points_since(self, since_ns: int) -> list[PointRow]:
        with self._lock:
            rows = (
                self._conn()
                .execute("SELECT * FROM points WHERE at_ns >= ? ORDER BY at_ns", (since_ns,))
                .fetchall()
            )
        return [PointRow(r[0], r[1], r[2], r[3], json.loads(r[4]), *r[5:]) for r in rows]


def _each_in(db: sqlite3.Connection, query: str, values: Sequence[Any]) -> Iterator[Any]:
    """The rows of ``query`` (its ``IN ({})`` filled with ``values``), asked for a
    part of the values at a time."""
    for at in range(0, len(values), _IDS_PER_QUERY):
        part = values[at : at + _IDS_PER_QUERY]
        yield from db.execute(query.format(",".join("?" * len(part))), part)


def _case_of(attributes: dict[str, Any]) -> str | None:
    for key in CASE_ATTRIBUTES:
        value = attributes.get(key)
        if isinstance(value, str) and value:
            return value
    return None


_KIND = {kind: kind.name for kind in SpanKind}
_STATUS = {code: code.name for code in StatusCode}


def _attributes(span: ReadableSpan) -> dict[str, Any]:
    """A copy of the span's attributes as a plain dict (their mapping's own ``copy``, one
    C-level dict copy: `dict()` of it went key by key through Python)."""
    attributes = span.attributes
    if isinstance(attributes, MappingProxyType):
        copied = attributes.copy()
        if type(copied) is dict:
            return copied
    return dict(attributes or {})


#: A span as the store keeps it: trace id, span id, parent id, name, kind, start, end,
#: status, case id, attributes.
SpanFields = tuple[str, str, str | None, str, str, int, int, str, str | None, dict[str, Any]]


def span_rows(spans: Sequence[ReadableSpan]) -> list[SpanFields]:
    """The store's fields of ``spans`` (those started and ended)."""
    rows: list[SpanFields] = []
    for span in spans:
        context = span.context
        start, end = span.start_time, span.end_time
        if context is None or start is None or end is None:
            continue
        attributes = _attributes(span)
        parent = span.parent
        rows.append(
            (
                f"{context.trace_id:032x}",
                f"{context.span_id:016x}",
                f"{parent.span_id:016x}" if parent else None,
                span.name,
                _KIND[span.kind],
                start,
                end,
                _STATUS[span.status.status_code],
                _case_of(attributes),
                attributes,
            )
        )
    return rows


class LocalSpanExporter(SpanExporter):
    def __init__(self, store: LocalTelemetry) -> None:
        self._store = store

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            self._store.write_spans(span_rows(spans))
        except sqlite3.Error:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._store.close()


_DELTA = {
    Counter: AggregationTemporality.DELTA,
    UpDownCounter: AggregationTemporality.CUMULATIVE,
    Histogram: AggregationTemporality.DELTA,
    ObservableCounter: AggregationTemporality.DELTA,
    ObservableUpDownCounter: AggregationTemporality.CUMULATIVE,
    ObservableGauge: AggregationTemporality.CUMULATIVE,
}


class LocalMetricExporter(MetricExporter):
    """Writes each interval's points: deltas for counters and histograms, the current
    value for up-down counters and gauges."""

    def __init__(self, store: LocalTelemetry) -> None:
        super().__init__(preferred_temporality=_DELTA)  # type: ignore[arg-type]
        self._store = store

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        rows = list(_point_rows(metrics_data))
        if rows:
            try:
                self._store.write_points(rows)
            except sqlite3.Error:
                return MetricExportResult.FAILURE
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._store.close()


def _point_rows(data: MetricsData) -> Iterable[tuple[Any, ...]]:
    for resource_metrics in data.resource_metrics:
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    labels = json.dumps(dict(point.attributes or {}), sort_keys=True, default=str)
                    at = point.time_unix_nano
                    if isinstance(metric.data, HistogramData):
                        if not point.count:  # type: ignore[union-attr]
                            continue
                        yield (
                            at,
                            metric.name,
                            metric.unit or "",
                            "histogram",
                            labels,
                            point.count,  # type: ignore[union-attr]
                            point.sum,  # type: ignore[union-attr]
                            point.min,  # type: ignore[union-attr]
                            point.max,  # type: ignore[union-attr]
                            None,
                        )
                    elif isinstance(metric.data, Sum | Gauge):
                        value = point.value  # type: ignore[union-attr]
                        kind = (
                            "counter"
                            if isinstance(metric.data, Sum) and metric.data.is_monotonic
                            else "gauge"
                        )
                        if kind == "counter" and not value:
                            continue
                        yield (
                            at,
                            metric.name,
                            metric.unit or "",
                            kind,
                            labels,
                            *(None,) * 4,
                            value,
                        )
