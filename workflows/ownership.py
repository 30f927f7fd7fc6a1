"""Pure, deterministic decisions: rank fault hypotheses from the findings,
then choose the relationship owner and the resolvers by the service's policy.

Every decision names the rule that fired and explains its inputs, so an
advisor and a compliance officer can read why.
"""

from __future__ import annotations

from collections.abc import Iterable

from workflows.contracts import Finding, Hypothesis, IncidentContext, OwnershipDecision

#: How much each status counts towards a fault hypothesis, times the confidence.
STATUS_WEIGHT = {"FAULTY": 1.0, "DEGRADED": 0.5}

RULE_SINGLE_FAULT = "single-faulty-component"
RULE_MULTIPLE_FAULTS = "multiple-faulty-components"
RULE_INCONCLUSIVE = "nothing-conclusive"


def rank_hypotheses(findings: Iterable[Finding]) -> tuple[Hypothesis, ...]:
    """Components that may be at fault, most likely first (ties by component name)."""
    hypotheses = [
        Hypothesis(
            component=f.component,
            partner_id=f.partner_id,
            score=round(STATUS_WEIGHT[f.status] * max(0.0, min(1.0, f.confidence)), 6),
            fault_code=f.fault_code,
        )
        for f in findings
        if f.status in STATUS_WEIGHT and f.confidence > 0
    ]
    return tuple(sorted(hypotheses, key=lambda h: (-h.score, h.component)))


def decide_ownership(
    context: IncidentContext, findings: Iterable[Finding], decision_id: str
) -> OwnershipDecision:
    """Apply the service's ownership policy to the findings.

    - one faulty component at or above the policy's confidence: its owner resolves;
    - several: each of their owners resolves;
    - none: nobody is designated, the relationship owner escalates.
    The relationship owner is the service's host when it names one, else the
    partner first contacted ("no wrong door"); candidates after it are the
    resolvers, and the first-contacted partner is always the last fallback.
    """
    findings = tuple(findings)
    hypotheses = rank_hypotheses(findings)
    threshold = context.policy.min_fault_confidence
    confident = [
        f
        for f in sorted(findings, key=lambda f: (-f.confidence, f.component))
        if f.status == "FAULTY" and f.confidence >= threshold
    ]
    resolvers = tuple(dict.fromkeys(f.partner_id for f in confident))
    preferred = context.policy.host_partner_id or context.first_contact_partner_id
    why_owner = owner_reason(context)
    summary = _summarise(findings, context)
    if len(confident) == 1:
        f = confident[0]
        rule = RULE_SINGLE_FAULT
        explanation = (
            f"{f.component} ({f.partner_id}) is FAULTY{_code(f)} at confidence "
            f"{f.confidence:.2f} >= {threshold:.2f}, no other component is: {f.partner_id} "
            f"resolves; relationship owner {preferred} because {why_owner}."
        )
    elif confident:
        rule = RULE_MULTIPLE_FAULTS
        faults = ", ".join(f"{f.component} ({f.partner_id}{_code(f)})" for f in confident)
        explanation = (
            f"{len(confident)} components are FAULTY at confidence >= {threshold:.2f}: "
            f"{faults}; each owner resolves; relationship owner {preferred} because {why_owner}."
        )
    else:
        rule = RULE_INCONCLUSIVE
        preferred = context.first_contact_partner_id
        explanation = (
            f"no component is FAULTY at confidence >= {threshold:.2f}; "
            f"{preferred}, contacted first, owns the relationship and escalates."
        )
    candidates = tuple(dict.fromkeys((preferred, *resolvers, context.first_contact_partner_id)))
    return OwnershipDecision(
        decision_id=decision_id,
        owner_candidates=candidates,
        resolver_ids=resolvers,
        rule=rule,
        explanation=f"{explanation} Findings: {summary}.",
        escalate=rule == RULE_INCONCLUSIVE,
        hypotheses=hypotheses,
    )


def owner_reason(context: IncidentContext) -> str:
    """Why the policy prefers its relationship owner when a component is at fault."""
    preferred = context.policy.host_partner_id or context.first_contact_partner_id
    origin = context.policy.source
    return (
        f"{origin} names {preferred} as host"
        if context.policy.host_partner_id
        else f"{preferred} was contacted first and {origin} names no host"
    )


def _code(finding: Finding) -> str:
    return f" ({finding.fault_code})" if finding.fault_code else ""


def _summarise(findings: tuple[Finding, ...], context: IncidentContext) -> str:
    by_component = {f.component: f for f in findings}
    parts = []
    for component in context.components:
        found = by_component.get(component.name)
        if found is None:
            parts.append(f"{component.name}: no answer yet")
        elif found.status in ("UNRESPONSIVE", "UNKNOWN"):
            parts.append(f"{component.name}: {found.status}")
        else:
            parts.append(f"{component.name}: {found.status} {found.confidence:.2f}{_code(found)}")
    return "; ".join(parts)
