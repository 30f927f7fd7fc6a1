"""The work the gateway hands a partner, as typed values: what each kind of work item
holds, read from the wire once (`work_item_from_proto`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from coopgate.v1 import work_pb2
from google.protobuf import timestamp_pb2

from partners.enums import Channel, ErasureReason


@dataclass(slots=True, frozen=True)
class DiagnosisRequest:
    """Check your component of the service for this case; answer with
    ``PartnerClient.submit_finding`` before ``deadline``."""

    request_id: str
    case_id: str
    service_id: str
    component: str
    #: The customer as this partner knows them; empty when they are not linked.
    customer_local_id: str
    #: This partner's pairwise pseudonym for the customer.
    subject_id: str
    #: What the customer reported; empty unless consent lets this partner see it.
    summary: str
    deadline: dt.datetime | None


@dataclass(slots=True, frozen=True)
class OwnershipDecision:
    """Who the gateway's policy chose to own the relationship and resolve, and why."""

    decision_id: str
    relationship_owner_id: str
    resolver_ids: tuple[str, ...]
    rule: str
    explanation: str


@dataclass(slots=True, frozen=True)
class OwnershipOffer:
    """Become the customer's single point of contact: accept or decline before ``deadline``."""

    offer_id: str
    case_id: str
    service_id: str
    decision: OwnershipDecision
    deadline: dt.datetime | None


@dataclass(slots=True, frozen=True)
class CustomerNotification:
    """Tell the customer, on ``channel`` (the one they used), about a milestone."""

    notification_id: str
    case_id: str
    customer_local_id: str
    channel: Channel
    milestone: str
    message: str


@dataclass(slots=True, frozen=True)
class ConsentPrompt:
    """Ask the customer whether ``recipient_partner_id`` may see this data; answer
    with ``grant_consent(consent_request_id=...)`` or ``refuse_consent_request``."""

    consent_request_id: str
    case_id: str
    customer_local_id: str
    channel: Channel
    source_partner_id: str
    recipient_partner_id: str
    categories: tuple[str, ...]
    purposes: tuple[str, ...]
    reason: str


@dataclass(slots=True, frozen=True)
class CaseNotice:
    """News about a case this partner takes part in (``kind``: ownership, escalation, …)."""

    notice_id: str
    case_id: str
    kind: str
    message: str


@dataclass(slots=True, frozen=True)
class ErasureNotice:
    """A customer's data was erased at the gateway (you are told under GDPR art. 19):
    erase what you received through it. ``reason`` CUSTOMER_REQUEST (art. 17): forget
    the customer, named as you know them (``customer_local_id``, empty when you are not
    linked to them), and the cases you took part in (``case_ids``); RETENTION_EXPIRED:
    forget those cases. Acknowledging it (the subscription does, once your handler
    returned) is recorded in the gateway's audit log, and the gateway then forgets the
    notice too."""

    notice_id: str
    customer_local_id: str
    case_ids: tuple[str, ...]
    erased_at: dt.datetime | None
    reason: ErasureReason


Payload = (
    DiagnosisRequest
    | OwnershipOffer
    | CustomerNotification
    | ConsentPrompt
    | CaseNotice
    | ErasureNotice
)


@dataclass(slots=True, frozen=True)
class WorkItem:
    """One delivery: ``payload`` is None for a kind this SDK does not know yet (acknowledged
    all the same); ``traceparent``/``tracestate``: the W3C Trace Context it was made in."""

    work_id: str
    created_at: dt.datetime | None
    #: How many times it was delivered before this delivery.
    redeliveries: int
    payload: Payload | None
    traceparent: str = ""
    tracestate: str = ""


def _time(stamp: timestamp_pb2.Timestamp, present: bool) -> dt.datetime | None:
    return stamp.ToDatetime(dt.UTC) if present else None


def work_item_from_proto(item: work_pb2.WorkItem) -> WorkItem:
    """The typed value of a wire work item."""
    payload: Payload | None = None
    match item.WhichOneof("payload"):
        case "diagnosis_request":
            r = item.diagnosis_request
            payload = DiagnosisRequest(
                request_id=r.request_id,
                case_id=r.case_id,
                service_id=r.service_id,
                component=r.component,
                customer_local_id=r.customer_local_id,
                subject_id=r.subject_id,
                summary=r.summary,
                deadline=_time(r.deadline, r.HasField("deadline")),
            )
        case "ownership_offer":
            o = item.ownership_offer
            d = o.decision
            payload = OwnershipOffer(
                offer_id=o.offer_id,
                case_id=o.case_id,
                service_id=o.service_id,
                decision=OwnershipDecision(
                    decision_id=d.decision_id,
                    relationship_owner_id=d.relationship_owner_id,
                    resolver_ids=tuple(d.resolver_ids),
                    rule=d.rule,
                    explanation=d.explanation,
                ),
                deadline=_time(o.deadline, o.HasField("deadline")),
            )
        case "customer_notification":
            n = item.customer_notification
            payload = CustomerNotification(
                notification_id=n.notification_id,
                case_id=n.case_id,
                customer_local_id=n.customer_local_id,
                channel=Channel.of(n.channel),
                milestone=n.milestone,
                message=n.message,
            )
        case "consent_prompt":
            p = item.consent_prompt
            payload = ConsentPrompt(
                consent_request_id=p.consent_request_id,
                case_id=p.case_id,
                customer_local_id=p.customer_local_id,
                channel=Channel.of(p.channel),
                source_partner_id=p.source_partner_id,
                recipient_partner_id=p.recipient_partner_id,
                categories=tuple(p.categories),
                purposes=tuple(p.purposes),
                reason=p.reason,
            )
        case "case_notice":
            c = item.case_notice
            payload = CaseNotice(
                notice_id=c.notice_id, case_id=c.case_id, kind=c.kind, message=c.message
            )
        case "erasure_notice":
            e = item.erasure_notice
            payload = ErasureNotice(
                notice_id=e.notice_id,
                customer_local_id=e.customer_local_id,
                case_ids=tuple(e.case_ids),
                erased_at=_time(e.erased_at, e.HasField("erased_at")),
                reason=ErasureReason.of(e.reason),
            )
    created = _time(item.created_at, item.HasField("created_at"))
    return WorkItem(
        item.work_id, created, item.redeliveries, payload, item.traceparent, item.tracestate
    )
