"""The gateway's metrics, by OpenTelemetry's naming rules (dotted, unit in `unit`, not in
the name): what a resolution desk is judged by, and what tells an operator why.

Instruments come from the global meter, a no-op until `configure` installs a provider:
recording then costs a method call. The three histograms recorded on every call or
append (`PRODUCED`) are kept by `gateway.telemetry.produced` and handed to the same
readers; they keep nothing until `configure` attaches its readers. Labels are ids of
services, partners, rules, categories, purposes and outcomes, never a customer's
identifier or any case text: KPIs are derived data, and consent covers them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from gateway.telemetry.produced import ProducedHistogram, Series

_meter = metrics.get_meter("coopgate")

SERVICE = "coopgate.service"
PARTNER = "coopgate.partner"

time_to_owner = _meter.create_histogram(
    "coopgate.case.time_to_owner", unit="s", description="From opening to an accepted owner."
)
time_to_resolution = _meter.create_histogram(
    "coopgate.case.time_to_resolution",
    unit="s",
    description="From opening to the owner's resolution.",
)
cases_closed = _meter.create_counter(
    "coopgate.case.closed",
    unit="{case}",
    description="Closed cases, by service, owner and whether the first contact resolved it "
    "(first-contact resolution rate = closed{first_contact_resolution=true} / closed).",
)
sla_breaches = _meter.create_counter(
    "coopgate.case.sla_breaches", unit="{breach}", description="Service levels missed, by SLA."
)
reopens = _meter.create_counter(
    "coopgate.case.reopens",
    unit="{reopen}",
    description="Reopens of closed cases (reopen rate = reopens / closed).",
)
partner_response = _meter.create_histogram(
    "coopgate.partner.response_time",
    unit="s",
    description="From a diagnosis request to the partner's finding.",
)
partner_unresponsive = _meter.create_counter(
    "coopgate.partner.unresponsive",
    unit="{request}",
    description="Diagnosis requests a partner left past their deadline.",
)
consent_denials = _meter.create_counter(
    "coopgate.consent.denials",
    unit="{decision}",
    description="Reads of another partner's data refused, by category, purpose and reason.",
)
#: Calls and appends: sub-millisecond to seconds.
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# The measures made on every call or append are kept here (`produced`): through the
# SDK's instruments a record cost more than the call's whole span (94 k instructions).
audit_append = ProducedHistogram(
    "coopgate.audit.append.duration", "s", "One durable audit append.", FAST_BUCKETS
)
audit_batch = ProducedHistogram(
    "coopgate.audit.append.batch_size", "{entry}", "Entries per audit append.", BATCH_BUCKETS
)
rpc_duration = ProducedHistogram(
    "rpc.server.call.duration",
    "s",
    "Per call, by service, method and gRPC status code (OTel RPC conventions).",
    FAST_BUCKETS,
)
#: The histograms `configure` hands to its metric readers.
PRODUCED = (audit_append, audit_batch, rpc_duration)
watchers = _meter.create_up_down_counter(
    "coopgate.case.watchers", unit="{watcher}", description="Open WatchCase streams."
)


def rpc_recorder(method: str) -> Callable[[float, Any], None]:
    """Records one call of ``method`` (``/package.Service/Method``): its seconds and its
    ``grpc.StatusCode`` (None: OK). A series per status, made at its first call."""
    _, service, name = method.split("/", 2) if method.count("/") == 2 else ("", "", method)
    by_code: dict[Any, Series] = {}

    def record(seconds: float, code: Any) -> None:
        series = by_code.get(code)
        if series is None:
            series = by_code[code] = rpc_duration.series(
                {
                    "rpc.system": "grpc",
                    "rpc.service": service,
                    "rpc.method": name,
                    "rpc.grpc.status_code": code.value[0] if code is not None else 0,
                }
            )
        series.record(seconds)

    return record


def watch_work_waiting(read: Callable[[], dict[str, int]]) -> None:
    """Report ``read()`` (partner → items delivered but not acknowledged) as the gauge
    ``coopgate.work.waiting``; ``read`` must not block (it returns what was last counted)."""

    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(count, {PARTNER: partner}) for partner, count in read().items()]

    _meter.create_observable_gauge(
        "coopgate.work.waiting",
        callbacks=[observe],
        unit="{item}",
        description="Work items waiting for each partner's acknowledgement.",
    )


def case_closed(
    *,
    service_id: str,
    owner_id: str,
    time_to_owner_s: float | None,
    time_to_resolution_s: float | None,
    first_contact_resolution: bool,
    breaches: Sequence[str],
    reopen_count: int,
    partner_response_s: dict[str, float],
    unresponsive: Sequence[str],
) -> None:
    """A case's KPIs, once it closed (the ``record_kpis`` activity)."""
    labels = {SERVICE: service_id, PARTNER: owner_id}
    if time_to_owner_s is not None:
        time_to_owner.record(time_to_owner_s, labels)
    if time_to_resolution_s is not None:
        time_to_resolution.record(time_to_resolution_s, labels)
    cases_closed.add(1, {**labels, "coopgate.first_contact_resolution": first_contact_resolution})
    for sla in breaches:
        sla_breaches.add(1, {SERVICE: service_id, "coopgate.sla": _sla_name(sla)})
    if reopen_count:
        reopens.add(reopen_count, {SERVICE: service_id})
    for partner, seconds in partner_response_s.items():
        partner_response.record(seconds, {SERVICE: service_id, PARTNER: partner})
    for partner in unresponsive:
        partner_unresponsive.add(1, {SERVICE: service_id, PARTNER: partner})


_append = audit_append.series()
_batch = audit_batch.series()


def _sla_name(breach: str) -> str:
    """The SLA a breach entry names (entries may carry more after a colon)."""
    return breach.split(":", 1)[0][:64]


def audit_appended(records: Sequence[Any], seconds: float) -> None:
    """One audit append: its latency, its size and the consent denials it records."""
    _append.record(seconds)
    _batch.record(len(records))
    for record in records:
        if record.decision == "deny":
            for category in record.categories:
                consent_denials.add(
                    1,
                    {
                        "coopgate.category": category,
                        "coopgate.purpose": record.purpose,
                        "coopgate.reason": record.reason,
                    },
                )
