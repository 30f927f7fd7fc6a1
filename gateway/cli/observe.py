"""`coopgate trace CASE` and `coopgate stats`: the embedded stack's telemetry store
(``DATA_DIR/telemetry.db``) read in the terminal, no collector needed. Both read the
file directly, like the offline audit checks: run them where the stack runs."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gateway.cli.client import PlainTable, fold_table, print_table
from gateway.settings import Settings
from gateway.telemetry import LocalTelemetry, PointRow, SpanRow

out = Console()
err = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option(help="State directory (default: ./var).")]

#: How wide the waterfall's bars are (the table fits 80 columns).
BAR = 18


def _store(data_dir: Path | None) -> LocalTelemetry:
    settings = Settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    if not settings.telemetry_db.exists():
        err.print(
            f"[red]error:[/red] no telemetry store at {settings.telemetry_db}: it is written "
            "by `coopgate up` (COOPGATE_TELEMETRY_STORE, on where the data dir exists)"
        )
        raise typer.Exit(1)
    return LocalTelemetry(settings.telemetry_db)


# -- trace --------------------------------------------------------------------


@dataclass(slots=True)
class _Row:
    span: SpanRow
    depth: int
    label: str
    who: str


def _who(span: SpanRow) -> str:
    partner = str(span.attributes.get("coopgate.partner", ""))
    if span.kind == "PRODUCER":
        return f"→ {partner}" if partner else "gateway"
    if span.kind == "CONSUMER" or (span.kind == "CLIENT" and partner):
        return partner or "a partner"
    if span.kind == "SERVER" and partner:
        return partner
    if span.name.startswith(("RunWorkflow", "HandleSignal", "HandleUpdate", "CompleteWorkflow")):
        return "workflow"
    if span.name.startswith(("StartActivity", "RunActivity")):
        return "worker"
    return "gateway"


def _label(span: SpanRow) -> str:
    name = span.name
    if name.startswith("/"):  # a gRPC method: /package.Service/Method
        name = name.rsplit("/", 1)[-1]
    elif name.startswith("coopgate.work "):  # a partner acting on a work item
        name = "handles " + name.removeprefix("coopgate.work ")
    elif ":" in name:  # Temporal: RunActivity:request_diagnosis
        kind, _, what = name.partition(":")
        name = f"{_TEMPORAL.get(kind, kind)} {what}".strip()
    outcome = span.attributes.get("coopgate.outcome") or span.attributes.get("coopgate.rule")
    return f"{name} ({outcome})" if outcome else name


#: Temporal's zero-length spans that only mark that something was scheduled or checked.
_MARKERS = ("StartActivity:", "ValidateUpdate:")


#: Temporal's span kinds, as the waterfall says them (an activity by its name alone).
_TEMPORAL = {
    "RunActivity": "",
    "RunWorkflow": "run",
    "StartWorkflow": "start",
    "SignalWorkflow": "signal",
    "HandleSignal": "signalled",
    "StartWorkflowUpdate": "update",
    "HandleUpdate": "updated",
    "CompleteWorkflow": "completed",
}


def _start(span: SpanRow) -> int:
    return span.start_ns


def waterfall(spans: list[SpanRow]) -> list[_Row]:
    """The spans as a tree in start order, each under its parent (roots: spans whose
    parent is not in the trace, such as a partner's own span it did not export)."""
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[SpanRow]] = defaultdict(list)
    for span in spans:
        children[span.parent_id if span.parent_id in ids else None].append(span)
    rows: list[_Row] = []

    def walk(parent: SpanRow | None, depth: int) -> None:
        for span in sorted(children[parent.span_id if parent else None], key=_start):
            if span.name.startswith(_MARKERS):  # instants: their children stand for them
                walk(span, depth)
                continue
            who = _who(span)
            if span.kind == "CONSUMER" and parent is not None:  # the partner it was sent to
                who = str(parent.attributes.get("coopgate.partner", who))
            rows.append(_Row(span, depth, _label(span), who))
            walk(span, depth + 1)

    walk(None, 0)
    return rows


