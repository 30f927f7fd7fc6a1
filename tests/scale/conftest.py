"""A cluster of processes over the session's Temporal dev server (or one of the test's
own), on a PostgreSQL database or a SQLite file of the test's own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
from coopgate.v1 import admin_pb2
from pydantic import SecretStr
from temporalio.testing import WorkflowEnvironment

from gateway.core.caller import Role
from gateway.settings import Settings
from gateway.stack import Pki, open_runtime
from partners import PartnerCredentials
from tests.conftest import Api
from tests.scale.cluster import Cluster, keys_environment, with_retries

#: The reference chain of nfc-payment, component -> partner.
CHAIN = {
    "sim-secure-element": "telco-a",
    "card-token": "bank-a",
    "payment-terminal": "acquirer-a",
    "nfc-stack": "handset-a",
}


async def seed(cluster: Cluster) -> None:
    """Migrate and load the reference catalogue once, in this process, with the
    cluster's keys (as `coopgate migrate` and an operator's catalogue would)."""
    values = {k.removeprefix("COOPGATE_").lower(): SecretStr(v) for k, v in cluster.keys.items()}
    settings = Settings(
        data_dir=cluster.workdir / "seed",
        database_url=cluster.database_url,
        temporal_address=cluster.temporal_address,
        task_queue=cluster.task_queue,
        checkpoint_interval_seconds=0,
    ).model_copy(update=values)
    async with open_runtime(settings, seed=True, create_secrets=False):
        pass


async def quick_service(
    admin: Api, name: str, deadline: float = 30, base: str = "nfc-payment"
) -> str:
    """A copy of ``base`` with deadlines in seconds, so real time suffices (long
    enough to outlast a killed worker's activity timeout, 10 s)."""
    got = await with_retries(
        partial(admin.admin.GetService, admin_pb2.GetServiceRequest(service_id=base), timeout=20)
    )
    assert isinstance(got, admin_pb2.GetServiceResponse)
    service = got.service
    service.service_id = name
    for component in service.components:
        component.diagnosis_deadline.FromTimedelta(timedelta(seconds=deadline))
    service.ownership_policy.acceptance_deadline.FromTimedelta(timedelta(seconds=20))
    define = admin_pb2.DefineServiceRequest(idempotency_key=f"define-{name}", service=service)
    await with_retries(partial(admin.admin.DefineService, define, timeout=20))
    return name


@pytest.fixture
async def pg_cluster(
    temporal_env: WorkflowEnvironment,
    pki: Pki,
    credentials: Callable[[str, Role], PartnerCredentials],
    pg_database_factory: Callable[[], object],
    tmp_path: Path,
) -> AsyncIterator[Cluster]:
    url = await pg_database_factory()  # type: ignore[misc]
    assert isinstance(url, str)
    cluster = Cluster(
        workdir=tmp_path,
        database_url=url,
        temporal_address=temporal_env.client.service_client.config.target_host,
        task_queue=f"tq-{uuid.uuid4()}",
        tls=pki.server,
        keys=keys_environment(tmp_path / "vault"),
        credentials=credentials,
    )
    await seed(cluster)
    try:
        yield cluster
    finally:
        await cluster.close()
