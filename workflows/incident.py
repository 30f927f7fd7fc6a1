"""IncidentWorkflow: one per case, workflow id = case id.

Diagnosis fans out to every partner of the service chain, each with its
deadline; the pure policy (``workflows.ownership``) picks the relationship
owner and the resolvers; the owner must accept within its deadline, else the
next candidate, with the first-contacted partner as the fallback, so the case
is never without an owner. SLA timers escalate; the customer is told at every
milestone; the owner resolves and the customer confirms or reopens. Each
reopen continues as new, so histories stay bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import (
        ASSIGN_OWNER,
        ESCALATE,
        LOAD_INCIDENT,
        NOTIFY_CUSTOMER,
        OFFER_OWNERSHIP,
        RECORD_CASE_STATUS,
        RECORD_KPIS,
        RECORD_OWNERSHIP_DECISION,
        RECORD_UNRESPONSIVE,
        REQUEST_DIAGNOSIS,
        AssignOwnerInput,
        CaseState,
        CustomerAnswer,
        DiagnosisRequestInput,
        EscalateInput,
        Finding,
        IncidentContext,
        IncidentInput,
        IncidentOutcome,
        LoadIncidentInput,
        NotifyInput,
        OfferInput,
        OwnershipAnswer,
        OwnershipDecision,
        RecordCaseStatusInput,
        RecordDecisionInput,
        ResolveRequest,
        UnresponsiveInput,
    )
    from workflows.incident_rules import (
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
    from workflows.ownership import decide_ownership

_ACTIVITY_TIMEOUT = timedelta(seconds=10)
_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=30)
)


@workflow.defn
class IncidentWorkflow:
    def __init__(self) -> None:
        self._status = "RECEIVED"
        self._round = 0
        self._reopens = 0
        self._owner = ""
        self._owner_after_s: float | None = None
        self._breaches: list[str] = []
        self._findings: dict[str, Finding] = {}
        self._requested_at: dict[str, datetime] = {}
        self._findings_version = 0
        self._decision: OwnershipDecision | None = None
        self._offer: tuple[str, str] | None = None
        self._answers: dict[str, tuple[str, str]] = {}
        self._resolution: ResolveRequest | None = None
        self._resolved_at: datetime | None = None
        self._customer: tuple[str, CustomerAnswer] | None = None
        self._notifications = 0
        self._context: IncidentContext | None = None

    # -- the run -------------------------------------------------------------

    @workflow.run
    async def run(self, incident: IncidentInput) -> IncidentOutcome:
        context = await workflow.execute_activity(
            LOAD_INCIDENT,
            LoadIncidentInput(case_id=incident.case_id),
            start_to_close_timeout=_ACTIVITY_TIMEOUT,
            retry_policy=_RETRY,
            result_type=IncidentContext,
        )
        self._context = context
        if incident.carried is not None:
            carried = incident.carried
            self._round, self._reopens = carried.round, carried.reopens
            self._breaches = list(carried.sla_breaches)
            self._owner, self._owner_after_s = carried.owner_id, carried.owner_assigned_after_s
        else:
            await self._notify("received", "We have your report and are looking into it.")

        self._round += 1
        await self._set_status("DIAGNOSING")
        await self._notify("diagnosing", "We are checking every company involved in this service.")
        await self._diagnose(context)
        decision = await self._record_decision(context)
        if decision.escalate:
            await self._escalate(context, "diagnosis inconclusive")
        if not self._owner:
            await self._hand_off(context, decision)
        else:
            await self._set_status("OWNED")

        answer = await self._await_resolution(context)
        if answer == "reopen":
            return await self._reopen(incident)
        await self._set_status("CLOSED")
        await self._notify("closed", "Your case is closed. Thank you.")
        await self._record_kpis(context)
        return IncidentOutcome(case_id=context.case_id, status="CLOSED", owner_id=self._owner)

    # -- diagnosis -------------------------------------------------------------

    async def _diagnose(self, context: IncidentContext) -> None:
        """Ask every partner of the chain in parallel; wait for each answer until its
        deadline; record the silent ones as unresponsive and carry on. A finding
        that arrives before its request went out still counts."""
        now = workflow.now()
        deadlines: dict[str, datetime] = {}
        requests = []
        for component in context.components:
            self._requested_at[component.name] = now
            deadlines[component.name] = now + timedelta(seconds=component.diagnosis_deadline_s)
            requests.append(
                self._act(
                    REQUEST_DIAGNOSIS,
                    DiagnosisRequestInput(
                        case_id=context.case_id,
                        request_id=self._request_id(component.name),
                        component=component.name,
                        partner_id=component.partner_id,
                        deadline_s=deadlines[component.name].timestamp(),
                    ),
                )
            )
        await asyncio.gather(*requests)
        for name, early in list(self._findings.items()):
            if early.response_s is None:  # answered before the request went out
                self._findings[name] = replace(early, response_s=0.0)
        pending = dict(deadlines)
        while pending:
            await self._wait(
                context,
                lambda: all(name in self._findings for name in pending),
                min(pending.values()),
            )
            now = workflow.now()
            for name in [n for n in pending if n in self._findings]:
                del pending[name]
            for name in [n for n, due in pending.items() if due <= now]:
                del pending[name]
                component = next(c for c in context.components if c.name == name)
                self._findings[name] = unresponsive(component)
                await self._act(
                    RECORD_UNRESPONSIVE,
                    UnresponsiveInput(
                        case_id=context.case_id,
                        component=name,
                        partner_id=component.partner_id,
                        request_id=self._request_id(name),
                    ),
                )
                await self._notify(
                    "waiting-on-partner",
                    "One company has not answered yet; we are going on without it.",
                )

    def _request_id(self, component: str) -> str:
        return request_id(workflow.info().workflow_id, self._round, component)

    async def _record_decision(self, context: IncidentContext) -> OwnershipDecision:
        self._findings_version += 1
        decision = decide_ownership(
            context,
            self._findings.values(),
            decision_id(context.case_id, self._round, self._findings_version),
        )
        self._decision = decision
        await self._act(
            RECORD_OWNERSHIP_DECISION,
            RecordDecisionInput(
                case_id=context.case_id,
                decision=decision,
                findings=ordered_findings(context, self._findings),
            ),
        )
        return decision

    # -- ownership hand-off -----------------------------------------------------

    async def _hand_off(self, context: IncidentContext, decision: OwnershipDecision) -> None:
        await self._set_status("AWAITING_OWNER")
        fallback = context.first_contact_partner_id
        for attempt, candidate in enumerate(decision.owner_candidates):
            offer = offer_id(context.case_id, self._round, attempt)
            self._offer = (offer, candidate)
            due = workflow.now() + timedelta(seconds=context.policy.acceptance_deadline_s)
            await self._act(
                OFFER_OWNERSHIP,
                OfferInput(
                    case_id=context.case_id,
                    offer_id=offer,
                    partner_id=candidate,
                    decision=decision,
                    deadline_s=due.timestamp(),
                ),
            )
            await self._wait(context, self._answered(offer), due)
            answer = self._answers.get(offer, ("timeout", ""))
            if answer[0] == "accept":
                await self._assign(context, candidate, decision, accepted=True, reason="accepted")
                return
        self._offer = None
        await self._assign(
            context,
            fallback,
            decision,
            accepted=False,
            reason="no candidate accepted: the partner first contacted keeps it (no wrong door)",
        )

    def _answered(self, offer_id: str) -> Callable[[], bool]:
        return lambda: offer_id in self._answers

    async def _assign(
        self,
        context: IncidentContext,
        owner: str,
        decision: OwnershipDecision,
        *,
        accepted: bool,
        reason: str,
    ) -> None:
        self._owner = owner
        self._offer = None
        self._owner_after_s = workflow.now().timestamp() - context.opened_at_s
        await self._act(
            ASSIGN_OWNER,
            AssignOwnerInput(
                case_id=context.case_id,
                owner_id=owner,
                resolver_ids=decision.resolver_ids,
                accepted=accepted,
                reason=reason,
            ),
        )
        self._status = "OWNED"
        await self._notify(
            "owner-assigned", f"{owner} is now your single point of contact for this problem."
        )

    # -- resolution ------------------------------------------------------------

    async def _await_resolution(self, context: IncidentContext) -> str:
        """Wait for the owner to resolve (late findings may change the resolvers
        meanwhile), then for the customer to confirm or reopen within the window."""
        seen = self._findings_version
        while self._resolution is None:
            await self._wait(context, self._resolution_or_findings_since(seen), None)
            if self._resolution is None and self._findings_version != seen:
                previous = self._decision
                decision = await self._record_decision(context)
                seen = self._findings_version
                if previous is None or decision.resolver_ids != previous.resolver_ids:
                    await self._act(
                        ASSIGN_OWNER,
                        AssignOwnerInput(
                            case_id=context.case_id,
                            owner_id=self._owner,
                            resolver_ids=decision.resolver_ids,
                            accepted=True,
                            reason="a late finding changed the resolvers",
                        ),
                    )
        self._resolved_at = workflow.now()
        await self._set_status("RESOLVED")
        await self._notify(
            "resolved",
            f"Your problem is solved: {self._resolution.resolution} "
            "Tell us if it works again, or if it does not.",
        )
        window_end = self._resolved_at + timedelta(
            seconds=context.service_level.confirmation_window_s
        )
        await self._wait(context, lambda: self._customer is not None, window_end)
        if self._customer is not None and self._customer[0] == "reopen":
            return "reopen"
        return "confirm"

    def _resolution_or_findings_since(self, version: int) -> Callable[[], bool]:
        return lambda: self._resolution is not None or self._findings_version != version

    async def _reopen(self, incident: IncidentInput) -> IncidentOutcome:
        self._reopens += 1
        await self._set_status("REOPENED")
        await self._notify("reopened", "We have reopened your case and are on it again.")
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(
            carried_over(
                incident,
                round=self._round,
                reopens=self._reopens,
                breaches=self._breaches,
                owner=self._owner,
                owner_after_s=self._owner_after_s,
            )
        )

    async def _record_kpis(self, context: IncidentContext) -> None:
        await self._act(
            RECORD_KPIS,
            kpi_record(
                context,
                self._findings.values(),
                owner=self._owner,
                owner_after_s=self._owner_after_s,
                resolved_at=self._resolved_at,
                breaches=self._breaches,
                reopens=self._reopens,
            ),
        )

    # -- waiting with SLA timers -------------------------------------------------

    async def _wait(
        self, context: IncidentContext, done: Callable[[], bool], until: datetime | None
    ) -> None:
        """Wait for ``done`` or ``until``, escalating any SLA that runs out meanwhile."""
        while not done():
            now = workflow.now()
            if until is not None and now >= until:
                return
            sla = self._next_sla(context)
            stops = [t for t in (until, sla[1] if sla else None) if t is not None]
            timeout = (min(stops) - now) if stops else None
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(done, timeout=timeout)
            if sla is not None and workflow.now() >= sla[1] and not done():
                self._breaches.append(sla[0])
                await self._escalate(context, f"SLA {sla[0]} breached")

    def _next_sla(self, context: IncidentContext) -> tuple[str, datetime] | None:
        return next_sla(
            context,
            workflow.now().tzinfo,
            owner=self._owner,
            resolved=self._resolution is not None,
            breaches=self._breaches,
        )

    async def _escalate(self, context: IncidentContext, reason: str) -> None:
        expert = self._owner or context.first_contact_partner_id
        await self._act(
            ESCALATE,
            EscalateInput(
                case_id=context.case_id,
                escalation_id=escalation_id(
                    context.case_id, self._round, len(self._breaches), reason
                ),
                reason=reason,
                expert_partner_id=expert,
            ),
        )
        await self._notify(
            "escalated", "Your case has been passed to a specialist to speed things up."
        )

    # -- activities ------------------------------------------------------------

    async def _act(self, name: str, arg: object) -> None:
        await workflow.execute_activity(
            name, arg, start_to_close_timeout=_ACTIVITY_TIMEOUT, retry_policy=_RETRY
        )

    async def _set_status(self, status: str) -> None:
        assert self._context is not None
        await self._act(
            RECORD_CASE_STATUS, RecordCaseStatusInput(case_id=self._context.case_id, status=status)
        )
        self._status = status

    async def _notify(self, milestone: str, message: str) -> None:
        assert self._context is not None
        self._notifications += 1
        await self._act(
            NOTIFY_CUSTOMER,
            NotifyInput(
                case_id=self._context.case_id,
                milestone=milestone,
                message=message,
                notification_id=notification_id(
                    self._context.case_id, self._round, self._reopens, self._notifications
                ),
            ),
        )

    # -- messages from the gateway -----------------------------------------------

    @workflow.signal
    def submit_finding(self, finding: Finding) -> None:
        """A partner's finding; a late one is recorded and may change the resolvers."""
        requested = self._requested_at.get(finding.component)
        response_s = (workflow.now() - requested).total_seconds() if requested is not None else None
        current = self._findings.get(finding.component)
        updated = merge_finding(current, finding, response_s)
        if current == updated:
            return  # a duplicate delivery changes nothing
        self._findings[finding.component] = updated
        if self._decision is not None:
            self._findings_version += 1

    @workflow.update
    def accept_ownership(self, answer: OwnershipAnswer) -> str:
        self._answers.setdefault(answer.offer_id, ("accept", answer.reason))
        return self._owner or answer.partner_id

    @accept_ownership.validator
    def _validate_accept(self, answer: OwnershipAnswer) -> None:
        check_answer(self._answers, self._offer, answer, "accept")

    @workflow.update
    def decline_ownership(self, answer: OwnershipAnswer) -> str:
        self._answers.setdefault(answer.offer_id, ("decline", answer.reason))
        return "declined"

    @decline_ownership.validator
    def _validate_decline(self, answer: OwnershipAnswer) -> None:
        check_answer(self._answers, self._offer, answer, "decline")

    @workflow.update
    def resolve(self, request: ResolveRequest) -> str:
        if self._resolution is None:
            self._resolution = request
        return "RESOLVED"

    @resolve.validator
    def _validate_resolve(self, request: ResolveRequest) -> None:
        check_resolve(self._resolution, self._owner, request)

    @workflow.update
    def confirm(self, answer: CustomerAnswer) -> str:
        if self._customer is None:
            self._customer = ("confirm", answer)
        return self._customer[0]

    @confirm.validator
    def _validate_confirm(self, answer: CustomerAnswer) -> None:
        check_customer(self._customer, self._resolved_at, "confirm")
        assert self._context is not None
        check_confirmation_relay(answer, self._owner, self._context.first_contact_partner_id)

    @workflow.update
    def reopen(self, answer: CustomerAnswer) -> str:
        if self._customer is None:
            self._customer = ("reopen", answer)
        return self._customer[0]

    @reopen.validator
    def _validate_reopen(self, answer: CustomerAnswer) -> None:
        """Any participating partner may relay a reopening (the customer may come
        back through another door); the gateway checks participation."""
        check_customer(self._customer, self._resolved_at, "reopen")

    @workflow.query
    def state(self) -> CaseState:
        return CaseState(
            status=self._status,
            round=self._round,
            owner_id=self._owner,
            current_offer_id=self._offer[0] if self._offer else "",
            current_offer_partner_id=self._offer[1] if self._offer else "",
            findings=tuple(self._findings.values()),
            decision=self._decision,
        )
