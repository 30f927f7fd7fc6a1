"""Recorded ``IncidentWorkflow`` histories replay against the current workflow code.

The histories in ``histories/`` were recorded by ``python -m
tests.workflows.record_histories`` (see there); a change of the workflow code
that would issue other commands, or the same in another order, for one of them
fails here with a nondeterminism error. Temporal does not compare what the
commands carry, so the replay also checks that every activity is scheduled with
the same input (ids and all, byte for byte), timeout and retry policy, and that
the run ends with the same result or continue-as-new input. A local activity's marker
keeps its type and summary but not its input: for those (``load_incident`` and the
``run_steps`` batches of coarse runs, whose summary names each step) the type and the
step names are compared. Regenerate the
histories only for a change that is meant to alter what the workflow does (and
think of the running workflows).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import pytest
from temporalio import converter
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory
from temporalio.worker import (
    ContinueAsNewInput,
    ExecuteWorkflowInput,
    Interceptor,
    Replayer,
    StartActivityInput,
    StartLocalActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)
from temporalio.workflow import ActivityHandle

from gateway.orchestration.converter import DATA_CONVERTER
from tests.workflows.driver import asked, local_activity
from workflows import IncidentWorkflow
from workflows.incident_state import (
    PATCH_COARSE_STEPS,
    PATCH_ENDS_WHEN_ERASED,
    PATCH_NOTICES_BY_REFERENCE,
    PATCH_ONE_MARKER,
    PATCH_PATCHES_FIRST,
)

HISTORIES = Path(__file__).parent / "histories"

#: Each history and the activities its run scheduled: the paths it covers.
COVERS: dict[str, dict[str, int]] = {
    # Every partner answers, the first contact accepts (and again), resolves, confirmed.
    "owner_accepts": {
        "load_incident": 1,
        "notify_customer": 5,
        "record_case_status": 4,
        "request_diagnosis": 4,
        "record_ownership_decision": 1,
        "offer_ownership": 1,
        "assign_owner": 1,
        "record_kpis": 1,
    },
    # Declined, then the next candidate's offer times out: the first contact keeps it;
    # the confirmation window runs out.
    "decline_timeout_fallback": {
        "load_incident": 1,
        "notify_customer": 5,
        "record_case_status": 4,
        "request_diagnosis": 4,
        "record_ownership_decision": 1,
        "offer_ownership": 2,
        "assign_owner": 1,
        "record_kpis": 1,
    },
    # A finding before its request, an unresponsive partner, nothing conclusive
    # (escalation), a late finding that keeps the resolvers, one that changes them.
    "unresponsive_late_findings": {
        "load_incident": 1,
        "notify_customer": 7,
        "record_case_status": 4,
        "request_diagnosis": 4,
        "record_unresponsive": 1,
        "record_ownership_decision": 3,
        "escalate": 1,
        "offer_ownership": 1,
        "assign_owner": 2,
        "record_kpis": 1,
    },
    # The time-to-owner and the time-to-resolution SLAs run out: two escalations.
    "sla_escalations": {
        "load_incident": 1,
        "notify_customer": 7,
        "record_case_status": 4,
        "request_diagnosis": 4,
        "record_ownership_decision": 1,
        "offer_ownership": 1,
        "escalate": 2,
        "assign_owner": 1,
        "record_kpis": 1,
    },
    # Resolved, reopened: continues as new ...
    "reopen_continue_as_new": {
        "load_incident": 1,
        "notify_customer": 5,
        "record_case_status": 4,
        "request_diagnosis": 4,
        "record_ownership_decision": 1,
        "offer_ownership": 1,
        "assign_owner": 1,
    },
    # ... and the next run keeps the owner, is resolved again and confirmed.
    "reopen_continue_as_new.run2": {
        "load_incident": 1,
        "record_case_status": 4,
        "notify_customer": 3,
        "request_diagnosis": 4,
        "record_ownership_decision": 1,
        "record_kpis": 1,
    },
    # owner_accepts since the patches notices-by-reference and ends-when-erased: the
    # customer's notifications name the milestone and references only (tell_customer).
    "notices_by_reference": {
        "load_incident": 1,
        "tell_customer": 5,
        "record_case_status": 4,
        "request_diagnosis": 4,
        "record_ownership_decision": 1,
        "offer_ownership": 1,
        "assign_owner": 1,
        "record_kpis": 1,
    },
    # The customer is erased while the case is owned: the run ends, nobody is told more.
    "erased_while_owned": {
        "load_incident": 1,
        "tell_customer": 3,
        "record_case_status": 2,
        "request_diagnosis": 4,
        "record_ownership_decision": 1,
        "offer_ownership": 1,
        "assign_owner": 1,
        "record_case_erased": 1,
    },
    # Since the patch coarse-steps, the same paths with what the run does between two
    # waits in one local activity (run_steps, its steps counted by name as well).
    "coarse_owner_accepts": {
        "load_incident": 1,
        "run_steps": 5,
        "tell_customer": 5,
        "record_case_status": 4,
        "request_diagnosis": 4,
        "record_ownership_decision": 1,
        "offer_ownership": 1,
        "assign_owner": 1,
        "record_kpis": 1,
    },
    "coarse_unresponsive_late_findings": {
        "load_incident": 1,
        "run_steps": 7,
        "tell_customer": 7,
        "record_case_status": 4,
        "request_diagnosis": 4,
        "record_unresponsive": 1,
        "record_ownership_decision": 3,
        "escalate": 1,
        "offer_ownership": 1,
        "assign_owner": 2,
        "record_kpis": 1,
    },
    "coarse_sla_escalations": {
        "load_incident": 1,
        "run_steps": 7,
        "tell_customer": 7,
        "record_case_status": 4,
        "request_diagnosis": 4,
        "record_ownership_decision": 1,
        "offer_ownership": 1,
        "escalate": 2,
        "assign_owner": 1,
        "record_kpis": 1,
    },
    "coarse_reopen_continue_as_new": {
        "load_incident": 1,
        "run_steps": 5,
        "tell_customer": 5,
        "record_case_status": 4,
        "request_diagnosis": 4,
        "record_ownership_decision": 1,
        "offer_ownership": 1,
        "assign_owner": 1,
    },
    "coarse_reopen_continue_as_new.run2": {
        "load_incident": 1,
        "run_steps": 4,
        "record_case_status": 4,
        "tell_customer": 3,
        "request_diagnosis": 4,
        "record_ownership_decision": 1,
        "record_kpis": 1,
    },
    "coarse_erased_while_owned": {
        "load_incident": 1,
        "run_steps": 4,
        "tell_customer": 3,
        "record_case_status": 2,
        "request_diagnosis": 4,
        "record_ownership_decision": 1,
        "offer_ownership": 1,
        "assign_owner": 1,
        "record_case_erased": 1,
    },
}

# Since patches-first: the same path, every patch asked before the first local activity.
COVERS["patches_first_owner_accepts"] = COVERS["coarse_owner_accepts"]
# Since one-marker: the same paths, one patch marker in all.
for _path in ("owner_accepts", "erased_while_owned", "reopen_continue_as_new"):
    COVERS[f"one_marker_{_path}"] = COVERS[f"coarse_{_path}"]
COVERS["one_marker_reopen_continue_as_new.run2"] = COVERS["coarse_reopen_continue_as_new.run2"]

#: How each history's run ended (the others: CLOSED).
ENDED = {
    "erased_while_owned": "ERASED",
    "coarse_erased_while_owned": "ERASED",
    "one_marker_erased_while_owned": "ERASED",
}


def _load(name: str) -> WorkflowHistory:
    scenario = name.split(".")[0]
    return WorkflowHistory.from_json(f"case-{scenario}", (HISTORIES / f"{name}.json").read_text())


def test_every_recorded_history_is_replayed() -> None:
    assert sorted(p.name.removesuffix(".json") for p in HISTORIES.glob("*.json")) == sorted(COVERS)


@pytest.mark.parametrize("name", sorted(COVERS))
def test_history_covers_its_path(name: str) -> None:
    path = HISTORIES / f"{name}.json"
    assert path.stat().st_size < 100_000
    history = _load(name)
    assert history.events[0].workflow_execution_started_event_attributes.workflow_type.name == (
        "IncidentWorkflow"
    )
    assert asked(history) == COVERS[name]
    last = history.events[-1]
    if name.endswith("reopen_continue_as_new"):
        assert last.HasField("workflow_execution_continued_as_new_event_attributes")
    else:
        assert last.HasField("workflow_execution_completed_event_attributes")
        result = last.workflow_execution_completed_event_attributes.result.payloads[0].data
        assert json.loads(result)["status"] == ENDED.get(name, "CLOSED")


class _Commands(Interceptor):
    """Notes what the replayed workflow asks for, as it would be sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, ...]] = []

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        sent = self.sent

        class Outbound(WorkflowOutboundInterceptor):
            def start_activity(self, input: StartActivityInput) -> ActivityHandle[object]:
                retry = input.retry_policy
                assert retry is not None
                sent.append(
                    (
                        "activity",
                        input.activity,
                        *_encode(input.args),
                        str(input.start_to_close_timeout),
                        str(retry.initial_interval),
                        str(retry.maximum_interval),
                    )
                )
                return super().start_activity(input)

            def start_local_activity(
                self, input: StartLocalActivityInput
            ) -> ActivityHandle[object]:
                # A local activity's marker keeps its type and summary, not its input.
                sent.append(("local", input.activity, input.summary or ""))
                return super().start_local_activity(input)

            def continue_as_new(self, input: ContinueAsNewInput) -> NoReturn:
                sent.append(("continue-as-new", *_encode(input.args)))
                super().continue_as_new(input)

        class Inbound(WorkflowInboundInterceptor):
            def init(self, outbound: WorkflowOutboundInterceptor) -> None:
                super().init(Outbound(outbound))

            async def execute_workflow(self, input: ExecuteWorkflowInput) -> object:
                result = await super().execute_workflow(input)
                sent.append(("result", *_encode([result])))
                return result

        return Inbound


