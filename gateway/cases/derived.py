"""Derived data under its sources' consent: the ownership decision as it is stored
(structured: the rule, the owner, the resolvers, and the findings it was made from) and
as each reader sees it, composed at read time.

Every reader sees the rule, the relationship owner and the resolvers. A finding's
component, status, confidence and fault code appear only to a reader whom the consent
rules let see that finding (its flow: the source partner, ``diagnostic.findings``);
otherwise the finding is counted as withheld, in the decision's text and in the view's
``withheld``, like any other item. A component nobody answered for, and one the gateway
found unresponsive, are the gateway's own observations: shown to every reader.

Stored form: the decision's ``TimelineItem`` keeps its public fields as they are, and its
``explanation`` holds the structured decision (`DECISION_TAG` then JSON). That form
never leaves the gateway: reading a case (`DerivedDecision.parse`) replaces it with the
explanation composed for nobody (nothing cited shown), and the view, the watch and the
ownership offer compose the one their reader may see. A decision stored before this
form (plain text) is shown to every reader without its findings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from coopgate.v1 import cases_pb2

from gateway.consent.rules import Flow

#: Category of a partner's diagnosis of its component (as `cases.intake` records it).
FINDINGS_CATEGORY = "diagnostic.findings"
#: What starts a stored decision's ``explanation`` in its structured form.
DECISION_TAG = "coopgate.decision/1 "
RULE_INCONCLUSIVE = "nothing-conclusive"
#: Statuses the gateway itself records (not a partner's data).
_GATEWAY_STATUSES = ("UNRESPONSIVE",)


@dataclass(slots=True, frozen=True)
class CitedFinding:
    """A finding as the decision used it (``status``: a ``FindingStatus`` name without
    its prefix, as the workflow passes it)."""

    partner_id: str
    component: str
    status: str
    confidence: float
    fault_code: str

    @property
    def flow(self) -> Flow | None:
        """Whose data this is; None for the gateway's own observation (unresponsive)."""
        if self.status in _GATEWAY_STATUSES:
            return None
        return Flow(self.partner_id, FINDINGS_CATEGORY)


def stored_explanation(
    text: str,
    findings: Iterable[CitedFinding],
    *,
    threshold: float | None,
    owner_reason: str,
    components: Sequence[str],
) -> str:
    """The structured decision, as a stored decision item's ``explanation``: the
    workflow's own text (served whole only to a reader who may see every finding it
    cites), the policy's terms when known (the confidence threshold, why the owner),
    the service chain's components in order, and the findings."""
    body = {
        "text": text,
        "threshold": threshold,
        "owner_reason": owner_reason,
        "components": list(components),
        "findings": [
            {
                "partner_id": f.partner_id,
                "component": f.component,
                "status": f.status,
                "confidence": f.confidence,
                "fault_code": f.fault_code,
            }
            for f in findings
        ],
    }
    return DECISION_TAG + json.dumps(body, sort_keys=True, separators=(",", ":"))


