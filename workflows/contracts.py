"""Activity contracts and workflow messages: names and the one dataclass each
takes or returns.

The gateway implements the activities; workflows call them by name, so
neither package imports the other's code. Statuses and finding states are
``coopgate.v1`` enum names without their prefix (``"DIAGNOSING"``,
``"FAULTY"``), as workflows do not import generated code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LOAD_INCIDENT = "load_incident"
RECORD_CASE_STATUS = "record_case_status"
REQUEST_DIAGNOSIS = "request_diagnosis"
RECORD_UNRESPONSIVE = "record_unresponsive"
RECORD_OWNERSHIP_DECISION = "record_ownership_decision"
OFFER_OWNERSHIP = "offer_ownership"
ASSIGN_OWNER = "assign_owner"
NOTIFY_CUSTOMER = "notify_customer"
ESCALATE = "escalate"
RECORD_KPIS = "record_kpis"
#: Tell the customer of a milestone, the text composed and sealed by the gateway (the
#: workflow names the milestone and references only: patch ``PATCH_NOTICES_BY_REFERENCE``).
TELL_CUSTOMER = "tell_customer"
#: Record that the case's workflow ended because its customer was erased (audited).
RECORD_CASE_ERASED = "record_case_erased"
#: A milestone's steps in one activity, in order (patch ``PATCH_COARSE_STEPS``): each
#: step is one of the activities above, with its input, idempotent as that one is.
RUN_STEPS = "run_steps"


@dataclass(slots=True, frozen=True)
class IncidentInput:
    case_id: str
    service_id: str
    first_contact_partner_id: str
    #: Set when the workflow continues as new: what it carries over.
    carried: CarriedState | None = None


@dataclass(slots=True, frozen=True)
class CarriedState:
    round: int
    reopens: int
    sla_breaches: tuple[str, ...]
    owner_id: str
    owner_assigned_after_s: float | None


@dataclass(slots=True, frozen=True)
class IncidentOutcome:
    case_id: str
    status: str
    owner_id: str = ""


@dataclass(slots=True, frozen=True)
class ComponentSpec:
    name: str
    partner_id: str
    diagnosis_deadline_s: float


@dataclass(slots=True, frozen=True)
class PolicySpec:
    host_partner_id: str
    min_fault_confidence: float
    acceptance_deadline_s: float
    #: Where the policy comes from: "the service" or "agreement <id>".
    source: str = "the service"


@dataclass(slots=True, frozen=True)
class ServiceLevelSpec:
    time_to_owner_s: float
    time_to_resolution_s: float
    confirmation_window_s: float


@dataclass(slots=True, frozen=True)
class LoadIncidentInput:
    case_id: str


@dataclass(slots=True, frozen=True)
class IncidentContext:
    case_id: str
    service_id: str
    first_contact_partner_id: str
    components: tuple[ComponentSpec, ...]
    policy: PolicySpec
    service_level: ServiceLevelSpec
    #: Seconds since the epoch at which the case was opened.
    opened_at_s: float
    #: The case's customer was erased (or its retention ended) before this run began.
    erased: bool = False


@dataclass(slots=True, frozen=True)
class RecordCaseStatusInput:
    """Move the case projection to ``status`` and append it to the timeline."""

    case_id: str
    status: str


@dataclass(slots=True, frozen=True)
class DiagnosisRequestInput:
    case_id: str
    request_id: str
    component: str
    partner_id: str
    deadline_s: float


@dataclass(slots=True, frozen=True)
class UnresponsiveInput:
    case_id: str
    component: str
    partner_id: str
    request_id: str


@dataclass(slots=True, frozen=True)
class Finding:
    """A partner's diagnosis of its component (``status``: OK, DEGRADED, FAULTY,
    UNKNOWN or UNRESPONSIVE)."""

    partner_id: str
    component: str
    status: str
    confidence: float = 0.0
    fault_code: str = ""
    #: Seconds after the request was sent (None when unresponsive).
    response_s: float | None = None


@dataclass(slots=True, frozen=True)
class Hypothesis:
    component: str
    partner_id: str
    score: float
    fault_code: str


@dataclass(slots=True, frozen=True)
class OwnershipDecision:
    decision_id: str
    #: Candidates in order; the first who accepts owns the relationship.
    owner_candidates: tuple[str, ...]
    resolver_ids: tuple[str, ...]
    rule: str
    explanation: str
    escalate: bool = False
    hypotheses: tuple[Hypothesis, ...] = ()


@dataclass(slots=True, frozen=True)
class RecordDecisionInput:
    case_id: str
    decision: OwnershipDecision
    findings: tuple[Finding, ...]


@dataclass(slots=True, frozen=True)
class OfferInput:
    case_id: str
    offer_id: str
    partner_id: str
    decision: OwnershipDecision
    deadline_s: float


@dataclass(slots=True, frozen=True)
class AssignOwnerInput:
    case_id: str
    owner_id: str
    resolver_ids: tuple[str, ...]
    accepted: bool
    #: Why: "accepted", or "fallback: no candidate accepted (no wrong door)".
    reason: str


@dataclass(slots=True, frozen=True)
class NotifyInput:
    case_id: str
    #: received, diagnosing, owner-assigned, waiting-on-partner, escalated, resolved,
    #: closed or reopened
    milestone: str
    message: str
    notification_id: str


@dataclass(slots=True, frozen=True)
class MilestoneInput:
    """A milestone to tell the customer of: ids and references only, never text (the
    workflow's history is out of erasure's reach). The gateway composes the message."""

    case_id: str
    #: As ``NotifyInput.milestone``.
    milestone: str
    notification_id: str
    #: For ``owner-assigned``: the partner that now owns the relationship.
    owner_id: str = ""
    #: For ``resolved``: the owner's resolution, as the gateway stored it (sealed).
    resolution_id: str = ""


@dataclass(slots=True, frozen=True)
class CaseErasedInput:
    case_id: str
    #: ``customer-request`` (the customer was erased) or ``retention-expired``.
    reason: str


@dataclass(slots=True, frozen=True)
class EscalateInput:
    case_id: str
    escalation_id: str
    reason: str
    expert_partner_id: str


@dataclass(slots=True, frozen=True)
class KpiInput:
    case_id: str
    time_to_owner_s: float | None
    time_to_resolution_s: float | None
    first_contact_resolution: bool
    sla_breaches: tuple[str, ...]
    reopens: int
    partner_response_s: dict[str, float] = field(default_factory=dict)
    unresponsive_partners: tuple[str, ...] = ()


# -- messages the gateway sends the workflow ---------------------------------


@dataclass(slots=True, frozen=True)
class OwnershipAnswer:
    offer_id: str
    partner_id: str
    #: Empty from the gateway since the decline's reason stays out of the history; runs
    #: recorded before kept what partners sent (the workflow never read it).
    reason: str = ""


@dataclass(slots=True, frozen=True)
class ResolveRequest:
    """The owner resolved the case. The gateway sends ``resolution_id`` (its text is
    kept in the store, sealed under the case key) and leaves ``resolution`` empty;
    ``resolution`` is the text as older gateways sent it."""

    partner_id: str
    resolution: str = ""
    resolution_id: str = ""


@dataclass(slots=True, frozen=True)
class CustomerAnswer:
    """The customer confirmed, or reopened, relayed by ``partner_id``."""

    partner_id: str
    reason: str = ""


@dataclass(slots=True, frozen=True)
class CaseErased:
    """The case's customer was erased, or its retention ended: the workflow ends."""

    #: As ``CaseErasedInput.reason``.
    reason: str