def _encode(values: object) -> tuple[str, ...]:
    assert isinstance(values, list | tuple)
    payloads = converter.default().payload_converter.to_payloads(values)
    return tuple(p.data.decode() for p in payloads)


def _recorded(event: HistoryEvent) -> tuple[str, ...] | None:
    if event.HasField("activity_task_scheduled_event_attributes"):
        scheduled = event.activity_task_scheduled_event_attributes
        return (
            "activity",
            scheduled.activity_type.name,
            *(p.data.decode() for p in scheduled.input.payloads),
            str(scheduled.start_to_close_timeout.ToTimedelta()),
            str(scheduled.retry_policy.initial_interval.ToTimedelta()),
            str(scheduled.retry_policy.maximum_interval.ToTimedelta()),
        )
    if (local := local_activity(event)) is not None:
        return ("local", *local)
    if event.HasField("workflow_execution_continued_as_new_event_attributes"):
        continued = event.workflow_execution_continued_as_new_event_attributes
        return ("continue-as-new", *(p.data.decode() for p in continued.input.payloads))
    if event.HasField("workflow_execution_completed_event_attributes"):
        completed = event.workflow_execution_completed_event_attributes
        return ("result", *(p.data.decode() for p in completed.result.payloads))
    return None


@pytest.mark.parametrize("name", sorted(COVERS))
async def test_history_replays(name: str) -> None:
    history = _load(name)
    commands = _Commands()
    # The gateway's converter (the histories were recorded with Temporal's default).
    replayer = Replayer(
        workflows=[IncidentWorkflow], interceptors=[commands], data_converter=DATA_CONVERTER
    )
    result = await replayer.replay_workflow(history)
    assert result.replay_failure is None
    recorded = [c for c in map(_recorded, history.events) if c is not None]
    assert commands.sent == recorded


