"""The gateway's metrics, by OpenTelemetry's naming rules (dotted, unit in `unit`, not in
the name): what a resolution desk is judged by, and what tells an operator why.

Instruments come from the global meter, a no-op until `configure` installs a provider:
recording then costs a method call. Labels are ids of services, partners, rules,
categories, purposes and outcomes, never a customer's identifier or any case text:
KPIs are derived data, and consent covers them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

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
audit_append = _meter.create_histogram(
    "coopgate.audit.append.duration", unit="s", description="One durable audit append."
)
audit_batch = _meter.create_histogram(
    "coopgate.audit.append.batch_size", unit="{entry}", description="Entries per audit append."
)
rpc_duration = _meter.create_histogram(
    "rpc.server.call.duration",
    unit="s",
    description="Per call, by service, method and gRPC status code (OTel RPC conventions).",
)
watchers = _meter.create_up_down_counter(
    "coopgate.case.watchers", unit="{watcher}", description="Open WatchCase streams."
)


class _Deferred:
    """Measures made on every call, handed to the SDK in batches: its ``record`` costs
    several times more one call at a time (cold, between the call's other work) than in
    a loop. A batch goes when it holds `BATCH` measures or a second after its first, on
    the event loop (at once without one), and at `flush_measures` (before a test reads,
    and at shutdown); a measure reaches the exporters at most that second late."""

    BATCH = 128
    DELAY = 1.0

    def __init__(self) -> None:
        self._pending: list[tuple[Callable[..., None], float, Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0

    def add(self, record: Callable[..., None], value: float, labels: Any = None) -> None:
        self._pending.append((record, value, labels))
        if len(self._pending) >= self.BATCH:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.DELAY, self.flush)
            except RuntimeError:  # no event loop here
                self.flush()
                return
            self._due = time.monotonic() + 2 * self.DELAY
        elif time.monotonic() > self._due:  # its loop stopped before the timer fired
            self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        for record, value, labels in pending:
            record(value, labels)


_deferred = _Deferred()


def flush_measures() -> None:
    """Hand the per-call measures still waiting (see `_Deferred`) to the SDK now."""
    _deferred.flush()


def rpc_recorder(method: str) -> Callable[[float, Any], None]:
    """Records one call of ``method`` (``/package.Service/Method``): its seconds and its
    ``grpc.StatusCode`` (None: OK), in the next batch (`_Deferred`). Labels are made once
    per status."""
    _, service, name = method.split("/", 2) if method.count("/") == 2 else ("", "", method)
    by_code: dict[Any, dict[str, Any]] = {}

    def record(seconds: float, code: Any) -> None:
        labels = by_code.get(code)
        if labels is None:
            labels = by_code[code] = {
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": name,
                "rpc.grpc.status_code": code.value[0] if code is not None else 0,
            }
        _deferred.add(rpc_duration.record, seconds, labels)

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


def _sla_name(breach: str) -> str:
    """The SLA a breach entry names (entries may carry more after a colon)."""
    return breach.split(":", 1)[0][:64]


def audit_appended(records: Sequence[Any], seconds: float) -> None:
    """One audit append: its latency, its size (both in the next batch of measures) and
    the consent denials it records."""
    _deferred.add(audit_append.record, seconds)
    _deferred.add(audit_batch.record, len(records))
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
