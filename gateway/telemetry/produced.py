"""Histograms the gateway keeps itself, for the measures it makes on every call (each
call's duration, each audit append), handed to every metric reader with the SDK's own
metrics at each collection: OpenTelemetry's *MetricProducer* (a source of metrics
aggregated outside the SDK), which the Python SDK does not have.

Why not the SDK's instruments: a record there builds a measurement, cleans, copies and
hashes its attributes, then aggregates under a lock, about 94,000 instructions a record
(callgrind) where the case view's whole call is 2.2 million. That made the per-call
measures the largest part of what telemetry added to a call, more than its span. Here a
series' attributes are prepared once (per method and status code) and a record is a
bisect and a few additions per reader.

What the readers get is what the SDK would give for the same instrument and view:
explicit-bucket histograms (a bucket counts the values up to its bound, inclusive;
negative and non-finite values are dropped) with count, sum, min and max, in the
temporality each reader asks for histograms (a delta point starts at the reader's
previous collection and none is made for an interval without values; a cumulative one
starts when the series or the reader came), under the ``coopgate`` scope, with the
provider's resource. `attach` hooks the readers after the provider has registered
them."""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

#: The scope the gateway's own meter (``metrics.get_meter("coopgate")``) reports under.
SCOPE = InstrumentationScope("coopgate")

# A state: [count, sum, min, max, start_ns, bucket 0, bucket 1, ...]
_COUNT, _SUM, _MIN, _MAX, _START, _BUCKETS = range(6)


class _Sink:
    """A reader's place in a histogram: its temporality, when it last collected (or was
    attached)."""

    __slots__ = ("collected_ns", "temporality")

    def __init__(self, temporality: AggregationTemporality, now: int) -> None:
        self.temporality = temporality
        self.collected_ns = now


class Series:
    """One attribute set of a histogram: `record` is the hot path."""

    __slots__ = ("_histogram", "attributes", "states")

    def __init__(self, histogram: ProducedHistogram, attributes: Mapping[str, Any]) -> None:
        self.attributes = dict(attributes)
        self._histogram = histogram
        #: A state per attached reader: a reader coming or going replaces the dict, a
        #: delta reader's collection swaps its state (both under the histogram's lock).
        self.states: dict[_Sink, list[Any]] = {}

    def record(self, value: float) -> None:
        histogram = self._histogram
        if not self.states:  # no reader attached: nothing to keep
            return
        if not 0 <= value < math.inf:  # negative, infinite or NaN: dropped, as by the SDK
            return
        bucket = _BUCKETS + bisect_left(histogram.bounds, value)
        with histogram.lock:
            for state in self.states.values():
                state[_COUNT] += 1
                state[_SUM] += value
                if value < state[_MIN]:
                    state[_MIN] = value
                if value > state[_MAX]:
                    state[_MAX] = value
                state[bucket] += 1


