"""Activity contracts: names and the one dataclass each takes or returns.

The gateway implements these activities; workflows call them by name, so
neither package imports the other's code.
"""

from __future__ import annotations

from dataclasses import dataclass

RECORD_CASE_STATUS = "record_case_status"


@dataclass(slots=True, frozen=True)
class IncidentInput:
    case_id: str
    service_id: str
    first_contact_partner_id: str


@dataclass(slots=True, frozen=True)
class IncidentOutcome:
    case_id: str
    status: str


@dataclass(slots=True, frozen=True)
class RecordCaseStatusInput:
    """Move the case projection to ``status`` (a ``coopgate.v1.CaseStatus`` name
    without its prefix, e.g. ``"DIAGNOSING"``) and append it to the timeline."""

    case_id: str
    status: str


@dataclass(slots=True, frozen=True)
class CloseCaseSignal:
    reason: str