def _seconds(ns: int) -> str:
    seconds = ns / 1e9
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 600:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 36000 else f"{seconds / 3600:.0f}h"


def _bar(start: int, end: int, origin: int, total: int) -> Text:
    first = int((start - origin) / total * BAR)
    width = max(1, round((end - start) / total * BAR))
    first = min(first, BAR - 1)
    return Text(" " * first + "█" * min(width, BAR - first), style="cyan")


def render_trace(case_id: str, spans: list[SpanRow]) -> Table:
    origin = min(s.start_ns for s in spans)
    total = max(1, max(s.end_ns for s in spans) - origin)
    table = PlainTable(
        title=f"case {case_id}: {len({s.trace_id for s in spans})} trace(s), {_seconds(total)}",
        show_edge=False,
        pad_edge=False,
        box=None,
    )
    table.add_column("step", max_width=32, no_wrap=True, overflow="ellipsis")
    table.add_column("who", max_width=16, no_wrap=True, overflow="ellipsis")
    table.add_column("at", justify="right", no_wrap=True, min_width=6)
    table.add_column("took", justify="right", no_wrap=True, min_width=6)
    table.add_column("", width=BAR, no_wrap=True)
    for row in waterfall(spans):
        span = row.span
        style = "red" if span.status == "ERROR" else ""
        table.add_row(
            Text("  " * min(row.depth, 6) + row.label, style=style),
            row.who,
            _seconds(span.start_ns - origin),
            _seconds(span.end_ns - span.start_ns),
            _bar(span.start_ns, span.end_ns, origin, total),
        )
    return table


def partner_waits(spans: list[SpanRow]) -> dict[str, int]:
    """Per partner, the time between the gateway's work items to it and the first thing
    it did about each (its answer's span, a child of the item's): which company took
    how long."""
    by_parent: dict[str, list[SpanRow]] = defaultdict(list)
    for span in spans:
        if span.parent_id:
            by_parent[span.parent_id].append(span)
    waits: dict[str, int] = defaultdict(int)
    for span in spans:
        partner = str(span.attributes.get("coopgate.partner", ""))
        if span.kind != "PRODUCER" or not partner or not by_parent[span.span_id]:
            continue
        answered = min(child.start_ns for child in by_parent[span.span_id])
        waits[partner] += max(0, answered - span.end_ns)
    return dict(waits)


def trace(
    case_id: Annotated[
        str, typer.Argument(help="The case id, or its start if no other case's starts alike.")
    ],
    data_dir: DataDir = None,
) -> None:
    """Print a case's trace as a waterfall: every step of the incident, who took it, when,
    and how long each partner took to act on what it was sent."""
    store = _store(data_dir)
    spans = store.case_trace(case_id)
    if not spans and case_id:
        starting = store.cases_starting(case_id)
        if len(starting) > 1:
            err.print(f"{case_id!r} starts several cases' ids: " + ", ".join(starting))
            raise typer.Exit(1)
        if starting:  # a short id, as the demo's summary prints it
            case_id = starting[0]
            spans = store.case_trace(case_id)
    if not spans:
        err.print(
            f"no spans for case {case_id!r}: unknown case, older than the store keeps "
            "(COOPGATE_TELEMETRY_RETENTION_HOURS), or not sampled (OTEL_TRACES_SAMPLER)"
        )
        raise typer.Exit(1)
    out.print(render_trace(case_id, spans))
    waits = partner_waits(spans)
    if waits:
        out.print()
        out.print("partners, from being asked to acting:")
        for partner, ns in sorted(waits.items(), key=lambda w: -w[1]):
            out.print(f"  {partner:<40} {_seconds(ns):>10}")


# -- stats --------------------------------------------------------------------

_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> dt.timedelta:
    match = _SINCE.match(text.strip())
    if match is None:
        raise typer.BadParameter("a number and a unit: 90s, 30m, 1h, 7d")
    return dt.timedelta(seconds=float(match[1]) * _UNIT[match[2]])