@dataclass(slots=True, frozen=True)
class CaseState:
    """What the workflow reports about itself (query)."""

    status: str
    round: int
    owner_id: str
    current_offer_id: str
    current_offer_partner_id: str
    findings: tuple[Finding, ...]
    decision: OwnershipDecision | None


@dataclass(slots=True, frozen=True)
class Step:
    """One step of ``RUN_STEPS``: exactly one field is set, named after the activity
    the step stands for, holding that activity's input."""

    record_case_status: RecordCaseStatusInput | None = None
    tell_customer: MilestoneInput | None = None
    notify_customer: NotifyInput | None = None
    request_diagnosis: DiagnosisRequestInput | None = None
    record_unresponsive: UnresponsiveInput | None = None
    record_ownership_decision: RecordDecisionInput | None = None
    offer_ownership: OfferInput | None = None
    assign_owner: AssignOwnerInput | None = None
    escalate: EscalateInput | None = None
    record_kpis: KpiInput | None = None
    record_case_erased: CaseErasedInput | None = None

    @classmethod
    def of(cls, activity: str, arg: object) -> Step:
        """The step standing for ``activity`` with ``arg`` (KeyError: not a step)."""
        if activity not in cls.__dataclass_fields__:
            raise KeyError(activity)
        return cls(**{activity: arg})  # type: ignore[arg-type]

    def activity(self) -> tuple[str, object]:
        """The activity this step stands for, and its input."""
        for name in self.__dataclass_fields__:
            arg = getattr(self, name)
            if arg is not None:
                return name, arg
        raise ValueError("a step with no activity")


@dataclass(slots=True, frozen=True)
class StepsInput:
    case_id: str
    steps: tuple[Step, ...]


# -- retention: the sweep that shreds closed cases on Temporal's clock ---------

EXPIRE_CLOSED_CASES = "expire_closed_cases"


@dataclass(slots=True, frozen=True)
class ExpireInput:
    #: The workflow's time (seconds since the epoch): cases closed longer than the
    #: retention period before it are shredded.
    now_s: float


@dataclass(slots=True, frozen=True)
class ExpireResult:
    expired: int
    #: How long until the next sweep at most (the gateway's setting); 0: retention is
    #: off, the sweep ends.
    sweep_s: float
    #: When the next closed case is due (seconds since the epoch), if any.
    next_due_s: float | None = None
