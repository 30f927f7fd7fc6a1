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

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import (
        ASSIGN_OWNER,
        ESCALATE,
        LOAD_INCIDENT,
        OFFER_OWNERSHIP,
        RECORD_CASE_ERASED,
        RECORD_KPIS,
        RECORD_OWNERSHIP_DECISION,
        RECORD_UNRESPONSIVE,
        REQUEST_DIAGNOSIS,
        AssignOwnerInput,
        CaseErased,
        CaseErasedInput,
        DiagnosisRequestInput,
        EscalateInput,
        IncidentContext,
        IncidentInput,
        IncidentOutcome,
        LoadIncidentInput,
        OfferInput,
        OwnershipDecision,
        RecordDecisionInput,
        UnresponsiveInput,
    )
    from workflows.incident_rules import (
        carried_over,
        decision_id,
        escalation_id,
        kpi_record,
        next_sla,
        offer_id,
        ordered_findings,
        request_id,
        unresponsive,
    )
    from workflows.ownership import decide_ownership

# Not passed through: it is workflow code, checked by the sandbox like this module.
from workflows.incident_state import (
    ACTIVITY_RETRY,
    ACTIVITY_TIMEOUT,
    PATCH_COARSE_STEPS,
    PATCH_ENDS_WHEN_ERASED,
    PATCH_NOTICES_BY_REFERENCE,
    PATCH_ONE_MARKER,
    PATCH_PATCHES_FIRST,
    IncidentState,
)


@workflow.defn
class IncidentWorkflow(IncidentState):
    # -- the run -------------------------------------------------------------

    @workflow.run
    async def run(self, incident: IncidentInput) -> IncidentOutcome:
        self._current = workflow.patched(PATCH_ONE_MARKER)
        if not (self._current or workflow.patched(PATCH_ENDS_WHEN_ERASED)):
            return await self._run(incident)
        self._ends_when_erased = True
        body = asyncio.create_task(self._run(incident))
        await workflow.wait_condition(lambda: body.done() or self._erased is not None)
        if body.done():
            return await body  # closed, or continued as new (raised)
        # Erased: whatever the case waited for or asked is cancelled; nobody is told
        # anything more about it (the gateway's erasure told the recipients).
        body.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await body
        assert self._erased is not None
        self._steps.clear()  # nothing taken before the erasure goes out after it
        await self._act(
            RECORD_CASE_ERASED,
            CaseErasedInput(case_id=incident.case_id, reason=self._erased.reason),
        )
        await self._flush()
        return IncidentOutcome(case_id=incident.case_id, status="ERASED", owner_id=self._owner)

    async def _run(self, incident: IncidentInput) -> IncidentOutcome:
        self._coarse = self._current or workflow.patched(PATCH_COARSE_STEPS)
        if not self._current and workflow.patched(PATCH_PATCHES_FIRST):
            # Asked now, remembered for `_notify` (each patch is asked once per run).
            workflow.patched(PATCH_NOTICES_BY_REFERENCE)
        load = workflow.execute_local_activity if self._coarse else workflow.execute_activity
        context = await load(
            LOAD_INCIDENT,
            LoadIncidentInput(case_id=incident.case_id),
            start_to_close_timeout=ACTIVITY_TIMEOUT,
            retry_policy=ACTIVITY_RETRY,
            result_type=IncidentContext,
        )
        self._context = context
        if context.erased and self._ends_when_erased:
            self.erase(CaseErased(reason="customer-request"))
            await workflow.wait_condition(lambda: False)  # ``run`` ends it
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
        await self._flush()
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
        resolution = self._resolution
        await self._notify(
            "resolved",
            # The text only for a run recorded before PATCH_NOTICES_BY_REFERENCE, whose
            # gateway sent the resolution's text; a patched run sends the reference and
            # the gateway composes the words (so does notify_customer for an old run
            # sent a reference: it finds the case's latest resolution).
            f"Your problem is solved: {resolution.resolution} "
            "Tell us if it works again, or if it does not."
            if resolution.resolution
            else "",
            resolution_id=resolution.resolution_id,
        )
        window_end = self._resolved_at + timedelta(
            seconds=context.service_level.confirmation_window_s
        )
        await self._wait(context, lambda: self._customer is not None, window_end)
        if self._customer is not None and self._customer[0] == "reopen":
            return "reopen"
        return "confirm"

    async def _reopen(self, incident: IncidentInput) -> IncidentOutcome:
        self._reopens += 1
        await self._set_status("REOPENED")
        await self._notify("reopened", "We have reopened your case and are on it again.")
        await self._flush()
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
        """Wait for ``done`` or ``until``, escalating any SLA that runs out meanwhile.
        What the run did before it waits is done first (`_flush`)."""
        await self._flush()
        while not done():
            await self._flush()  # an escalation of the last turn
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
