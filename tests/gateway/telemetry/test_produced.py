"""The histograms kept outside the SDK (`gateway.telemetry.produced`) reach each reader
as the SDK's own histogram with the same buckets would: the same points for the same
values, in each reader's temporality, in the ``coopgate`` scope. Each test makes its own
providers (not the global one)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricsData,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.telemetry.produced import ProducedHistogram, attach

BOUNDS = (0.001, 0.01, 0.1, 1.0)
#: On a bound, just past it, under the first, over the last, negative, zero, repeated,
#: not finite (the last three are dropped).
VALUES = (0.001, 0.0011, 0.0005, 3.5, -1.0, 0.0, 0.1, 0.1, 0.25, 1.0, math.inf, math.nan)
DELTA: dict[type, AggregationTemporality] = {SdkHistogram: AggregationTemporality.DELTA}
RESOURCE = Resource.create({"service.name": "produced-test"})


def points(data: MetricsData | None, name: str) -> list[HistogramDataPoint]:
    """The points of ``name`` in a collection (none when nothing was collected)."""
    if data is None:
        return []
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
        if isinstance(point, HistogramDataPoint)
    ]


def fields(point: HistogramDataPoint) -> tuple[Any, ...]:
    """What a point says, without its times."""
    return (
        dict(point.attributes or {}),
        point.count,
        point.sum,
        tuple(point.bucket_counts),
        tuple(point.explicit_bounds),
        point.min,
        point.max,
    )


@pytest.fixture
def made() -> Iterator[tuple[ProducedHistogram, InMemoryMetricReader, InMemoryMetricReader]]:
    """A produced histogram attached to a cumulative and a delta reader."""
    histogram = ProducedHistogram("test.call.duration", "s", "A test's calls.", BOUNDS)
    cumulative = InMemoryMetricReader()
    delta = InMemoryMetricReader(preferred_temporality=DELTA)
    provider = MeterProvider(metric_readers=[cumulative, delta], resource=RESOURCE)
    detach = attach([cumulative, delta], [histogram], RESOURCE)
    yield histogram, cumulative, delta
    detach()
    provider.shutdown()


def test_the_same_points_as_the_sdks_histogram(
    made: tuple[ProducedHistogram, InMemoryMetricReader, InMemoryMetricReader],
) -> None:
    histogram, cumulative, delta = made
    sdk_reader = InMemoryMetricReader()
    sdk = MeterProvider(
        metric_readers=[sdk_reader],
        views=[
            View(
                instrument_name="test.call.duration",
                aggregation=ExplicitBucketHistogramAggregation(BOUNDS),
            )
        ],
    )
    instrument = sdk.get_meter("coopgate").create_histogram("test.call.duration", unit="s")
    for method in ("Get", "Put"):
        series = histogram.series({"rpc.method": method, "rpc.grpc.status_code": 0})
        for value in VALUES if method == "Get" else VALUES[:3]:
            series.record(value)
            instrument.record(value, {"rpc.method": method, "rpc.grpc.status_code": 0})
    expected = sorted(
        map(fields, points(sdk_reader.get_metrics_data(), "test.call.duration")), key=repr
    )
    assert len(expected) == 2
    for reader in (cumulative, delta):
        got = points(reader.get_metrics_data(), "test.call.duration")
        assert sorted(map(fields, got), key=repr) == expected
    sdk.shutdown()


def test_each_reader_in_its_temporality(
    made: tuple[ProducedHistogram, InMemoryMetricReader, InMemoryMetricReader],
) -> None:
    histogram, cumulative, delta = made
    series = histogram.series({"k": "v"})
    series.record(0.5)
    first_delta = points(delta.get_metrics_data(), "test.call.duration")
    first_cumulative = points(cumulative.get_metrics_data(), "test.call.duration")
    assert [p.count for p in first_delta] == [1]
    assert [p.count for p in first_cumulative] == [1]
    # An interval with nothing: the delta reader gets no point, the cumulative the same one.
    time.sleep(0.002)
    assert points(delta.get_metrics_data(), "test.call.duration") == []
    time.sleep(0.002)
    again = points(cumulative.get_metrics_data(), "test.call.duration")
    assert [(p.count, p.start_time_unix_nano) for p in again] == [
        (1, first_cumulative[0].start_time_unix_nano)
    ]
    series.record(2.0)
    series.record(0.002)
    (second,) = points(delta.get_metrics_data(), "test.call.duration")
    assert (second.count, second.sum, second.min, second.max) == (2, 2.002, 0.002, 2.0)
    assert tuple(second.bucket_counts) == (0, 1, 0, 0, 1)
    # A delta point starts at the reader's previous collection, the empty one included.
    assert second.start_time_unix_nano > first_delta[0].time_unix_nano
    assert second.start_time_unix_nano < second.time_unix_nano
    (total,) = points(cumulative.get_metrics_data(), "test.call.duration")
    assert (total.count, total.min, total.max) == (3, 0.002, 2.0)
    assert total.start_time_unix_nano == first_cumulative[0].start_time_unix_nano


def test_in_the_coopgate_scope_beside_the_sdks_metrics(
    made: tuple[ProducedHistogram, InMemoryMetricReader, InMemoryMetricReader],
) -> None:
    """The provider's own ``coopgate`` meter and the produced histogram share one scope
    (and the provider's resource); with nothing from the SDK, the scope is made."""
    histogram, cumulative, _ = made
    histogram.series().record(1.0)
    only = cumulative.get_metrics_data()
    assert only is not None
    assert [
        (r.resource.attributes["service.name"], s.scope.name, [m.name for m in s.metrics])
        for r in only.resource_metrics
        for s in r.scope_metrics
    ] == [("produced-test", "coopgate", ["test.call.duration"])]
    # A provider whose ``coopgate`` meter has a metric of its own: one scope holds both.
    sdk_provider = MeterProvider(metric_readers=[second := InMemoryMetricReader()])
    detach = attach([second], [histogram], RESOURCE)
    sdk_provider.get_meter("coopgate").create_counter("test.count").add(2)
    histogram.series().record(1.0)
    data = second.get_metrics_data()
    assert data is not None
    scopes = [
        (s.scope.name, sorted(m.name for m in s.metrics))
        for s in data.resource_metrics[0].scope_metrics
    ]
    assert scopes == [("coopgate", ["test.call.duration", "test.count"])]
    detach()
    sdk_provider.shutdown()


def test_a_detached_reader_gets_nothing_more(
    made: tuple[ProducedHistogram, InMemoryMetricReader, InMemoryMetricReader],
) -> None:
    histogram, _, _ = made
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    detach = attach([reader], [histogram], RESOURCE)
    series = histogram.series({"k": "v"})
    series.record(0.5)
    assert [p.count for p in points(reader.get_metrics_data(), "test.call.duration")] == [1]
    detach()
    series.record(0.5)
    assert points(reader.get_metrics_data(), "test.call.duration") == []
    provider.shutdown()
    with pytest.raises(ValueError, match="after their MeterProvider"):
        attach([InMemoryMetricReader()], [histogram], RESOURCE)


def test_nothing_kept_without_a_reader() -> None:
    histogram = ProducedHistogram("test.unread", "s", "", BOUNDS)
    series = histogram.series()
    series.record(1.0)
    assert series.states == {}
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    detach = attach([reader], [histogram], RESOURCE)
    assert points(reader.get_metrics_data(), "test.unread") == []  # before: not counted
    detach()
    provider.shutdown()


def test_prometheus_scrapes_it_as_a_histogram() -> None:
    """The Prometheus reader's exposition: ``_bucket`` series by ``le``, ``_count`` and
    ``_sum``, the unit in the name, as for the SDK's histograms."""
    histogram = ProducedHistogram("rpc.server.call.duration", "s", "Per call.", BOUNDS)
    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    detach = attach([reader], [histogram], RESOURCE)
    try:
        series = histogram.series({"rpc.method": "GetCaseView", "rpc.grpc.status_code": 0})
        for value in (0.0005, 0.002, 0.002, 5.0):
            series.record(value)
        text = generate_latest(REGISTRY).decode()
    finally:
        detach()
        provider.shutdown()
    samples = {
        (sample.name, sample.labels.get("le", "")): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "rpc_server_call_duration_seconds"
        for sample in family.samples
        if sample.labels["rpc_method"] == "GetCaseView"
        and sample.labels["rpc_grpc_status_code"] == "0"
    }
    bucket = "rpc_server_call_duration_seconds_bucket"
    assert samples[(bucket, "0.001")] == 1
    assert samples[(bucket, "0.01")] == 3
    assert samples[(bucket, "+Inf")] == 4
    assert samples[("rpc_server_call_duration_seconds_count", "")] == 4
    assert samples[("rpc_server_call_duration_seconds_sum", "")] == pytest.approx(5.0045)