def _markers(history: WorkflowHistory) -> list[str]:
    """The history's patch ids and local activities, in order (``local`` for the latter)."""
    found = []
    for event in history.events:
        if not event.HasField("marker_recorded_event_attributes"):
            continue
        marker = event.marker_recorded_event_attributes
        if marker.marker_name == "core_patch":
            found.append(json.loads(marker.details["patch-data"].payloads[0].data)["id"])
        elif marker.marker_name == "core_local_activity":
            found.append("local")
    return found


def test_since_patches_first_every_patch_precedes_the_first_local_activity() -> None:
    """A patch asked after a local activity can land in the next workflow task and
    replay the old way (PATCH_PATCHES_FIRST): the current code asks every patch first."""
    markers = _markers(_load("patches_first_owner_accepts"))
    first_local = markers.index("local")
    patches = [m for m in markers if m != "local"]
    assert set(patches) == {
        PATCH_ENDS_WHEN_ERASED,
        PATCH_COARSE_STEPS,
        PATCH_PATCHES_FIRST,
        PATCH_NOTICES_BY_REFERENCE,
    }
    assert markers[:first_local] == patches
    # Before the patch, the notices' patch came after load_incident's local activity.
    before = _markers(_load("coarse_owner_accepts"))
    assert before.index(PATCH_NOTICES_BY_REFERENCE) > before.index("local")


@pytest.mark.parametrize(
    "name",
    [
        "one_marker_owner_accepts",
        "one_marker_erased_while_owned",
        "one_marker_reopen_continue_as_new",
        "one_marker_reopen_continue_as_new.run2",
    ],
)
def test_since_one_marker_a_run_records_one_patch_marker_and_one_upsert(name: str) -> None:
    """Each patch recorded its marker and an upsert of TemporalChangeVersion; a run
    since PATCH_ONE_MARKER records only its own, first of all."""
    history = _load(name)
    markers = _markers(history)
    assert [m for m in markers if m != "local"] == [PATCH_ONE_MARKER]
    assert markers[0] == PATCH_ONE_MARKER
    upserts = [
        e
        for e in history.events
        if e.HasField("upsert_workflow_search_attributes_event_attributes")
    ]
    assert len(upserts) == 1
    if name == "one_marker_owner_accepts":  # the same path as patches_first_owner_accepts
        before = _load("patches_first_owner_accepts")
        assert len(before.events) - len(history.events) == 6  # 4 markers + 4 upserts -> 1 + 1
