"""The ownership decision as stored and as each reader is told it (`gateway.cases.derived`):
made again from its structure with every finding, it is the workflow's own text; without
a finding, nothing of that finding is in it, and it is counted as withheld."""

from __future__ import annotations

import pytest
from coopgate.v1 import cases_pb2

from gateway.cases.derived import (
    FINDINGS_CATEGORY,
    CitedFinding,
    DerivedDecision,
    stored_explanation,
)
from gateway.consent.rules import Flow
from workflows.contracts import (
    ComponentSpec,
    Finding,
    IncidentContext,
    PolicySpec,
    ServiceLevelSpec,
)
from workflows.ownership import decide_ownership, owner_reason

CHAIN = {
    "sim-secure-element": "telco-a",
    "card-token": "bank-a",
    "payment-terminal": "acquirer-a",
    "nfc-stack": "handset-a",
}


def context(host: str = "") -> IncidentContext:
    return IncidentContext(
        case_id="case-1",
        service_id="nfc-payment",
        first_contact_partner_id="bank-a",
        components=tuple(ComponentSpec(c, p, 30) for c, p in CHAIN.items()),
        policy=PolicySpec(host, 0.7, 900, "agreement agr-1" if host else "the service"),
        service_level=ServiceLevelSpec(1800, 14400, 86400),
        opened_at_s=0,
    )


def stored(ctx: IncidentContext, findings: tuple[Finding, ...]) -> DerivedDecision:
    decision = decide_ownership(ctx, findings, "case-1-d1.1")
    item = cases_pb2.TimelineItem(
        ownership_decision=cases_pb2.OwnershipDecision(
            decision_id=decision.decision_id,
            relationship_owner_id=decision.owner_candidates[0],
            resolver_ids=list(decision.resolver_ids),
            rule=decision.rule,
            explanation=stored_explanation(
                decision.explanation,
                (
                    CitedFinding(f.partner_id, f.component, f.status, f.confidence, f.fault_code)
                    for f in findings
                ),
                threshold=ctx.policy.min_fault_confidence,
                owner_reason=owner_reason(ctx),
                components=[c.name for c in ctx.components],
            ),
        )
    )
    derived = DerivedDecision.parse(cases_pb2.TimelineItem.FromString(item.SerializeToString()))
    assert derived.text == decision.explanation
    return derived


SINGLE = (
    Finding("telco-a", "sim-secure-element", "FAULTY", 0.92, "SE_PAYMENT_APPLET_LOCKED"),
    Finding("bank-a", "card-token", "OK", 0.95),
    Finding("acquirer-a", "payment-terminal", "UNKNOWN", 0.2),
)
MULTIPLE = (
    Finding("telco-a", "sim-secure-element", "FAULTY", 0.92, "SE_PAYMENT_APPLET_LOCKED"),
    Finding("bank-a", "card-token", "OK", 0.95),
    Finding("acquirer-a", "payment-terminal", "FAULTY", 0.8, "TERMINAL_DOWN"),
    Finding("handset-a", "nfc-stack", "UNRESPONSIVE"),
)
INCONCLUSIVE = (
    Finding("telco-a", "sim-secure-element", "DEGRADED", 0.5, "SE_SLOW"),
    Finding("bank-a", "card-token", "OK", 0.95),
)


@pytest.mark.parametrize("findings", [SINGLE, MULTIPLE, INCONCLUSIVE])
@pytest.mark.parametrize("host", ["", "telco-a"])
def test_made_again_with_every_finding_it_is_the_workflows_text(
    findings: tuple[Finding, ...], host: str
) -> None:
    derived = stored(context(host), findings)
    assert derived.composed(set(derived.cites)) == derived.text
    assert derived.explanation([True] * len(derived.cites)) == derived.text