@dataclass(slots=True)
class Summary:
    """A histogram's points summed over the window."""

    count: int = 0
    total: float = 0.0
    most: float = 0.0

    def add(self, point: PointRow) -> None:
        self.count += point.count or 0
        self.total += point.sum or 0.0
        self.most = max(self.most, point.max or 0.0)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


@dataclass(slots=True)
class Kpis:
    histograms: dict[tuple[str, tuple[tuple[str, str], ...]], Summary] = field(
        default_factory=lambda: defaultdict(Summary)
    )
    counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(
        default_factory=lambda: defaultdict(float)
    )
    gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    @classmethod
    def of(cls, points: list[PointRow]) -> Kpis:
        kpis = cls()
        for point in points:
            key = (point.name, tuple(sorted((k, str(v)) for k, v in point.attributes.items())))
            if point.kind == "histogram":
                kpis.histograms[key].add(point)
            elif point.kind == "counter":
                kpis.counters[key] += point.value or 0.0
            else:
                kpis.gauges[key] = point.value or 0.0  # the last one written
        return kpis

    def by(self, name: str, label: str, kind: str = "histogram") -> dict[str, object]:
        """Metric ``name`` grouped by the value of ``label`` (summed over other labels)."""
        source = self.histograms if kind == "histogram" else self.counters
        grouped: dict[str, object] = {}
        for (metric, labels), value in source.items():
            if metric != name:
                continue
            group = dict(labels).get(label, "")
            if isinstance(value, Summary):
                summary = grouped.setdefault(group, Summary())
                assert isinstance(summary, Summary)
                summary.count += value.count
                summary.total += value.total
                summary.most = max(summary.most, value.most)
            else:
                grouped[group] = float(grouped.get(group, 0.0)) + value  # type: ignore[arg-type]
        return grouped


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.1f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def _mean_max(summary: object) -> str:
    if not isinstance(summary, Summary) or not summary.count:
        return "-"
    return f"{_duration(summary.mean)} / {_duration(summary.most)}"


def _closed(kpis: Kpis, group: str) -> tuple[float, float]:
    """Closed cases and those the first contact resolved, per service."""
    total = fcr = 0.0
    for (metric, labels), value in kpis.counters.items():
        if metric == "coopgate.case.closed" and dict(labels).get("coopgate.service") == group:
            total += value
            if dict(labels).get("coopgate.first_contact_resolution") == "True":
                fcr += value
    return total, fcr


def service_table(kpis: Kpis) -> Table:
    table = PlainTable(title="per service (mean / max)", box=None, pad_edge=False)
    for column in ("service", "closed", "FCR", "to owner", "to resolution", "SLA", "reopen"):
        table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=22)
    owner = kpis.by("coopgate.case.time_to_owner", "coopgate.service")
    resolution = kpis.by("coopgate.case.time_to_resolution", "coopgate.service")
    breaches = kpis.by("coopgate.case.sla_breaches", "coopgate.service", "counter")
    reopened = kpis.by("coopgate.case.reopens", "coopgate.service", "counter")
    services = {dict(labels).get("coopgate.service", "") for (_, labels) in kpis.counters} - {""}
    for service in sorted(services | set(owner) | set(resolution)):
        closed, fcr = _closed(kpis, service)
        table.add_row(
            service,
            f"{closed:.0f}",
            f"{fcr / closed:.0%}" if closed else "-",
            _mean_max(owner.get(service)),
            _mean_max(resolution.get(service)),
            f"{breaches.get(service, 0.0):.0f}",
            f"{float(reopened.get(service, 0.0)) / closed:.0%}" if closed else "-",  # type: ignore[arg-type]
        )
    return table


