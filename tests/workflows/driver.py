"""The gateway's real activities on a real store, driven under the time-skipping test
server: the ``skipping_env`` and ``incident`` fixtures (registered by conftest.py) and
``Incident``, which opens a case and answers for its partners through the domain."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from coopgate.v1 import admin_pb2, cases_pb2, common_pb2, work_pb2
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowExecutionStatus, WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from gateway.core.caller import Caller, Role
from gateway.orchestration.temporal import create_worker
from gateway.settings import Settings
from gateway.stack import Runtime, open_runtime
from gateway.store.schema import work_items
from tests.helpers import queued_items
from workflows import IncidentWorkflow
from workflows.contracts import CaseState

BIN = Path(sys.executable).parent
ADMIN = Caller("coopgate", Role.ADMIN, "test")


@pytest.fixture
async def skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """A test server per test: a task left in flight by one test's worker would
    otherwise hold the shared virtual clock for the next."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server")
    )
    try:
        yield env
    finally:
        await env.shutdown()


@dataclass
class Incident:
    runtime: Runtime
    env: WorkflowEnvironment
    case_id: str = ""
    service_id: str = ""
    customer: str = ""
    #: Every case the test opened (`case_id` is the first): all are ended at teardown.
    opened: list[str] = field(default_factory=list)

    def caller(self, partner: str) -> Caller:
        return Caller(partner, Role.ADVISOR, f"{partner}-advisor")

    async def open(
        self,
        partner: str,
        service: str,
        customer: str | None = None,
        summary: str = "it does not work",
    ) -> str:
        self.customer = customer or f"cust-{uuid.uuid4().hex[:8]}"
        response = await self.runtime.domain.cases.intake.open_case(
            self.caller(partner),
            cases_pb2.OpenCaseRequest(
                idempotency_key=uuid.uuid4().hex,
                service_id=service,
                customer_local_id=self.customer,
                channel=common_pb2.CHANNEL_PHONE,
                summary=summary,
            ),
        )
        if not self.case_id:
            self.case_id, self.service_id = response.case_id, service
        self.opened.append(response.case_id)
        return response.case_id

    async def state(self) -> CaseState:
        handle = self.env.client.get_workflow_handle(self.case_id)
        return await handle.query(IncidentWorkflow.state)

    async def until(self, check: Callable[[CaseState], bool], timeout: float = 20) -> CaseState:
        state = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    state = await self.state()
                    if check(state):
                        return state
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"workflow never reached the expected state: {state}") from None

    async def finding(
        self,
        partner: str,
        component: str,
        status: cases_pb2.FindingStatus.ValueType,
        confidence: float = 0.9,
        code: str = "",
    ) -> None:
        await self.runtime.domain.cases.intake.submit_finding(
            self.caller(partner),
            cases_pb2.SubmitFindingRequest(
                idempotency_key=uuid.uuid4().hex,
                case_id=self.case_id,
                finding=cases_pb2.Finding(
                    component=component, status=status, confidence=confidence, fault_code=code
                ),
            ),
        )

    async def answer_offer(self, partner: str, accept: bool) -> None:
        state = await self.until(lambda s: s.current_offer_partner_id == partner)
        request_type = (
            cases_pb2.AcceptOwnershipRequest if accept else cases_pb2.DeclineOwnershipRequest
        )
        await self.runtime.domain.cases.progress.answer_offer(
            self.caller(partner),
            request_type(
                idempotency_key=uuid.uuid4().hex,
                case_id=self.case_id,
                offer_id=state.current_offer_id,
            ),
        )

    async def resolve(self, partner: str, resolution: str = "SIM applet reinstalled.") -> None:
        await self.until(lambda s: s.status == "OWNED")
        await self.runtime.domain.cases.progress.resolve(
            self.caller(partner),
            cases_pb2.ResolveCaseRequest(
                idempotency_key=uuid.uuid4().hex,
                case_id=self.case_id,
                resolution=resolution,
            ),
        )

    async def confirm(self, partner: str) -> None:
        await self.until(lambda s: s.status == "RESOLVED")
        await self.runtime.domain.cases.progress.customer_answer(
            self.caller(partner),
            cases_pb2.ConfirmResolutionRequest(
                idempotency_key=uuid.uuid4().hex, case_id=self.case_id
            ),
        )

    async def view(self, partner: str) -> cases_pb2.CaseView:
        response = await self.runtime.domain.cases.views.get_view(
            self.caller(partner),
            cases_pb2.GetCaseViewRequest(case_id=self.case_id, purpose="incident-resolution"),
        )
        return response.view

    async def view_until(
        self, partner: str, check: Callable[[cases_pb2.CaseView], bool], timeout: float = 20
    ) -> cases_pb2.CaseView:
        """The projection is written by activities, shortly after the workflow decides."""
        async with asyncio.timeout(timeout):
            while not check(view := await self.view(partner)):
                await asyncio.sleep(0.05)
        return view

    async def work(self, partner: str) -> list[work_pb2.WorkItem]:
        items = await queued_items(self.runtime, work_items.c.partner_id == partner)
        return [
            i
            for i in items
            if self.case_id
            in (
                i.diagnosis_request.case_id
                or i.ownership_offer.case_id
                or i.customer_notification.case_id
                or i.case_notice.case_id
            )
        ]


@pytest.fixture
async def incident(skipping_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Incident]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'store.db'}",
        task_queue=f"tq-{uuid.uuid4()}",
    )
    async with open_runtime(settings, client=skipping_env.client, seed=True) as runtime:
        await _fast_services(runtime)
        worker = create_worker(skipping_env.client, settings.task_queue, runtime.activities)
        async with worker:
            incident = Incident(runtime, skipping_env)
            try:
                yield incident
            finally:
                # Every run the test left open ends before the worker stops: a worker shut
                # down under a run's local activities made Temporal's core panic
                # ("receive half not dropped") and the shutdown hang.
                for case_id in incident.opened:
                    handle = skipping_env.client.get_workflow_handle(case_id)
                    if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                        await handle.terminate("test finished")


async def _fast_services(runtime: Runtime) -> None:
    """A copy of nfc-payment with a 2-minute owner SLA, for escalation tests."""
    admin = runtime.domain.admin
    service = await admin.get_service("nfc-payment")
    service.service_id = "nfc-fast-sla"
    service.service_level.time_to_owner.FromTimedelta(timedelta(minutes=2))
    await admin.define_service(
        ADMIN, admin_pb2.DefineServiceRequest(idempotency_key="fast", service=service)
    )


def local_activity(event: HistoryEvent) -> tuple[str, str] | None:
    """A local activity's type and summary (a run_steps batch's step names), from its
    marker: the marker keeps no input."""
    marker = event.marker_recorded_event_attributes
    if not event.HasField("marker_recorded_event_attributes") or (
        marker.marker_name != "core_local_activity"
    ):
        return None
    data = json.loads(marker.details["data"].payloads[0].data)
    summary = event.user_metadata.summary.data
    return data["activity_type"], json.loads(summary) if summary else ""


def asked(history: WorkflowHistory) -> Counter[str]:
    """Every activity the run asked for, local ones and run_steps' steps included."""
    counted: Counter[str] = Counter()
    for event in history.events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            counted[event.activity_task_scheduled_event_attributes.activity_type.name] += 1
        elif (local := local_activity(event)) is not None:
            counted[local[0]] += 1
            if local[0] == "run_steps":
                counted.update(local[1].split(", "))
    return counted
