"""Reading a case view: one line per timeline item, and the counts a scenario
checks (what is shown, what is withheld, from whom)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from coopgate.v1 import cases_pb2

from partners.enums import AuthorKind, CaseStatus, Channel, FindingStatus

GATEWAY = "coopgate"


@dataclass(slots=True, frozen=True)
class Line:
    """One timeline item as an advisor reads it."""

    sequence: int
    at: str
    kind: str
    source: str
    text: str


def describe(item: cases_pb2.TimelineItem) -> Line:
    at = item.occurred_at.ToDatetime(dt.UTC).astimezone().strftime("%H:%M:%S")
    kind = item.WhichOneof("item") or "unknown"
    source, text = GATEWAY, ""
    match kind:
        case "interaction":
            i = item.interaction
            author = AuthorKind.of(i.author_kind).label
            source = i.partner_id
            text = f"[{Channel.of(i.channel).name}] {author} {i.author_id}: {i.summary}"
        case "finding":
            f = item.finding
            code = f" {f.fault_code}" if f.fault_code else ""
            confidence = (
                f" ({f.confidence:.2f})"
                if FindingStatus.of(f.status) != FindingStatus.UNRESPONSIVE
                else ""
            )
            source = f.partner_id
            text = f"{f.component}: {FindingStatus.of(f.status).name}{code}{confidence}"
        case "ownership_decision":
            d = item.ownership_decision
            resolvers = ", ".join(d.resolver_ids) or "none"
            text = f"owner {d.relationship_owner_id}, resolvers {resolvers} — rule {d.rule}"
        case "notification":
            n = item.notification
            source = n.partner_id
            text = f"to the customer [{Channel.of(n.channel).name}] {n.milestone}: {n.message}"
        case "escalation":
            e = item.escalation
            text = f"escalated to a level-2 expert of {e.expert_partner_id}: {e.reason}"
        case "status_change":
            text = f"status {CaseStatus.of(item.status_change.status).name}"
    return Line(item.sequence, at, kind.replace("_", " "), source, text)


def items(view: cases_pb2.CaseView, kind: str, source: str = "") -> list[cases_pb2.TimelineItem]:
    """The timeline items of one kind (``interaction``, ``finding``, …), optionally
    only those from ``source``'s systems."""
    found = []
    for item in view.timeline:
        if item.WhichOneof("item") != kind:
            continue
        if source and getattr(item, kind).partner_id != source:
            continue
        found.append(item)
    return found


def withheld(view: cases_pb2.CaseView, source: str, category: str = "") -> int:
    """How many items from ``source`` (of ``category``, if given) consent kept from this reader."""
    return sum(
        w.count
        for w in view.withheld
        if w.source_partner_id == source and (not category or w.category == category)
    )


def latest_decision(view: cases_pb2.CaseView) -> cases_pb2.OwnershipDecision | None:
    decisions = items(view, "ownership_decision")
    return decisions[-1].ownership_decision if decisions else None