def partner_table(kpis: Kpis) -> Table:
    table = PlainTable(title="per partner", box=None, pad_edge=False)
    for column in ("partner", "answered", "response (mean / max)", "unresponsive", "waiting"):
        table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=28)
    response = kpis.by("coopgate.partner.response_time", "coopgate.partner")
    silent = kpis.by("coopgate.partner.unresponsive", "coopgate.partner", "counter")
    waiting = {
        dict(labels).get("coopgate.partner", ""): value
        for (metric, labels), value in kpis.gauges.items()
        if metric == "coopgate.work.waiting"
    }
    for partner in sorted(set(response) | set(silent) | set(waiting)):
        summary = response.get(partner)
        table.add_row(
            partner,
            str(summary.count) if isinstance(summary, Summary) else "0",
            _mean_max(summary),
            f"{silent.get(partner, 0.0):.0f}",
            f"{waiting.get(partner, 0.0):.0f}",
        )
    return table


def operations_table(kpis: Kpis) -> Table:
    table = PlainTable(title="operations", box=None, pad_edge=False)
    table.add_column("what", no_wrap=True, overflow="ellipsis", max_width=46)
    table.add_column("figure", no_wrap=True, overflow="ellipsis", max_width=30)
    audit = kpis.by("coopgate.audit.append.duration", "")
    batch = kpis.by("coopgate.audit.append.batch_size", "")
    if isinstance(summary := audit.get(""), Summary):
        sizes = batch.get("")
        mean_batch = sizes.mean if isinstance(sizes, Summary) else 0.0
        table.add_row(
            "audit appends",
            f"{summary.count}, {summary.mean * 1000:.1f} / {summary.most * 1000:.1f} ms, "
            f"~{mean_batch:.1f} each",
        )
    calls: dict[str, Summary] = defaultdict(Summary)
    failed: dict[str, int] = defaultdict(int)
    for (metric, labels), summary in kpis.histograms.items():
        if metric == "rpc.server.call.duration":
            named = dict(labels)
            method = named.get("rpc.method", "")
            calls[method].count += summary.count
            calls[method].total += summary.total
            calls[method].most = max(calls[method].most, summary.most)
            if named.get("rpc.grpc.status_code", "0") != "0":
                failed[method] += summary.count
    for method, summary in sorted(calls.items(), key=lambda c: -c[1].count)[:10]:
        table.add_row(
            f"rpc {method}",
            f"{summary.count} ({failed[method]} failed), {summary.mean * 1000:.1f} ms mean",
        )
    for (metric, _), value in kpis.gauges.items():
        if metric == "coopgate.case.watchers":
            table.add_row("open watchers", f"{value:.0f}")
    return table


def consent_table(kpis: Kpis) -> Table:
    """The consent denials by category, purpose and reason, most first: whole names,
    never cut (a compliance officer reads them), folded where the terminal is narrow."""
    table = fold_table("category", "purpose", "reason", "denied")
    table.box, table.pad_edge = None, False  # as the other tables of `stats`
    denials = [
        (dict(labels), value)
        for (metric, labels), value in kpis.counters.items()
        if metric == "coopgate.consent.denials" and value
    ]
    for named, value in sorted(denials, key=lambda d: (-d[1], sorted(d[0].items()))):
        table.add_row(
            named.get("coopgate.category", ""),
            named.get("coopgate.purpose", ""),
            named.get("coopgate.reason", ""),
            f"{value:.0f}",
        )
    return table


def stats(
    since: Annotated[
        str, typer.Option(help="The window: 90s, 30m, 1h, 7d (up to the store's retention).")
    ] = "1h",
    data_dir: DataDir = None,
) -> None:
    """Print the resolution KPIs per service and partner, the operational figures and
    the consent denials, over the last ``--since``."""
    window = parse_since(since)
    horizon = time.time_ns() - int(window.total_seconds() * 1e9)
    kpis = Kpis.of(_store(data_dir).points_since(horizon))
    out.print(f"since {dt.datetime.now(dt.UTC) - window:%Y-%m-%d %H:%M:%S} UTC ({since})")
    for table in (service_table(kpis), partner_table(kpis), operations_table(kpis)):
        out.print()
        out.print(table)
    out.print()
    out.print("consent denials", style="italic")
    print_table(out, consent_table(kpis), empty="none")
