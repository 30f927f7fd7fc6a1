"""The state of an ``IncidentWorkflow``: what it knows, the activity calls
through which it acts and reports (status, customer notifications), and the
messages that change it: the signal, updates (with their validators) and query
through which the gateway passes findings, ownership answers, the resolution
and the customer's answer.

``IncidentWorkflow`` (workflows.incident) runs on this state and waits on it;
Temporal finds these handlers on the base class, under the same names.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import (
        NOTIFY_CUSTOMER,
        RECORD_CASE_STATUS,
        RUN_STEPS,
        TELL_CUSTOMER,
        CaseErased,
        CaseState,
        CustomerAnswer,
        Finding,
        IncidentContext,
        MilestoneInput,
        NotifyInput,
        OwnershipAnswer,
        OwnershipDecision,
        RecordCaseStatusInput,
        ResolveRequest,
        Step,
        StepsInput,
    )
    from workflows.incident_rules import (
        check_answer,
        check_confirmation_relay,
        check_customer,
        check_resolve,
        merge_finding,
        notification_id,
    )

#: Patches (``workflow.patched``): runs recorded before them replay the old way.
#: Customer notifications name the milestone and references only; the gateway composes
#: (and seals) their text, so no customer text enters the history.
PATCH_NOTICES_BY_REFERENCE = "notices-by-reference"
#: An erased customer's case ends its workflow (the ``erase`` signal, or a run that
#: starts on an erased case): no further partner work, no notification.
PATCH_ENDS_WHEN_ERASED = "ends-when-erased"
#: The run acts in coarse steps: what it does between two waits (statuses, the customer's
#: notifications, requests, the decision, an offer, ...) goes to the store as one local
#: activity, ``RUN_STEPS``, run by the worker inside the workflow task (no activity task
#: through the server, one marker in the history). Each step is idempotent as the
#: activity it stands for, so a retried batch, or one run again on another worker after
#: a crash, records and sends nothing twice.
PATCH_COARSE_STEPS = "coarse-steps"
#: Every patch is asked once at the start, before the first local activity. A patch
#: first asked right after a local activity resolved could have its marker recorded in
#: the next workflow task (the local activity's marker closing the one before), and a
#: replay, which resolves the local activity within the earlier task, then took the old
#: branch: "patch marker ... no corresponding change command". Seen in about 1 run of 5
#: of the time-skipping suite under load. A new patch must be asked here too.
PATCH_PATCHES_FIRST = "patches-first"
#: A run started since this patch takes every path above and records this one marker
#: only: each patch recorded its own marker and its own upsert of the
#: ``TemporalChangeVersion`` search attribute (a visibility write on the server), so a
#: new run's history had 8 events for the four above and now has 2. Runs recorded
#: before it ask the others as they did. Asked first of all, in ``run``.
PATCH_ONE_MARKER = "one-marker"

ACTIVITY_TIMEOUT = timedelta(seconds=10)
ACTIVITY_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=30)
)


class IncidentState:
    """What the workflow knows, how it calls activities, and the messages from
    the gateway (no run: the workflow class, ``IncidentWorkflow``, adds it)."""

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
        self._erased: CaseErased | None = None
        #: Whether this run ends when erased (``PATCH_ENDS_WHEN_ERASED``).
        self._ends_when_erased = False
        #: Whether this run acts in coarse steps (``PATCH_COARSE_STEPS``), and the steps
        #: taken since the last wait.
        self._coarse = False
        self._steps: list[Step] = []
        #: Whether this run started since ``PATCH_ONE_MARKER`` (every path above).
        self._current = False

    # -- what the run waits for ---------------------------------------------------

    def _answered(self, offer_id: str) -> Callable[[], bool]:
        return lambda: offer_id in self._answers

    def _resolution_or_findings_since(self, version: int) -> Callable[[], bool]:
        return lambda: self._resolution is not None or self._findings_version != version

    # -- activities ------------------------------------------------------------

    async def _act(self, name: str, arg: object) -> None:
        """Run activity ``name``; in a coarse run, take it as a step of the next batch
        (`_flush`, before the run waits for anything)."""
        if self._coarse:
            self._steps.append(Step.of(name, arg))
            return
        await workflow.execute_activity(
            name, arg, start_to_close_timeout=ACTIVITY_TIMEOUT, retry_policy=ACTIVITY_RETRY
        )

    async def _flush(self) -> None:
        """The steps taken since the last wait, in order, as one local activity."""
        if not self._steps:
            return
        assert self._context is not None
        steps, self._steps = tuple(self._steps), []
        await workflow.execute_local_activity(
            RUN_STEPS,
            StepsInput(case_id=self._context.case_id, steps=steps),
            start_to_close_timeout=ACTIVITY_TIMEOUT,
            retry_policy=ACTIVITY_RETRY,
            # What the batch did, in the history and the UI (names only, no data).
            summary=", ".join(step.activity()[0] for step in steps),
        )

    async def _set_status(self, status: str) -> None:
        assert self._context is not None
        await self._act(
            RECORD_CASE_STATUS, RecordCaseStatusInput(case_id=self._context.case_id, status=status)
        )
        self._status = status

    async def _notify(self, milestone: str, message: str, resolution_id: str = "") -> None:
        """Tell the customer of ``milestone``. ``message`` is the text runs recorded before
        ``PATCH_NOTICES_BY_REFERENCE`` sent; newer runs send references only."""
        assert self._context is not None
        self._notifications += 1
        notification = notification_id(
            self._context.case_id, self._round, self._reopens, self._notifications
        )
        if self._current or workflow.patched(PATCH_NOTICES_BY_REFERENCE):
            await self._act(
                TELL_CUSTOMER,
                MilestoneInput(
                    case_id=self._context.case_id,
                    milestone=milestone,
                    notification_id=notification,
                    owner_id=self._owner if milestone == "owner-assigned" else "",
                    resolution_id=resolution_id,
                ),
            )
            return
        await self._act(
            NOTIFY_CUSTOMER,
            NotifyInput(
                case_id=self._context.case_id,
                milestone=milestone,
                message=message,
                notification_id=notification,
            ),
        )

    # -- messages from the gateway -----------------------------------------------

    @workflow.signal
    def erase(self, notice: CaseErased) -> None:
        """The customer was erased, or the case's retention ended: the run ends (runs
        recorded before ``PATCH_ENDS_WHEN_ERASED`` never receive this)."""
        if self._erased is None:
            self._erased = notice

    def _refuse_if_erased(self) -> None:
        if self._erased is not None:
            raise ValueError("the case's customer was erased")

    @workflow.signal
    def submit_finding(self, finding: Finding) -> None:
        """A partner's finding; a late one is recorded and may change the resolvers."""
        if self._erased is not None:
            return
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
        self._refuse_if_erased()
        check_answer(self._answers, self._offer, answer, "accept")

    @workflow.update
    def decline_ownership(self, answer: OwnershipAnswer) -> str:
        self._answers.setdefault(answer.offer_id, ("decline", answer.reason))
        return "declined"

    @decline_ownership.validator
    def _validate_decline(self, answer: OwnershipAnswer) -> None:
        self._refuse_if_erased()
        check_answer(self._answers, self._offer, answer, "decline")

    @workflow.update
    def resolve(self, request: ResolveRequest) -> str:
        if self._resolution is None:
            self._resolution = request
        return "RESOLVED"

    @resolve.validator
    def _validate_resolve(self, request: ResolveRequest) -> None:
        self._refuse_if_erased()
        check_resolve(self._resolution, self._owner, request)

    @workflow.update
    def confirm(self, answer: CustomerAnswer) -> str:
        if self._customer is None:
            self._customer = ("confirm", answer)
        return self._customer[0]

    @confirm.validator
    def _validate_confirm(self, answer: CustomerAnswer) -> None:
        self._refuse_if_erased()
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
        self._refuse_if_erased()
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