@pytest.mark.parametrize("findings", [SINGLE, MULTIPLE, INCONCLUSIVE])
def test_a_reader_without_the_operators_finding_reads_nothing_of_it(
    findings: tuple[Finding, ...],
) -> None:
    derived = stored(context(), findings)
    telco = Flow("telco-a", FINDINGS_CATEGORY)
    assert telco in derived.cites
    # The gateway's own observation (unresponsive) is no partner's data: never withheld.
    assert Flow("handset-a", FINDINGS_CATEGORY) not in derived.cites
    shown = [flow != telco for flow in derived.cites]
    item = derived.item(shown)
    text = item.ownership_decision.explanation
    for secret in ("SE_PAYMENT_APPLET_LOCKED", "SE_SLOW", "0.92", "0.50", "sim-secure-element"):
        assert secret not in text
    assert "1 withheld" in text
    assert derived.withheld(shown) == 1
    decision = item.ownership_decision
    assert decision.rule == derived.public.ownership_decision.rule
    assert decision.relationship_owner_id == "bank-a"
    assert "card-token: OK 0.95" in text
    serialized = item.SerializeToString()
    assert b"SE_PAYMENT_APPLET_LOCKED" not in serialized


def test_the_rule_owner_and_resolvers_are_told_to_a_reader_who_sees_no_finding() -> None:
    derived = stored(context(), SINGLE)
    item = derived.item([False] * len(derived.cites))
    decision = item.ownership_decision
    assert (decision.rule, decision.relationship_owner_id) == ("single-faulty-component", "bank-a")
    assert list(decision.resolver_ids) == ["telco-a"]
    assert decision.explanation == (
        "telco-a resolves (rule single-faulty-component, confidence >= 0.70); relationship "
        "owner bank-a because bank-a was contacted first and the service names no host. "
        "Findings: nfc-stack: no answer yet; 3 withheld."
    )
    assert derived.withheld([False] * len(derived.cites)) == 3


def test_several_faults_a_reader_sees_those_it_may() -> None:
    derived = stored(context(), MULTIPLE)
    shown = [flow.source_partner_id != "telco-a" for flow in derived.cites]
    text = derived.explanation(shown)
    assert text.startswith(
        "2 components are FAULTY at confidence >= 0.70: payment-terminal (acquirer-a "
        "(TERMINAL_DOWN)), 1 withheld; each owner resolves; relationship owner bank-a"
    )
    assert "nfc-stack: UNRESPONSIVE" in text
    assert "SE_PAYMENT_APPLET_LOCKED" not in text


def test_a_decision_stored_before_is_shown_without_its_findings() -> None:
    stored_before = cases_pb2.TimelineItem(
        ownership_decision=cases_pb2.OwnershipDecision(
            decision_id="case-1-d1.1",
            relationship_owner_id="bank-a",
            resolver_ids=["telco-a"],
            rule="single-faulty-component",
            explanation="sim-secure-element (telco-a) is FAULTY (SE_PAYMENT_APPLET_LOCKED) ...",
        )
    )
    derived = DerivedDecision.parse(stored_before)
    assert derived.legacy
    assert derived.cites == ()
    text = derived.item([]).ownership_decision.explanation
    assert "SE_PAYMENT_APPLET_LOCKED" not in text
    assert text.startswith("rule single-faulty-component: relationship owner bank-a; resolvers")


def test_the_policys_terms_unknown_are_left_out() -> None:
    decision = decide_ownership(context(), SINGLE, "d")
    item = cases_pb2.TimelineItem(
        ownership_decision=cases_pb2.OwnershipDecision(
            relationship_owner_id="bank-a",
            resolver_ids=["telco-a"],
            rule=decision.rule,
            explanation=stored_explanation(
                decision.explanation,
                [CitedFinding("telco-a", "sim-secure-element", "FAULTY", 0.92, "X")],
                threshold=None,
                owner_reason="",
                components=(),
            ),
        )
    )
    derived = DerivedDecision.parse(item)
    assert derived.explanation([False]) == (
        "telco-a resolves (rule single-faulty-component); relationship owner bank-a. "
        "Findings: 1 withheld."
    )
