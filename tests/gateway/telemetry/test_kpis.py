"""The KPI metrics of one scripted incident on the time-skipping test server, with the
gateway's real activities on SQLite: the partners answer 20 s and 40 s after the
request, one never does, the bank accepts ownership at 3 min, resolves 5 h later (past
the 4 h SLA) and the customer confirms. Each metric is read from the in-memory reader,
labelled by this test's own copy of the service."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from coopgate.v1 import admin_pb2, cases_pb2
from temporalio.testing import WorkflowEnvironment

from gateway.orchestration.temporal import create_worker
from gateway.settings import Settings
from gateway.stack import open_runtime
from tests.gateway.telemetry.conftest import Memory
from tests.workflows.driver import ADMIN, BIN, Incident
from workflows import IncidentWorkflow

FAULTY, OK = cases_pb2.FINDING_STATUS_FAULTY, cases_pb2.FINDING_STATUS_OK


@pytest.fixture
async def incident(memory: Memory, tmp_path: Path) -> AsyncIterator[Incident]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server")
    )
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'store.db'}",
        task_queue=f"tq-{uuid.uuid4()}",
    )
    try:
        async with (
            open_runtime(settings, client=env.client, seed=True) as runtime,
            create_worker(env.client, settings.task_queue, runtime.activities),
        ):
            yield Incident(runtime, env)
    finally:
        await env.shutdown()


def points(memory: Memory, name: str, service: str) -> dict[tuple[tuple[str, Any], ...], Any]:
    """The metric's data points for ``service``, by their other labels."""
    found: dict[tuple[tuple[str, Any], ...], Any] = {}
    for resource in memory.metrics().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    labels = dict(point.attributes or {})
                    if labels.pop("coopgate.service", None) == service:
                        found[tuple(sorted(labels.items()))] = point
    return found


async def test_an_incident_with_known_timings_gives_its_kpis(
    incident: Incident, memory: Memory
) -> None:
    service = await incident.runtime.domain.admin.get_service("nfc-payment")
    service.service_id = f"nfc-kpi-{uuid.uuid4().hex[:8]}"
    await incident.runtime.domain.admin.define_service(
        ADMIN, admin_pb2.DefineServiceRequest(idempotency_key=service.service_id, service=service)
    )
    env = incident.env
    await incident.open("bank-a", service.service_id)
    opened = await env.get_current_time()
    await env.sleep(timedelta(seconds=20))
    await incident.finding("telco-a", "sim-secure-element", FAULTY, 0.9, "FAULT")
    await incident.finding("bank-a", "card-token", OK, 0.95)
    await env.sleep(timedelta(seconds=20))
    await incident.finding("acquirer-a", "payment-terminal", OK, 0.95)
    await env.sleep(timedelta(seconds=140))  # handset-a's 120 s deadline passes
    await incident.answer_offer("bank-a", accept=True)
    owned = await env.get_current_time()
    await incident.until(lambda s: s.status == "OWNED")
    await env.sleep(timedelta(hours=5))  # past the 4 h time-to-resolution
    await incident.resolve("bank-a")
    resolved = await env.get_current_time()
    await incident.confirm("bank-a")
    handle = env.client.get_workflow_handle_for(IncidentWorkflow.run, incident.case_id)
    assert (await handle.result()).status == "CLOSED"

    labels = (("coopgate.partner", "bank-a"),)
    (to_owner,) = points(memory, "coopgate.case.time_to_owner", service.service_id).values()
    assert to_owner.count == 1
    assert to_owner.sum == pytest.approx((owned - opened).total_seconds(), abs=3)
    assert 180 <= to_owner.sum < 190
    to_resolution = points(memory, "coopgate.case.time_to_resolution", service.service_id)
    assert to_resolution[labels].sum == pytest.approx((resolved - opened).total_seconds(), abs=3)
    closed = points(memory, "coopgate.case.closed", service.service_id)
    fcr = (("coopgate.first_contact_resolution", True), *labels)
    assert {k: p.value for k, p in closed.items()} == {fcr: 1}
    breaches = points(memory, "coopgate.case.sla_breaches", service.service_id)
    assert {k: p.value for k, p in breaches.items()} == {
        (("coopgate.sla", "time-to-resolution"),): 1
    }
    assert points(memory, "coopgate.case.reopens", service.service_id) == {}
    response = points(memory, "coopgate.partner.response_time", service.service_id)
    seconds = {dict(k)["coopgate.partner"]: p.sum for k, p in response.items()}
    assert seconds == {
        "telco-a": pytest.approx(20, abs=3),
        "bank-a": pytest.approx(20, abs=3),
        "acquirer-a": pytest.approx(40, abs=3),
    }
    unresponsive = points(memory, "coopgate.partner.unresponsive", service.service_id)
    assert {dict(k)["coopgate.partner"]: p.value for k, p in unresponsive.items()} == {
        "handset-a": 1
    }