class ProducedHistogram:
    """An explicit-bucket histogram kept here (see the module's docstring)."""

    def __init__(self, name: str, unit: str, description: str, bounds: Sequence[float]) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self.bounds = tuple(float(b) for b in bounds)
        self.lock = threading.Lock()
        self._series: dict[frozenset[tuple[str, Any]], Series] = {}
        self._sinks: list[_Sink] = []

    def series(self, attributes: Mapping[str, Any] | None = None) -> Series:
        """The series of ``attributes`` (made once; keep it and call its `record`)."""
        key = frozenset((attributes or {}).items())
        found = self._series.get(key)
        if found is None:
            with self.lock:
                found = self._series.get(key)
                if found is None:
                    found = Series(self, attributes or {})
                    now = time.time_ns()
                    found.states = {sink: self._fresh(now) for sink in self._sinks}
                    self._series[key] = found
        return found

    def _fresh(self, start_ns: int) -> list[Any]:
        return [0, 0.0, math.inf, -math.inf, start_ns, *([0] * (len(self.bounds) + 1))]

    def _attach(self, temporality: AggregationTemporality) -> _Sink:
        """A reader's sink: a state in every series, from now."""
        with self.lock:
            now = time.time_ns()
            sink = _Sink(temporality, now)
            self._sinks.append(sink)
            for series in self._series.values():
                series.states = {**series.states, sink: self._fresh(now)}
            return sink

    def _detach(self, sink: _Sink) -> None:
        with self.lock:
            if sink in self._sinks:
                self._sinks.remove(sink)
            for series in self._series.values():
                series.states = {s: state for s, state in series.states.items() if s is not sink}

    def _collect(self, sink: _Sink, now: int) -> Metric | None:
        delta = sink.temporality is AggregationTemporality.DELTA
        taken: list[tuple[dict[str, Any], list[Any]]] = []
        with self.lock:
            for series in self._series.values():
                state = series.states.get(sink)
                if state is None or not state[_COUNT]:
                    continue
                if delta:
                    series.states[sink] = self._fresh(now)
                    # From the reader's previous collection, as the SDK's delta points
                    # (from the series' first value, if it came after that).
                    state[_START] = max(state[_START], sink.collected_ns)
                    taken.append((series.attributes, state))
                else:
                    taken.append((series.attributes, list(state)))
            sink.collected_ns = now
        if not taken:
            return None
        points = [
            HistogramDataPoint(
                attributes=dict(attributes),
                start_time_unix_nano=state[_START],
                time_unix_nano=now,
                count=state[_COUNT],
                sum=state[_SUM],
                bucket_counts=tuple(state[_BUCKETS:]),
                explicit_bounds=self.bounds,
                min=state[_MIN],
                max=state[_MAX],
            )
            for attributes, state in taken
        ]
        return Metric(
            name=self.name,
            description=self.description,
            unit=self.unit,
            data=Histogram(data_points=points, aggregation_temporality=sink.temporality),
        )


def _histogram_temporality(reader: MetricReader) -> AggregationTemporality:
    """The temporality ``reader`` asks for synchronous histograms (the SDK keeps it in
    the reader, by its own instrument classes)."""
    preferences = reader._instrument_class_temporality
    for kind, temporality in preferences.items():
        if issubclass(kind, SdkHistogram):
            return temporality
    return AggregationTemporality.CUMULATIVE


def attach(
    readers: Sequence[MetricReader],
    histograms: Sequence[ProducedHistogram],
    resource: Resource,
) -> Callable[[], None]:
    """Each of ``readers`` (registered with a `MeterProvider`) gets ``histograms`` with
    the SDK's metrics at every collection, until the returned function is called."""
    attached: list[tuple[ProducedHistogram, _Sink]] = []
    for reader in readers:
        collect = reader._collect  # set by the provider that registered it
        if collect is None:
            raise ValueError("attach readers after their MeterProvider registered them")
        temporality = _histogram_temporality(reader)
        sinks = [(histogram, histogram._attach(temporality)) for histogram in histograms]
        attached += sinks
        reader._set_collect_callback(_collecting(collect, sinks, resource))

    def detach() -> None:
        for histogram, sink in attached:
            histogram._detach(sink)

    return detach


def _collecting(
    collect: Any, sinks: list[tuple[ProducedHistogram, _Sink]], resource: Resource
) -> Any:
    def collecting(reader: MetricReader, timeout_millis: float = 10_000) -> MetricsData | None:
        data = collect(reader, timeout_millis=timeout_millis)
        now = time.time_ns()
        made = [
            metric
            for histogram, sink in sinks
            if (metric := histogram._collect(sink, now)) is not None
        ]
        return _merged(data, made, resource) if made else data

    return collecting


def _merged(data: MetricsData | None, made: list[Metric], resource: Resource) -> MetricsData:
    """``data`` with ``made`` in its ``coopgate`` scope (made when absent)."""
    if data is None or not data.resource_metrics:
        return MetricsData(
            resource_metrics=[
                ResourceMetrics(
                    resource=resource,
                    scope_metrics=[ScopeMetrics(scope=SCOPE, metrics=made, schema_url="")],
                    schema_url="",
                )
            ]
        )
    first, *others = data.resource_metrics
    scopes = list(first.scope_metrics)
    for index, scope in enumerate(scopes):
        if scope.scope.name == SCOPE.name:
            scopes[index] = replace(scope, metrics=[*scope.metrics, *made])
            break
    else:
        scopes.append(ScopeMetrics(scope=SCOPE, metrics=made, schema_url=""))
    return MetricsData(resource_metrics=[replace(first, scope_metrics=scopes), *others])
