"""The pure pieces of ``IncidentWorkflow``: the ids of what it asks for, the SLA
that runs out next, how a partner's finding is merged, the checks of the
answers it is sent, and the records it hands to activities.

Deterministic and free of the workflow API: what they need (the clock's time
zone, the workflow id, the workflow's state) is passed in. The id formats are
part of recorded histories and of the gateway's idempotency: never change them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime, timedelta, tzinfo

from workflows.contracts import (
    CarriedState,
    ComponentSpec,
    CustomerAnswer,
    Finding,
    IncidentContext,
    IncidentInput,
    KpiInput,
    OwnershipAnswer,
    ResolveRequest,
)

SLA_TIME_TO_OWNER = "time-to-owner"
SLA_TIME_TO_RESOLUTION = "time-to-resolution"

# -- ids -----------------------------------------------------------------------


def request_id(workflow_id: str, round: int, component: str) -> str:
    return f"{workflow_id}/r{round}/{component}"


def decision_id(case_id: str, round: int, findings_version: int) -> str:
    return f"{case_id}-d{round}.{findings_version}"


def offer_id(case_id: str, round: int, attempt: int) -> str:
    return f"{case_id}-o{round}.{attempt}"


def escalation_id(case_id: str, round: int, breaches: int, reason: str) -> str:
    return f"{case_id}-e{round}.{breaches}.{reason[:3]}"


def notification_id(case_id: str, round: int, reopens: int, notifications: int) -> str:
    return f"{case_id}-n{round}.{reopens}.{notifications}"


# -- diagnosis -------------------------------------------------------------------


def unresponsive(component: ComponentSpec) -> Finding:
    return Finding(partner_id=component.partner_id, component=component.name, status="UNRESPONSIVE")


def merge_finding(current: Finding | None, finding: Finding, response_s: float | None) -> Finding:
    """``finding`` as the workflow keeps it: the first response time it measured
    for the component stays."""
    return Finding(
        partner_id=finding.partner_id,
        component=finding.component,
        status=finding.status,
        confidence=finding.confidence,
        fault_code=finding.fault_code,
        response_s=current.response_s if current and current.response_s else response_s,
    )


def ordered_findings(
    context: IncidentContext, findings: Mapping[str, Finding]
) -> tuple[Finding, ...]:
    """The findings in the order of the service chain."""
    return tuple(findings[c.name] for c in context.components if c.name in findings)


# -- SLA -------------------------------------------------------------------------


def next_sla(
    context: IncidentContext,
    tz: tzinfo | None,
    *,
    owner: str,
    resolved: bool,
    breaches: Collection[str],
) -> tuple[str, datetime] | None:
    """The SLA that runs out next and when, or None when none is left to breach."""
    opened = datetime.fromtimestamp(context.opened_at_s, tz=tz)
    levels = context.service_level
    if not owner and SLA_TIME_TO_OWNER not in breaches:
        return SLA_TIME_TO_OWNER, opened + timedelta(seconds=levels.time_to_owner_s)
    if not resolved and SLA_TIME_TO_RESOLUTION not in breaches:
        return SLA_TIME_TO_RESOLUTION, opened + timedelta(seconds=levels.time_to_resolution_s)
    return None


# -- records ---------------------------------------------------------------------


def kpi_record(
    context: IncidentContext,
    findings: Collection[Finding],
    *,
    owner: str,
    owner_after_s: float | None,
    resolved_at: datetime | None,
    breaches: Collection[str],
    reopens: int,
) -> KpiInput:
    resolved_after = resolved_at.timestamp() - context.opened_at_s if resolved_at else None
    responses = {f.partner_id: f.response_s for f in findings if f.response_s is not None}
    return KpiInput(
        case_id=context.case_id,
        time_to_owner_s=owner_after_s,
        time_to_resolution_s=resolved_after,
        first_contact_resolution=(reopens == 0 and owner == context.first_contact_partner_id),
        sla_breaches=tuple(breaches),
        reopens=reopens,
        partner_response_s=responses,
        unresponsive_partners=tuple(
            sorted(f.partner_id for f in findings if f.status == "UNRESPONSIVE")
        ),
    )


def carried_over(
    incident: IncidentInput,
    *,
    round: int,
    reopens: int,
    breaches: Collection[str],
    owner: str,
    owner_after_s: float | None,
) -> IncidentInput:
    """The input of the run a reopening continues as."""
    return IncidentInput(
        case_id=incident.case_id,
        service_id=incident.service_id,
        first_contact_partner_id=incident.first_contact_partner_id,
        carried=CarriedState(
            round=round,
            reopens=reopens,
            sla_breaches=tuple(breaches),
            owner_id=owner,
            owner_assigned_after_s=owner_after_s,
        ),
    )


# -- checks of the answers the workflow is sent ----------------------------------


def check_answer(
    answers: Mapping[str, tuple[str, str]],
    offer: tuple[str, str] | None,
    answer: OwnershipAnswer,
    kind: str,
) -> None:
    """An ownership answer (``kind``: accept or decline) is for the open offer, by
    the partner it was made to."""
    given = answers.get(answer.offer_id)
    if (
        given is not None
        and given[0] == kind
        and offer_partner(offer, answer.offer_id)
        in (
            answer.partner_id,
            None,
        )
    ):
        return  # the same answer again: harmless
    if offer is None or offer[0] != answer.offer_id:
        raise ValueError(f"offer {answer.offer_id!r} is not open")
    if offer[1] != answer.partner_id:
        raise ValueError(f"offer {answer.offer_id!r} was made to another partner")


def offer_partner(offer: tuple[str, str] | None, offer_id: str) -> str | None:
    return offer[1] if offer and offer[0] == offer_id else None


def check_resolve(resolution: ResolveRequest | None, owner: str, request: ResolveRequest) -> None:
    if resolution is not None:
        return
    if not owner:
        raise ValueError("the case has no relationship owner yet")
    if request.partner_id != owner:
        raise ValueError(f"only the relationship owner ({owner}) resolves the case")


def check_customer(
    customer: tuple[str, CustomerAnswer] | None, resolved_at: datetime | None, kind: str
) -> None:
    """The customer's answer (``kind``: confirm or reopen) comes once the case is resolved."""
    if customer is not None and customer[0] == kind:
        return  # the same answer again: harmless
    # _resolved_at is set before the RESOLVED status is recorded, so an answer
    # sent as soon as the view shows RESOLVED is never refused.
    if resolved_at is None or customer is not None:
        raise ValueError("the case is not waiting for the customer's answer")


def check_confirmation_relay(answer: CustomerAnswer, owner: str, first_contact: str) -> None:
    if answer.partner_id not in (owner, first_contact):
        raise ValueError("relay the customer's confirmation through the owner or first contact")
