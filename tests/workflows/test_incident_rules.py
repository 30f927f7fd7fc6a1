"""The pure pieces of IncidentWorkflow: id formats (part of histories and of the
gateway's idempotency), the refusals the gateway relays, the finding merge, the
next SLA and the KPI record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from workflows.contracts import (
    ComponentSpec,
    CustomerAnswer,
    Finding,
    IncidentContext,
    IncidentInput,
    OwnershipAnswer,
    PolicySpec,
    ResolveRequest,
    ServiceLevelSpec,
)
from workflows.incident_rules import (
    SLA_TIME_TO_OWNER,
    SLA_TIME_TO_RESOLUTION,
    carried_over,
    check_answer,
    check_confirmation_relay,
    check_customer,
    check_resolve,
    decision_id,
    escalation_id,
    kpi_record,
    merge_finding,
    next_sla,
    notification_id,
    offer_id,
    ordered_findings,
    request_id,
    unresponsive,
)

CONTEXT = IncidentContext(
    case_id="c1",
    service_id="nfc-payment",
    first_contact_partner_id="bank-a",
    components=(ComponentSpec("sim", "telco-a", 30), ComponentSpec("card", "bank-a", 30)),
    policy=PolicySpec(host_partner_id="", min_fault_confidence=0.7, acceptance_deadline_s=900),
    service_level=ServiceLevelSpec(
        time_to_owner_s=1800, time_to_resolution_s=14400, confirmation_window_s=259200
    ),
    opened_at_s=1_000_000.0,
)


def test_id_formats() -> None:
    assert request_id("c1", 2, "sim") == "c1/r2/sim"
    assert decision_id("c1", 1, 3) == "c1-d1.3"
    assert offer_id("c1", 1, 0) == "c1-o1.0"
    assert escalation_id("c1", 1, 2, "SLA time-to-owner breached") == "c1-e1.2.SLA"
    assert notification_id("c1", 2, 1, 7) == "c1-n2.1.7"


def test_answer_checks() -> None:
    offer = ("c1-o1.0", "bank-a")
    check_answer({}, offer, OwnershipAnswer("c1-o1.0", "bank-a"), "accept")
    with pytest.raises(ValueError, match=r"^offer 'c1-o1.1' is not open$"):
        check_answer({}, offer, OwnershipAnswer("c1-o1.1", "bank-a"), "accept")
    with pytest.raises(ValueError, match=r"^offer 'c1-o1.0' was made to another partner$"):
        check_answer({}, offer, OwnershipAnswer("c1-o1.0", "telco-a"), "accept")
    # The same answer again, once the offer is closed: harmless; another is refused.
    given = {"c1-o1.0": ("accept", "")}
    check_answer(given, None, OwnershipAnswer("c1-o1.0", "bank-a"), "accept")
    with pytest.raises(ValueError, match="is not open"):
        check_answer(given, None, OwnershipAnswer("c1-o1.0", "bank-a"), "decline")


def test_resolve_and_customer_checks() -> None:
    request = ResolveRequest("telco-a", "done")
    with pytest.raises(ValueError, match=r"^the case has no relationship owner yet$"):
        check_resolve(None, "", request)
    with pytest.raises(
        ValueError, match=r"^only the relationship owner \(bank-a\) resolves the case$"
    ):
        check_resolve(None, "bank-a", request)
    check_resolve(ResolveRequest("bank-a", "done"), "bank-a", request)  # already resolved
    waiting = "^the case is not waiting for the customer's answer$"
    with pytest.raises(ValueError, match=waiting):
        check_customer(None, None, "confirm")
    resolved = datetime(2026, 1, 1, tzinfo=UTC)
    check_customer(None, resolved, "confirm")
    answered = ("reopen", CustomerAnswer("bank-a"))
    check_customer(answered, resolved, "reopen")
    with pytest.raises(ValueError, match=waiting):
        check_customer(answered, resolved, "confirm")
    check_confirmation_relay(CustomerAnswer("bank-a"), "telco-a", "bank-a")
    with pytest.raises(
        ValueError, match=r"^relay the customer's confirmation through the owner or first contact$"
    ):
        check_confirmation_relay(CustomerAnswer("isp-a"), "telco-a", "bank-a")


def test_finding_merge_keeps_the_first_response_time() -> None:
    first = Finding("telco-a", "sim", "OK", 0.9, response_s=12.0)
    again = merge_finding(first, Finding("telco-a", "sim", "FAULTY", 0.8, "X"), 40.0)
    assert again == Finding("telco-a", "sim", "FAULTY", 0.8, "X", response_s=12.0)
    assert merge_finding(None, Finding("telco-a", "sim", "OK"), None).response_s is None
    silent = unresponsive(CONTEXT.components[0])
    assert silent == Finding("telco-a", "sim", "UNRESPONSIVE")
    assert ordered_findings(CONTEXT, {"card": first, "sim": silent}) == (silent, first)


def test_next_sla() -> None:
    opened = datetime.fromtimestamp(CONTEXT.opened_at_s, tz=UTC)
    assert next_sla(CONTEXT, UTC, owner="", resolved=False, breaches=[]) == (
        SLA_TIME_TO_OWNER,
        opened + timedelta(seconds=1800),
    )
    assert next_sla(CONTEXT, UTC, owner="", resolved=False, breaches=[SLA_TIME_TO_OWNER]) == (
        SLA_TIME_TO_RESOLUTION,
        opened + timedelta(seconds=14400),
    )
    assert next_sla(CONTEXT, UTC, owner="bank-a", resolved=True, breaches=[]) is None


def test_kpi_record_and_carried_state() -> None:
    findings = [
        Finding("telco-a", "sim", "UNRESPONSIVE"),
        Finding("bank-a", "card", "OK", 0.9, response_s=3.0),
    ]
    resolved_at = datetime.fromtimestamp(CONTEXT.opened_at_s + 600, tz=UTC)
    kpi = kpi_record(
        CONTEXT,
        findings,
        owner="bank-a",
        owner_after_s=60.0,
        resolved_at=resolved_at,
        breaches=["time-to-owner"],
        reopens=0,
    )
    assert (kpi.time_to_owner_s, kpi.time_to_resolution_s) == (60.0, 600.0)
    assert kpi.first_contact_resolution is True
    assert kpi.sla_breaches == ("time-to-owner",)
    assert kpi.partner_response_s == {"bank-a": 3.0}
    assert kpi.unresponsive_partners == ("telco-a",)
    incident = IncidentInput("c1", "nfc-payment", "bank-a")
    carried = carried_over(
        incident, round=1, reopens=1, breaches=[], owner="bank-a", owner_after_s=60.0
    ).carried
    assert carried is not None
    assert (carried.round, carried.reopens, carried.owner_id) == (1, 1, "bank-a")
