"""Activity implementations of the contracts declared in ``workflows.contracts``.

The workflow never touches the store: these activities update the case
projection and hand work to partners. Each is idempotent, keyed by ids the
workflow derives deterministically, so a retried activity or a restarted
worker never records or sends anything twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.audit.log import AuditLog
from gateway.cases.service import Cases
from gateway.consent.rules import ConsentRules
from gateway.crypto.pseudonyms import Pseudonyms
from gateway.orchestration.diagnosis import DiagnosisActivities
from gateway.orchestration.followup import FollowUpActivities
from gateway.orchestration.lifecycle import LifecycleActivities
from gateway.orchestration.ownership import OwnershipActivities
from gateway.orchestration.retention import RetentionActivities
from gateway.orchestration.steps import StepActivities
from gateway.store import Store
from workflows.contracts import (
    ASSIGN_OWNER,
    ESCALATE,
    NOTIFY_CUSTOMER,
    OFFER_OWNERSHIP,
    RECORD_CASE_ERASED,
    RECORD_CASE_STATUS,
    RECORD_KPIS,
    RECORD_OWNERSHIP_DECISION,
    RECORD_UNRESPONSIVE,
    REQUEST_DIAGNOSIS,
    TELL_CUSTOMER,
)


class IncidentActivities:
    """Every activity the worker registers, from the classes that implement them."""

    def __init__(
        self,
        store: Store,
        cases: Cases,
        rules: ConsentRules,
        audit: AuditLog,
        pseudonyms: Pseudonyms,
        retention: RetentionActivities,
    ) -> None:
        self.lifecycle = LifecycleActivities(store, cases, audit)
        self.diagnosis = DiagnosisActivities(store, cases, rules, pseudonyms)
        self.ownership = OwnershipActivities(store, cases, rules, audit)
        self.follow_up = FollowUpActivities(store, cases)
        # The activities a step may stand for, by name (what `run_steps` runs).
        self.steps = StepActivities(
            store,
            {
                RECORD_CASE_STATUS: self.lifecycle.record_case_status,
                RECORD_CASE_ERASED: self.lifecycle.record_case_erased,
                REQUEST_DIAGNOSIS: self.diagnosis.request_diagnosis,
                RECORD_UNRESPONSIVE: self.diagnosis.record_unresponsive,
                RECORD_OWNERSHIP_DECISION: self.ownership.record_ownership_decision,
                OFFER_OWNERSHIP: self.ownership.offer_ownership,
                ASSIGN_OWNER: self.ownership.assign_owner,
                NOTIFY_CUSTOMER: self.follow_up.notify_customer,
                TELL_CUSTOMER: self.follow_up.tell_customer,
                ESCALATE: self.follow_up.escalate,
                RECORD_KPIS: self.follow_up.record_kpis,
            },
        )
        self.retention = retention

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.lifecycle.load_incident,
            self.lifecycle.record_case_status,
            self.lifecycle.record_case_erased,
            self.diagnosis.request_diagnosis,
            self.diagnosis.record_unresponsive,
            self.ownership.record_ownership_decision,
            self.ownership.offer_ownership,
            self.ownership.assign_owner,
            self.follow_up.notify_customer,
            self.follow_up.tell_customer,
            self.follow_up.escalate,
            self.follow_up.record_kpis,
            self.steps.run_steps,
            self.retention.expire_closed_cases,
        ]
