"""Case data as the templates show it: one ``Row`` per timeline item with its company
and channel, the withheld groups, deadlines with the time left. Every text here is
another company's and reaches the page only through Jinja2's autoescaping."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from coopgate.v1 import cases_pb2
from google.protobuf import timestamp_pb2

from partners.enums import AuthorKind, CaseStatus, Channel, FindingStatus

GATEWAY = "coopgate"


@dataclass(slots=True, frozen=True)
class Row:
    """One timeline item: ``kind`` (interaction, finding, …), the company it comes
    from, the channel (empty when none), when, a title and a text."""

    sequence: int
    kind: str
    company: str
    channel: str
    at: str
    at_iso: str
    title: str
    text: str
    tone: str = ""


def when(stamp: timestamp_pb2.Timestamp) -> dt.datetime | None:
    if not stamp.seconds and not stamp.nanos:
        return None
    return dt.datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, dt.UTC)


_CHANNELS = {int(c): c.label for c in Channel}
_AUTHORS = {int(a): a.label for a in AuthorKind}


def left(due: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """Time left before ``due`` as people say it; "overdue 3m" once past."""
    if due is None:
        return ""
    seconds = int((due - (now or dt.datetime.now(dt.UTC))).total_seconds())
    sign, seconds = ("overdue ", -seconds) if seconds < 0 else ("", seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"
    return sign + text


def row(item: cases_pb2.TimelineItem) -> Row:
    kind = item.WhichOneof("item") or "unknown"
    stamp = when(item.occurred_at) or dt.datetime.now(dt.UTC)
    base = {
        "sequence": item.sequence,
        "at": stamp.strftime("%H:%M:%S"),
        "at_iso": stamp.isoformat(),
    }
    match kind:
        case "interaction":
            i = item.interaction
            author = " ".join(p for p in (_AUTHORS.get(i.author_kind, ""), i.author_id) if p)
            return _row(
                base,
                kind="interaction",
                company=i.partner_id,
                channel=_CHANNELS.get(i.channel, ""),
                title=author,
                text=i.summary,
            )
        case "finding":
            f = item.finding
            status = FindingStatus.of(f.status)
            detail = [status.name]
            if f.fault_code:
                detail.append(f.fault_code)
            if status != FindingStatus.UNRESPONSIVE:
                detail.append(f"confidence {f.confidence:.2f}")
            if f.evidence_ref:
                detail.append(f"evidence {f.evidence_ref}")
            tone = {FindingStatus.FAULTY: "bad", FindingStatus.DEGRADED: "warn"}.get(status, "")
            return _row(
                base,
                kind="finding",
                company=f.partner_id,
                channel="",
                title=f.component,
                text=" · ".join(detail),
                tone=tone,
            )
        case "ownership_decision":
            d = item.ownership_decision
            resolvers = ", ".join(d.resolver_ids) or "none"
            return _row(
                base,
                kind="ownership decision",
                company=GATEWAY,
                channel="",
                title=f"owner {d.relationship_owner_id}, resolvers {resolvers}",
                text=f"rule {d.rule}: {d.explanation}",
            )
        case "notification":
            n = item.notification
            return _row(
                base,
                kind="notification",
                company=n.partner_id,
                channel=_CHANNELS.get(n.channel, ""),
                title=f"to the customer: {n.milestone}",
                text=n.message,
            )
        case "escalation":
            e = item.escalation
            return _row(
                base,
                kind="escalation",
                company=GATEWAY,
                channel="",
                title=f"level-2 expert of {e.expert_partner_id}",
                text=e.reason,
                tone="bad",
            )
        case "status_change":
            return _row(
                base,
                kind="status",
                company=GATEWAY,
                channel="",
                title=CaseStatus.of(item.status_change.status).label,
                text="",
            )
    return _row(base, kind="unknown", company="", channel="", title="", text="")


def _row(
    base: dict[str, Any],
    *,
    kind: str,
    company: str,
    channel: str,
    title: str,
    text: str,
    tone: str = "",
) -> Row:
    return Row(
        sequence=base["sequence"],
        at=base["at"],
        at_iso=base["at_iso"],
        kind=kind,
        company=company,
        channel=channel,
        title=title,
        text=text,
        tone=tone,
    )


@dataclass(slots=True, frozen=True)
class Header:
    case_id: str
    service_id: str
    status: str
    subject_id: str
    first_contact: str
    channel: str
    owner: str
    resolvers: tuple[str, ...]
    opened: str
    summary: str
    deadlines: tuple[tuple[str, str, str], ...]


def header(h: cases_pb2.CaseHeader) -> Header:
    status = CaseStatus.of(h.status)
    deadlines = []
    open_ = status not in (CaseStatus.RESOLVED, CaseStatus.CLOSED)
    for label, stamp, applies in (
        ("owner due", h.owner_due_at, open_ and not h.relationship_owner_id),
        ("resolution due", h.resolution_due_at, open_),
    ):
        due = when(stamp)
        if due is not None and applies:
            deadlines.append((label, due.isoformat(), left(due)))
    opened = when(h.opened_at)
    return Header(
        case_id=h.case_id,
        service_id=h.service_id,
        status=status.label,
        subject_id=h.subject_id,
        first_contact=h.first_contact_partner_id,
        channel=Channel.of(h.first_contact_channel).label,
        owner=h.relationship_owner_id,
        resolvers=tuple(h.resolver_ids),
        opened=opened.strftime("%Y-%m-%d %H:%M") if opened else "",
        summary=h.summary,
        deadlines=tuple(deadlines),
    )


def due_in_seconds(h: cases_pb2.CaseHeader, now: dt.datetime) -> float | None:
    """Seconds until the case's next SLA deadline (negative once overdue); None when none."""
    status = CaseStatus.of(h.status)
    if status in (CaseStatus.RESOLVED, CaseStatus.CLOSED):
        return None
    stamp = h.resolution_due_at if h.relationship_owner_id else h.owner_due_at
    due = when(stamp)
    return (due - now).total_seconds() if due else None


@dataclass(slots=True, frozen=True)
class WithheldGroup:
    source: str
    category: str
    count: int


def withheld(view: cases_pb2.CaseView) -> list[WithheldGroup]:
    return [WithheldGroup(w.source_partner_id, w.category, w.count) for w in view.withheld]


def latest_decision(view: cases_pb2.CaseView) -> cases_pb2.OwnershipDecision | None:
    found = [i.ownership_decision for i in view.timeline if i.HasField("ownership_decision")]
    return found[-1] if found else None
