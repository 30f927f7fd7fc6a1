"""PostgreSQL restarted under load: a private server of the test's own (initdb in a
temporary directory, a free port; the shared server at 5432 is never touched) is
stopped and started again while partners open cases and append to them. The gateway
recovers without a restart of its own; every call in flight either succeeded or
failed with UNAVAILABLE, and succeeds when retried with the same idempotency key,
which gives the first answer: each key made exactly one case."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from coopgate.v1 import cases_pb2, common_pb2
from sqlalchemy import func, select
from temporalio.testing import WorkflowEnvironment

from gateway.core.caller import Role
from gateway.orchestration.temporal import create_worker
from gateway.settings import Settings
from gateway.stack import Pki, open_runtime, start_gateway
from gateway.store.schema import cases
from partners import PartnerCredentials
from tests.conftest import Api, Stack
from tests.scale.cluster import free_port, open_request

CALLERS = 8
CALLS_EACH = 12


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.skip("no PostgreSQL server binaries in /usr/lib/postgresql (postgresql package)")
    return found[-1]


def _as_postgres(*args: str) -> list[str]:
    """The server refuses to run as root: as the `postgres` user when we are root."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)


class PrivatePostgres:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="coopgate-pg-", dir="/tmp"))
        self.data = self.dir / "data"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")

    def _run(self, *args: str) -> None:
        subprocess.run(_as_postgres(*args), check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            _pg_bin("pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.dir / "server.log"), "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.init()
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop("immediate")
        server.remove()


@pytest.fixture
async def pg_stack(
    private_postgres: PrivatePostgres,
    temporal_env: WorkflowEnvironment,
    pki: Pki,
    credentials: Callable[[str, Role], PartnerCredentials],
    tmp_path: Path,
) -> AsyncIterator[Stack]:
    settings = Settings(
        data_dir=tmp_path,
        listen="127.0.0.1:0",
        database_url=private_postgres.url,
        task_queue=f"tq-{uuid.uuid4()}",
        checkpoint_interval_seconds=1,
    )
    async with open_runtime(settings, client=temporal_env.client, seed=True) as runtime:
        worker = create_worker(temporal_env.client, settings.task_queue, runtime.activities)
        async with worker:
            gateway = await start_gateway(runtime, pki)
            stack = Stack(
                backend="private-postgres",
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
                for channel in stack.channels:
                    await channel.close()
                await gateway.stop(0)


@pytest.mark.timeout(240)
async def test_postgres_restarted_under_load_every_call_succeeds_or_is_unavailable_then_succeeds(
    pg_stack: Stack, private_postgres: PrivatePostgres
) -> None:
    tag = uuid.uuid4().hex[:8]
    outcomes: Counter[str] = Counter()
    keys: dict[str, set[str]] = {}
    unexpected: list[str] = []

    async def caller(n: int, api: Api) -> None:
        for i in range(CALLS_EACH):
            key = f"open-{tag}-{n}-{i}"
            request = open_request("nfc-payment", key, f"c-{tag}-{n}-{i}")
            first = True
            while True:
                try:
                    reply = await api.cases.OpenCase(request, timeout=15)
                except grpc.aio.AioRpcError as exc:
                    # Nothing but UNAVAILABLE while the store is away.
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        unexpected.append(f"OpenCase {exc.code()}: {exc.details()}")
                        return
                    outcomes["unavailable"] += 1
                    first = False
                    await asyncio.sleep(0.2)
                    continue
                keys.setdefault(key, set()).add(reply.case_id)
                outcomes["succeeded first time" if first else "succeeded on retry"] += 1
                break
            # A change on the case too, retried the same way.
            change = cases_pb2.AppendInteractionRequest(
                idempotency_key=f"note-{key}",
                case_id=reply.case_id,
                interaction=cases_pb2.Interaction(channel=common_pb2.CHANNEL_PHONE, summary="hi"),
            )
            while True:
                try:
                    await api.cases.AppendInteraction(change, timeout=15)
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        unexpected.append(f"AppendInteraction {exc.code()}: {exc.details()}")
                        return
                    outcomes["unavailable"] += 1
                    await asyncio.sleep(0.2)
            await asyncio.sleep(0.05)

    async def restart() -> None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(private_postgres.stop, "fast")
        outcomes["restarts"] += 1
        await asyncio.sleep(1.0)
        await asyncio.to_thread(private_postgres.start)

    apis = [pg_stack.api("bank-a", Role.ADVISOR) for _ in range(CALLERS)]
    await asyncio.gather(restart(), *(caller(n, api) for n, api in enumerate(apis)))
    print(f"\npostgres restart under load: {dict(outcomes)}")
    assert unexpected == []
    assert outcomes["restarts"] == 1
    assert outcomes["unavailable"] > 0  # the restart did hit calls in flight
    # Each key made exactly one case; the store holds no other.
    assert all(len(made) == 1 for made in keys.values())
    assert len(keys) == CALLERS * CALLS_EACH
    made = {case for ids in keys.values() for case in ids}
    async with pg_stack.runtime.store.read() as conn:
        stored = (
            await conn.execute(
                select(func.count()).select_from(cases).where(cases.c.case_id.in_(made))
            )
        ).scalar_one()
    assert stored == len(made) == CALLERS * CALLS_EACH