@dataclass(slots=True, frozen=True)
class DerivedDecision:
    """A stored ownership decision and what each reader may be told of it."""

    #: The public item: the decision's public fields, no explanation.
    public: cases_pb2.TimelineItem
    text: str
    threshold: float | None
    owner_reason: str
    components: tuple[str, ...]
    findings: tuple[CitedFinding, ...]
    #: Stored before decisions were structured: its findings are unknown, never shown.
    legacy: bool
    #: The distinct flows of the findings cited, and how many findings each has.
    cites: tuple[Flow, ...]
    cite_counts: tuple[int, ...]

    @classmethod
    def parse(cls, stored: cases_pb2.TimelineItem) -> DerivedDecision:
        public = cases_pb2.TimelineItem()
        public.CopyFrom(stored)
        explanation = public.ownership_decision.explanation
        public.ownership_decision.explanation = ""
        body = _body(explanation)
        if body is None:
            return cls(public, "", None, "", (), (), True, (), ())
        findings = tuple(
            CitedFinding(
                partner_id=str(f["partner_id"]),
                component=str(f["component"]),
                status=str(f["status"]),
                confidence=float(f["confidence"]),
                fault_code=str(f["fault_code"]),
            )
            for f in body.get("findings", ())
        )
        counts: dict[Flow, int] = {}
        for f in findings:
            if f.flow is not None:
                counts[f.flow] = counts.get(f.flow, 0) + 1
        threshold = body.get("threshold")
        return cls(
            public=public,
            text=str(body.get("text", "")),
            threshold=float(threshold) if threshold is not None else None,
            owner_reason=str(body.get("owner_reason", "")),
            components=tuple(str(c) for c in body.get("components", ())),
            findings=findings,
            legacy=False,
            cites=tuple(counts),
            cite_counts=tuple(counts.values()),
        )

    def item(self, shown: Sequence[bool]) -> cases_pb2.TimelineItem:
        """The decision item for a reader who may see the cited flows marked in
        ``shown`` (aligned with `cites`)."""
        item = cases_pb2.TimelineItem()
        item.CopyFrom(self.public)
        item.ownership_decision.explanation = self.explanation(shown)
        return item

    def withheld(self, shown: Sequence[bool]) -> int:
        """How many of the findings cited the reader may not see."""
        return sum(n for n, ok in zip(self.cite_counts, shown, strict=True) if not ok)

    def explanation(self, shown: Sequence[bool]) -> str:
        decision = self.public.ownership_decision
        if self.legacy:
            return redacted_explanation(
                decision.rule, decision.relationship_owner_id, decision.resolver_ids
            )
        if all(shown):
            return self.text
        return self.composed({flow for flow, ok in zip(self.cites, shown, strict=True) if ok})

    def composed(self, visible: set[Flow]) -> str:
        """The explanation made again from the structure, with the findings of the flows
        in ``visible`` only (with every flow, the same text as the workflow's)."""
        head = self._head(visible)
        parts: list[str] = []
        withheld = 0
        by_component = {f.component: f for f in self.findings}
        names = self.components + tuple(
            f.component for f in self.findings if f.component not in self.components
        )
        for name in names:
            found = by_component.get(name)
            if found is None:
                parts.append(f"{name}: no answer yet")
            elif found.flow is not None and found.flow not in visible:
                withheld += 1
            elif found.status in ("UNRESPONSIVE", "UNKNOWN"):
                parts.append(f"{name}: {found.status}")
            else:
                parts.append(f"{name}: {found.status} {found.confidence:.2f}{_code(found)}")
        if withheld:
            parts.append(f"{withheld} withheld")
        return f"{head} Findings: {'; '.join(parts)}."

    def _head(self, visible: set[Flow]) -> str:
        """What every reader is told (the rule, the owner, the resolvers, the policy's
        terms), and the faulty findings that made the rule fire, those it may see."""
        decision = self.public.ownership_decision
        owner = decision.relationship_owner_id
        threshold = f"{self.threshold:.2f}" if self.threshold is not None else ""
        if decision.rule == RULE_INCONCLUSIVE:
            terms = f"no component is FAULTY at confidence >= {threshold}; " if threshold else ""
            return f"{terms}{owner}, contacted first, owns the relationship and escalates."
        why = f"relationship owner {owner}" + (
            f" because {self.owner_reason}" if self.owner_reason else ""
        )
        confident = self._confident()
        shown = [f for f in confident if f.flow is None or f.flow in visible]
        if confident and len(confident) == 1 == len(shown):
            f = shown[0]
            return (
                f"{f.component} ({f.partner_id}) is FAULTY{_code(f)} at confidence "
                f"{f.confidence:.2f} >= {threshold}, no other component is: {f.partner_id} "
                f"resolves; {why}."
            )
        if len(confident) > 1 and shown:
            faults = ", ".join(f"{f.component} ({f.partner_id}{_code(f)})" for f in shown)
            if len(shown) < len(confident):
                faults += f", {len(confident) - len(shown)} withheld"
            return (
                f"{len(confident)} components are FAULTY at confidence >= {threshold}: "
                f"{faults}; each owner resolves; {why}."
            )
        resolvers = list(decision.resolver_ids)
        who = ", ".join(resolvers) or "nobody"
        verb = "resolves" if len(resolvers) == 1 else "each resolve"
        terms = f"rule {decision.rule}" + (f", confidence >= {threshold}" if threshold else "")
        return f"{who} {verb} ({terms}); {why}."

    def _confident(self) -> list[CitedFinding]:
        """The findings at fault by the policy's threshold (none when it is unknown), as
        the workflow ranks them."""
        if self.threshold is None:
            return []
        threshold = self.threshold
        return [
            f
            for f in sorted(self.findings, key=lambda f: (-f.confidence, f.component))
            if f.status == "FAULTY" and f.confidence >= threshold
        ]


def _code(finding: CitedFinding) -> str:
    return f" ({finding.fault_code})" if finding.fault_code else ""


def redacted_explanation(rule: str, owner: str, resolvers: Iterable[str]) -> str:
    """A decision's explanation without any finding: its rule, owner and resolvers."""
    return (
        f"rule {rule}: relationship owner {owner}; resolvers {', '.join(resolvers) or 'none'}. "
        "The findings it was made from are not shown."
    )


def _body(explanation: str) -> dict[str, Any] | None:
    if not explanation.startswith(DECISION_TAG):
        return None
    try:
        body = json.loads(explanation[len(DECISION_TAG) :])
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
