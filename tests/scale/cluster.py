"""The stack as separate OS processes, for tests that kill them: `coopgate gateway`
replicas and `coopgate worker` processes configured by environment only (keys as
settings, certificates by path, no data dir), optionally a Temporal dev server of
their own; and partner backends that count what they were given."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from coopgate.v1 import cases_pb2, common_pb2, work_pb2
from grpc_health.v1 import health_pb2
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.api.server import ServerTLS
from gateway.core.caller import Role
from gateway.crypto.keyset import GatewayKeys, env_name
from gateway.crypto.sealing import Sealer
from gateway.orchestration.devserver import DEV_SERVER_TUNING
from gateway.settings import Settings
from gateway.store.schema import work_items
from partners import PartnerCredentials, secure_channel
from tests.conftest import Api
from tests.helpers import health_status

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def keys_environment(directory: Path) -> dict[str, str]:
    """A fresh key set, as the settings a deployment would inject."""
    return GatewayKeys.load(Settings(secrets_directory=directory), create=True).as_environment()


@dataclass
class Process:
    """One child process, restartable with the same command and environment."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    kills: int = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.args,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL: no goodbye, no graceful stop."""
        assert self.popen is not None
        assert self.popen.poll() is None, self.tail()
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)
        self.kills += 1

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@dataclass
class Cluster:
    """Gateway replicas and workers over one store and one Temporal frontend."""

    workdir: Path
    database_url: str
    temporal_address: str
    task_queue: str
    tls: ServerTLS
    keys: dict[str, str]
    credentials: Callable[[str, Role], PartnerCredentials]
    gateways: list[Process] = field(default_factory=list)
    workers: list[Process] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def absent_data_dir(self) -> Path:
        """The data dir the processes are pointed at, which none of them may create."""
        return self.workdir / "no-data-dir"

    def environment(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COOPGATE_")}
        env.update(self.keys)
        env.update(
            COOPGATE_DATA_DIR=str(self.absent_data_dir),
            COOPGATE_DATABASE_URL=self.database_url,
            COOPGATE_TEMPORAL_ADDRESS=self.temporal_address,
            COOPGATE_TASK_QUEUE=self.task_queue,
            COOPGATE_TLS_CERT=str(self.tls.cert),
            COOPGATE_TLS_KEY=str(self.tls.key),
            COOPGATE_TLS_CLIENT_CA=str(self.tls.client_ca),
            COOPGATE_CHECKPOINT_INTERVAL_SECONDS="1",
            COOPGATE_LOG_LEVEL="WARNING",
            COOPGATE_DATABASE_POOL_SIZE="8",
        )
        env.update(self.extra_env)
        env.update(extra)
        return env

    def add_gateway(self) -> Process:
        port = free_port()
        n = len(self.gateways) + 1
        process = Process(
            f"gateway-{n}",
            [str(BIN / "coopgate"), "gateway"],
            self.environment(COOPGATE_LISTEN=f"127.0.0.1:{port}"),
            self.workdir / f"gateway-{n}.log",
        )
        self.gateways.append(process)
        return process

    def add_worker(self) -> Process:
        n = len(self.workers) + 1
        process = Process(
            f"worker-{n}",
            [str(BIN / "coopgate"), "worker"],
            self.environment(),
            self.workdir / f"worker-{n}.log",
        )
        self.workers.append(process)
        return process

    def address(self, gateway: Process) -> str:
        return gateway.env["COOPGATE_LISTEN"]

    @property
    def addresses(self) -> list[str]:
        return [self.address(g) for g in self.gateways]

    async def serving(self, gateway: Process, timeout: float = 60) -> None:
        """Until the replica answers its health check as SERVING over mTLS."""
        channel = secure_channel(self.address(gateway), self.credentials("coopgate", Role.ADMIN))
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if not gateway.alive():
                        raise AssertionError(f"{gateway.name} exited:\n{gateway.tail()}")
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        status = await health_status(channel, timeout=2)
                        if status == health_pb2.HealthCheckResponse.SERVING:
                            return
                    await asyncio.sleep(0.1)
        finally:
            await channel.close()

    def api(self, partner: str, role: Role = Role.PARTNER, *, only: Process | None = None) -> Api:
        """Stubs over every replica (round robin), or over one."""
        target: Sequence[str] = [self.address(only)] if only else self.addresses
        channel = secure_channel(target, self.credentials(partner, role))
        self.channels.append(channel)
        return Api(channel)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        for process in [*self.gateways, *self.workers]:
            process.stop()
            problems = [
                line
                for line in process.tail(20000).splitlines()
                if "Error" in line or "ERROR" in line or "Exception" in line
            ]
            if problems:  # shown with a failure's captured output
                print(f"--- {process.name}: {len(problems)} error lines, last:", *problems[-5:])


def dev_server(workdir: Path) -> Process:
    """A Temporal dev server of the test's own (state in a file, so that it survives a
    SIGKILL and a restart), on free ports."""
    port = free_port()
    return Process(
        "temporal",
        [
            str(BIN / "temporal"),
            *("server", "start-dev", "--ip", "127.0.0.1", "--port", str(port)),
            *("--headless", "--db-filename", str(workdir / "temporal.db")),
            *("--log-level", "error", *DEV_SERVER_TUNING),
        ],
        dict(os.environ),
        workdir / "temporal.log",
    )


#: Calls :func:`with_retries` had to send again, for the tests' reports.
RETRIES: Counter[str] = Counter()


async def with_retries(
    call: Callable[[], object], *, attempts: int = 60, pause: float = 0.25
) -> object:
    """A call retried on UNAVAILABLE (and a deadline passed while a process was down),
    as the SDK does: the request, with its idempotency key, is the same every time."""
    for attempt in range(attempts):
        try:
            return await call()  # type: ignore[misc]
        except grpc.aio.AioRpcError as exc:
            retriable = exc.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            if not retriable or attempt == attempts - 1:
                raise
            RETRIES["calls"] += 1
            await asyncio.sleep(pause)
    raise AssertionError("unreachable")


def open_request(service_id: str, key: str, customer: str) -> cases_pb2.OpenCaseRequest:
    return cases_pb2.OpenCaseRequest(
        idempotency_key=key,
        service_id=service_id,
        customer_local_id=customer,
        channel=common_pb2.CHANNEL_PHONE,
        summary="cannot pay by phone at the restaurant",
    )


async def view(api: Api, case_id: str) -> cases_pb2.CaseView:
    reply = await api.cases.GetCaseView(
        cases_pb2.GetCaseViewRequest(case_id=case_id, purpose="incident-resolution"), timeout=10
    )
    return reply.view


async def until_status(
    api: Api, case_id: str, status: int, timeout: float = 150
) -> cases_pb2.CaseView:
    async with asyncio.timeout(timeout):
        while True:
            try:
                seen = await view(api, case_id)
                if seen.header.status >= status:
                    return seen
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    raise
            await asyncio.sleep(0.2)


async def resolve_and_close(api: Api, case_id: str) -> cases_pb2.CaseView:
    """The owner resolves and the customer confirms, each retried with its key."""
    await until_status(api, case_id, cases_pb2.CASE_STATUS_OWNED)
    await with_retries(
        lambda: api.cases.ResolveCase(
            cases_pb2.ResolveCaseRequest(
                idempotency_key=f"resolve-{case_id}",
                case_id=case_id,
                resolution="SIM applet reinstalled.",
            ),
            timeout=20,
        )
    )
    await until_status(api, case_id, cases_pb2.CASE_STATUS_RESOLVED)
    await with_retries(
        lambda: api.cases.ConfirmResolution(
            cases_pb2.ConfirmResolutionRequest(
                idempotency_key=f"confirm-{case_id}", case_id=case_id
            ),
            timeout=20,
        )
    )
    return await until_status(api, case_id, cases_pb2.CASE_STATUS_CLOSED)


async def audit_verifies(
    first: Api, second: Api, workdir: Path, target: str, compliance: PartnerCredentials
) -> int:
    """The log as two replicas serve it is one tree: a checkpoint from each, the later
    consistent with the earlier, entries proven included, and the whole export
    replayed by `coopgate audit verify-log` against the later checkpoint. Returns
    the verified size."""
    from coopgate.v1 import audit_pb2, audit_pb2_grpc

    from gateway.audit.merkle import verify_consistency, verify_inclusion
    from tests.helpers import run_coopgate

    one = await audit_pb2_grpc.AuditServiceStub(first.channel).GetCheckpoint(
        audit_pb2.GetCheckpointRequest(), timeout=20
    )
    await asyncio.sleep(1.5)  # a checkpoint a second: the other replica's is later
    two_stub = audit_pb2_grpc.AuditServiceStub(second.channel)
    two = await two_stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=20)
    assert two.tree_size >= one.tree_size > 0
    assert two.verifier_key == one.verifier_key
    if two.tree_size > one.tree_size:
        proof = await two_stub.GetConsistencyProof(
            audit_pb2.GetConsistencyProofRequest(size1=one.tree_size, size2=two.tree_size),
            timeout=20,
        )
        verify_consistency(
            one.tree_size, two.tree_size, list(proof.proof), one.root_hash, two.root_hash
        )
    for index in {0, one.tree_size // 2, two.tree_size - 1}:
        included = await two_stub.GetInclusionProof(
            audit_pb2.GetInclusionProofRequest(index=index, tree_size=two.tree_size), timeout=20
        )
        verify_inclusion(
            included.leaf_hash, index, two.tree_size, list(included.proof), two.root_hash
        )
    note, export = workdir / "checkpoint.note", workdir / "audit.jsonl"
    note.write_text(two.signed_note)
    code, _, err = await run_coopgate(
        "audit", "export", "--as", "coopgate", "--role", "compliance", "--target", target,
        "--cert", str(compliance.cert), "--key", str(compliance.key), "--ca", str(compliance.ca),
        "--size", str(two.tree_size), "--out", str(export),
    )  # fmt: skip
    assert code == 0, err
    code, out, err = await run_coopgate(
        "audit", "verify-log", "--key", two.verifier_key, "--checkpoint", str(note), str(export)
    )
    assert code == 0, err
    assert out.startswith(f"OK: entries 0..{two.tree_size - 1} match checkpoint"), out
    return two.tree_size


async def work_kinds(
    conn: AsyncConnection, keys: dict[str, str], case_ids: set[str]
) -> dict[str, Counter[str]]:
    """Each case's stored work items by kind (a notification by its milestone), opened as
    the gateway opens them to send them: they are kept sealed under their subject's key."""
    sealer = Sealer(base64.b64decode(keys[env_name("master")]))
    rows = await conn.execute(
        select(
            work_items.c.case_id, work_items.c.work_id, work_items.c.item, work_items.c.subject_id
        ).where(work_items.c.case_id.in_(case_ids))
    )
    per_case: dict[str, Counter[str]] = {}
    for case_id, work_id, stored, subject_id in rows.all():
        raw = await sealer.open_item(conn, work_id, stored, subject_id)
        assert raw is not None, work_id  # no customer of these tests is erased
        item = work_pb2.WorkItem.FromString(raw)
        kind: str = item.WhichOneof("payload") or ""
        if kind == "customer_notification":
            kind = f"notify:{item.customer_notification.milestone}"
        per_case.setdefault(case_id, Counter())[kind] += 1
    return per_case


def assert_work_once(
    per_case: dict[str, Counter[str]], case_ids: set[str], chain: int, milestones: Sequence[str]
) -> None:
    """Every case got exactly its work: a diagnosis request per company of the chain, one
    offer, one customer notification per milestone."""
    assert set(per_case) == case_ids
    for case_id, kinds in per_case.items():
        assert kinds["diagnosis_request"] == chain, (case_id, kinds)
        assert kinds["ownership_offer"] == 1, (case_id, kinds)
        for milestone in milestones:
            assert kinds[f"notify:{milestone}"] == 1, (case_id, milestone, kinds)
