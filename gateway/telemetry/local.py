"""The embedded stack's own telemetry store: spans and metric points in one SQLite file
(``DATA_DIR/telemetry.db``), so that `coopgate trace` and `coopgate stats` work without
a collector.

The store is an ordinary exporter behind the SDK's batching: the ``BatchSpanProcessor``
and the ``PeriodicExportingMetricReader`` call it on their own threads, never on the
event loop. Metrics are asked for as deltas, so a window (``--since 1h``) is the sum of
the points written in it. Rows older than the retention go at the next export."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

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

#: Spans in insertion order (a rowid table), which is the order they ended in, give or
#: take an export batch: a batch's rows append to the table's last pages and to the
#: case's index, where the rows of one case sit together. The spans that name no case
#: are also indexed by trace, to find them in a case's traces. Measured on the exporter's
#: thread, which competes with the event loop for the GIL: the first layout, clustered on
#: (trace_id, span_id) (random keys, wide rows), cost about three times the CPU per span
#: written; an index of every span's trace id (random keys: every row dirtied a page of
#: its own, written to the WAL at each commit) and one on end_ns (for the retention
#: sweep, which now goes by rowid) cost about 60% more than this layout.
_SPANS = """CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_id TEXT, name TEXT NOT NULL,
    kind TEXT NOT NULL, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    status TEXT NOT NULL, case_id TEXT, attributes TEXT NOT NULL
)"""
_SCHEMA = (
    _SPANS,
    "DROP INDEX IF EXISTS spans_trace",
    "DROP INDEX IF EXISTS spans_end",
    "CREATE INDEX IF NOT EXISTS spans_case ON spans (case_id) WHERE case_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS spans_caseless ON spans (trace_id) WHERE case_id IS NULL",
    """CREATE TABLE IF NOT EXISTS points (
    at_ns INTEGER NOT NULL, name TEXT NOT NULL, unit TEXT NOT NULL, kind TEXT NOT NULL,
    attributes TEXT NOT NULL, count INTEGER, sum REAL, min REAL, max REAL, value REAL
)""",
    "CREATE INDEX IF NOT EXISTS points_at ON points (at_ns)",
)
#: A store written before: its spans are moved into the new layout once, when opened, in
#: the order they ended (the retention sweep goes by rowid).
_MOVE_SPANS = (
    "ALTER TABLE spans RENAME TO spans_clustered",
    "DROP INDEX IF EXISTS spans_case",
    "DROP INDEX IF EXISTS spans_end",
    _SPANS,
    "INSERT INTO spans SELECT * FROM spans_clustered ORDER BY end_ns",
    "DROP TABLE spans_clustered",
)
#: The rows that ended before the horizon: those before the first (in rowid order) that
#: did not, all of them once every row did. A row inserted out of its end's order (by an
#: export batch's few seconds) goes at a later sweep, never before its time.
_SWEEP_SPANS = """DELETE FROM spans WHERE rowid < coalesce(
    (SELECT rowid FROM spans WHERE end_ns >= ?1 ORDER BY rowid LIMIT 1),
    (SELECT max(rowid) + 1 FROM spans)
)"""
#: Attributes as JSON, the encoder made once (``json.dumps`` with options makes one a call).
_to_json = json.JSONEncoder(default=str, separators=(",", ":")).encode


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
            layout = db.execute("SELECT sql FROM sqlite_master WHERE name = 'spans'").fetchone()
            if layout is not None and "WITHOUT ROWID" in layout[0]:
                for statement in _MOVE_SPANS:
                    db.execute(statement)
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute("COMMIT")
            self._db = db
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- writing (exporter threads) --------------------------------------------

    def write_spans(self, rows: Sequence[tuple[Any, ...]]) -> None:
        with self._lock:
            db = self._conn()
            db.execute("BEGIN")
            db.executemany("INSERT INTO spans VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            self._sweep(db)
            db.execute("COMMIT")

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
        db.execute(_SWEEP_SPANS, (horizon,))
        db.execute("DELETE FROM points WHERE at_ns < ?", (horizon,))

    # -- reading (the CLI) -----------------------------------------------------

    def case_trace(self, case_id: str) -> list[SpanRow]:
        """The case's spans and, in the traces that touched it, the spans that name no
        case, oldest first."""
        with self._lock:
            db = self._conn()
            rows = db.execute(
                "SELECT * FROM spans WHERE case_id = ?1 UNION ALL "
                "SELECT * FROM spans WHERE case_id IS NULL AND trace_id IN "
                "(SELECT DISTINCT trace_id FROM spans WHERE case_id = ?1) ORDER BY start_ns",
                (case_id,),
            ).fetchall()
        return [
            SpanRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[9])) for r in rows
        ]

    def cases_starting(self, prefix: str, limit: int = 5) -> list[str]:
        """The cases whose id starts with ``prefix`` (as short as the demo prints them),
        at most ``limit``, by the case index."""
        with self._lock:
            rows = (
                self._conn()
                .execute(
                    "SELECT DISTINCT case_id FROM spans WHERE case_id >= ?1 AND case_id < ?2 "
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


def span_rows(spans: Sequence[ReadableSpan]) -> list[tuple[Any, ...]]:
    """The store's rows for ``spans`` (those started and ended)."""
    rows = []
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
                _to_json(attributes),
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
