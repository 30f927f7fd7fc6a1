"""Shared fixtures: a real Temporal dev server, a real CA, real gRPC with mTLS,
and the gateway on SQLite and on PostgreSQL (every stack test runs on both)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import pytest
from coopgate.v1 import admin_pb2_grpc, cases_pb2_grpc, consents_pb2_grpc, work_pb2_grpc
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from gateway.core.caller import Role
from gateway.crypto.pki import CertificateAuthority
from gateway.orchestration.devserver import DEV_SERVER_TUNING
from gateway.orchestration.temporal import create_worker
from gateway.settings import Settings
from gateway.stack import (
    Pki,
    Runtime,
    ensure_pki,
    open_runtime,
    start_gateway,
)
from gateway.store import Store, create_store, migrate
from partners import PartnerCredentials, secure_channel
from partners.reference import COMPANIES
from partners.scenarios import Cast, RecordingNarrator, Stage

PG_ADMIN_DSN = os.environ.get("COOPGATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BIN = Path(sys.executable).parent


async def _pg_reachable() -> bool:
    try:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
    except (OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@pytest.fixture(scope="session")
async def pg_available() -> bool:
    ok = await _pg_reachable()
    if not ok and IN_CI:
        pytest.fail(f"PostgreSQL is mandatory in CI but {PG_ADMIN_DSN} is unreachable")
    return ok


@pytest.fixture(scope="session")
async def pg_database_factory(pg_available: bool) -> AsyncIterator[Callable[[], object]]:
    """Creates throwaway PostgreSQL databases; drops them at the end of the session."""
    created: list[str] = []

    async def make() -> str:
        if not pg_available:
            pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_DSN} (mandatory in CI)")
        name = f"coopgate_test_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        created.append(name)
        base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        return f"{base}/{name}"

    yield make
    if created:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            for name in created:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, pg_database_factory: Callable[[], object]
) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url = await pg_database_factory()  # type: ignore[misc]
    assert isinstance(url, str)
    return url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A migrated store on each backend, closed after the test."""
    store = create_store(database_url)
    await migrate(store)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(BIN / "temporal"),
        dev_server_extra_args=list(DEV_SERVER_TUNING),
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pki-root")


@pytest.fixture(scope="session")
def pki(pki_dir: Path) -> Pki:
    return ensure_pki(Settings(data_dir=pki_dir))


@pytest.fixture(scope="session")
def credentials(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, Role], PartnerCredentials]:
    out = tmp_path_factory.mktemp("clients")
    cache: dict[tuple[str, Role], PartnerCredentials] = {}

    def issue(partner: str, role: Role = Role.PARTNER) -> PartnerCredentials:
        if (partner, role) not in cache:
            files = pki.ca.issue_client(out, partner, role)
            cache[(partner, role)] = PartnerCredentials(cert=files.cert, key=files.key, ca=files.ca)
        return cache[(partner, role)]

    return issue


@dataclass
class Api:
    """Stubs over one mTLS channel, as one partner and role."""

    channel: grpc.aio.Channel
    cases: cases_pb2_grpc.CaseServiceAsyncStub = field(init=False)
    admin: admin_pb2_grpc.AdminServiceAsyncStub = field(init=False)
    consents: consents_pb2_grpc.ConsentServiceAsyncStub = field(init=False)
    work: work_pb2_grpc.PartnerWorkServiceAsyncStub = field(init=False)

    def __post_init__(self) -> None:
        self.cases = cases_pb2_grpc.CaseServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.consents = consents_pb2_grpc.ConsentServiceStub(self.channel)
        self.work = work_pb2_grpc.PartnerWorkServiceStub(self.channel)


@dataclass
class Stack:
    backend: str
    target: str
    client: Client
    task_queue: str
    settings: Settings
    runtime: Runtime
    credentials: Callable[[str, Role], PartnerCredentials]
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def api(self, partner: str, role: Role = Role.PARTNER) -> Api:
        channel = secure_channel(self.target, self.credentials(partner, role))
        self.channels.append(channel)
        return Api(channel)


async def end_open_runs(client: Client, task_queue: str) -> int:
    """Terminate every run still open on ``task_queue``, before its worker stops: a
    worker stopped under a run's local activities had Temporal's core panic ("receive
    half not dropped") and its shutdown hang (f8914e7). Returns how many were ended."""
    ended = 0
    query = f'TaskQueue="{task_queue}" AND ExecutionStatus="Running"'
    async for execution in client.list_workflows(query):
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        try:
            await handle.terminate("test session finished")
            ended += 1
        except RPCError:  # ended meanwhile
            pass
    return ended


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
async def stack(
    request: pytest.FixtureRequest,
    temporal_env: WorkflowEnvironment,
    pki: Pki,
    credentials: Callable[[str, Role], PartnerCredentials],
    pg_database_factory: Callable[[], object],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    """The gateway and a worker, over the real dev server, on each store backend."""
    data_dir = tmp_path_factory.mktemp(f"stack-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{data_dir / 'coopgate.db'}"
    else:
        url = await pg_database_factory()  # type: ignore[misc]
        assert isinstance(url, str)
    settings = Settings(
        data_dir=data_dir,
        listen="127.0.0.1:0",
        database_url=url,
        task_queue=f"tq-{uuid.uuid4()}",
    )
    async with open_runtime(settings, client=temporal_env.client, seed=True) as runtime:
        worker = create_worker(temporal_env.client, settings.task_queue, runtime.activities)
        async with worker:
            gateway = await start_gateway(runtime, pki)
            stack = Stack(
                backend=request.param,
                target=f"127.0.0.1:{gateway.port}",
                client=temporal_env.client,
                task_queue=settings.task_queue,
                settings=settings,
                runtime=runtime,
                credentials=credentials,
            )
            try:
                yield stack
            finally:
                await end_open_runs(temporal_env.client, settings.task_queue)
                for channel in stack.channels:
                    await channel.close()
                await gateway.stop(0)


@pytest.fixture
def unique() -> Callable[[str], str]:
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def stage(stack: Stack) -> AsyncIterator[Stage]:
    """A stage over a fresh cast of partners (its own partner ids and service copies),
    so that no other test's work reaches them."""
    cast = Cast.fresh(uuid.uuid4().hex[:8])
    stage = Stage(
        stack.target,
        lambda partner, role: stack.credentials(partner, Role(role)),
        cast=cast,
        narrator=RecordingNarrator(),
        poll=0.1,
        patience=30,
    )
    try:
        for kind, partner in cast.partners.items():
            await stage.admin.register_partner(
                partner,
                display_name=f"{COMPANIES[kind].display_name} ({cast.tag})",
                kind=COMPANIES[kind].partner_kind,
            )
        yield stage
    finally:
        await stage.close()


__all__ = ["Api", "CertificateAuthority", "Stack"]
