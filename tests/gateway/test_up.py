"""`coopgate up` as a user runs it: a real process tree (dev server, gateway,
worker) on free loopback ports; it serves, refuses a second `up` on the same
data dir, stops cleanly on Ctrl-C with no orphan, and keeps its data."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from coopgate.v1 import cases_pb2, cases_pb2_grpc, common_pb2
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from partners import PartnerCredentials, secure_channel
from tests.helpers import health_status

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class UpProcess:
    data_dir: Path
    env: dict[str, str]
    gateway_port: int
    temporal_port: int

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            return subprocess.Popen(
                [str(BIN / "coopgate"), "up", "--data-dir", str(self.data_dir), *extra],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    @property
    def log(self) -> Path:
        return self.data_dir.parent / "up.log"

    def credentials(self) -> PartnerCredentials:
        subprocess.run(
            [
                str(BIN / "coopgate"),
                "ca",
                "issue",
                "--partner",
                "bank-a",
                "--role",
                "advisor",
                "--data-dir",
                str(self.data_dir),
            ],
            check=True,
            env=self.env,
            capture_output=True,
        )
        clients = self.data_dir / "pki" / "clients"
        return PartnerCredentials(
            cert=clients / "bank-a-advisor.pem",
            key=clients / "bank-a-advisor.key",
            ca=self.data_dir / "pki" / "ca.pem",
        )


def processes_using(marker: str) -> list[int]:
    """Pids whose command line mentions ``marker`` (our data dir), from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(entry.name))
    return pids


async def wait_for_page(url: str, timeout: float = 60) -> Any:
    """The page once its server answers (it starts after the gateway serves)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await asyncio.to_thread(urllib.request.urlopen, url, timeout=10)
            except urllib.error.URLError:
                await asyncio.sleep(0.2)


async def wait_serving(target: str, creds: PartnerCredentials, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while True:
            async with secure_channel(target, creds) as channel:
                try:
                    status = await health_status(channel, timeout=2)
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
            await asyncio.sleep(0.3)


async def wait_for_file(path: Path, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not path.exists():
            await asyncio.sleep(0.1)


async def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> int:
    process.send_signal(signal.SIGINT)
    async with asyncio.timeout(timeout):
        while process.poll() is None:
            await asyncio.sleep(0.1)
    return process.returncode


@pytest.fixture
async def up(tmp_path: Path) -> AsyncIterator[UpProcess]:
    gateway_port, temporal_port, ui_port = free_port(), free_port(), free_port()
    env = dict(os.environ)
    env.update(
        COOPGATE_LISTEN=f"127.0.0.1:{gateway_port}",
        COOPGATE_TEMPORAL_DEV_PORT=str(temporal_port),
        COOPGATE_TEMPORAL_DEV_UI_PORT=str(ui_port),
        COOPGATE_CONSOLE_LISTEN=f"127.0.0.1:{free_port()}",
        COOPGATE_LOG_LEVEL="WARNING",
        COOPGATE_REFERENCE_PARTNERS="false",  # the bare stack; test_up_runs_the_whole_system
    )
    env.pop("COOPGATE_DATABASE_URL", None)
    env.pop("COOPGATE_TEMPORAL_ADDRESS", None)
    data_dir = tmp_path / "var"
    yield UpProcess(data_dir, env, gateway_port, temporal_port)
    for pid in processes_using(str(data_dir)):  # only what this test started
        os.kill(pid, signal.SIGKILL)


async def test_up_serves_refuses_a_second_up_and_stops_cleanly(up: UpProcess) -> None:
    target = f"127.0.0.1:{up.gateway_port}"
    scrape = f"127.0.0.1:{free_port()}"
    up.env["COOPGATE_PROMETHEUS_LISTEN"] = scrape
    first = up.start()
    try:
        await wait_for_file(up.data_dir / "pki" / "ca.pem")
        creds = up.credentials()
        await wait_serving(target, creds)

        second = subprocess.run(
            [str(BIN / "coopgate"), "up", "--data-dir", str(up.data_dir)],
            env=up.env,
            capture_output=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert b"another coopgate process" in second.stderr

        # Another data dir on the same ports: refused, naming the port and its holder,
        # before anything binds it a second time.
        other = subprocess.run(
            [str(BIN / "coopgate"), "up", "--data-dir", str(up.data_dir.parent / "other")],
            env=up.env,
            capture_output=True,
            timeout=60,
        )
        assert other.returncode == 1, other.stderr
        said = b" ".join(other.stderr.split())
        assert f"port {up.gateway_port} (the gateway".encode() in said
        assert f"pid {first.pid}".encode() in said
        assert processes_using(str(up.data_dir.parent / "other")) == []

        async with secure_channel(target, creds) as channel:
            opened = await cases_pb2_grpc.CaseServiceStub(channel).OpenCase(
                cases_pb2.OpenCaseRequest(
                    idempotency_key="up-1",
                    service_id="nfc-payment",
                    customer_local_id="cust-1",
                    channel=common_pb2.CHANNEL_PHONE,
                    summary="phone payment refused",
                )
            )
        listed = subprocess.run(
            [
                str(BIN / "temporal"),
                "workflow",
                "list",
                "--address",
                f"127.0.0.1:{up.temporal_port}",
            ],
            capture_output=True,
            timeout=30,
            check=True,
        )
        assert opened.case_id.encode() in listed.stdout

        # Prometheus scrapes the gateway on a port of its own: the call just made is in
        # rpc.server.call.duration, by method and status.
        page = await wait_for_page(f"http://{scrape}/metrics")
        samples = {
            (
                sample.name,
                sample.labels.get("rpc_method"),
                sample.labels.get("rpc_grpc_status_code"),
            ): sample.value
            for family in text_string_to_metric_families(page.read().decode())
            for sample in family.samples
        }
        key = ("rpc_server_call_duration_seconds_count", "OpenCase", "0")
        assert samples.get(key, 0) >= 1, sorted(k for k in samples if "rpc" in k[0])
    finally:
        code = await stop(first)
    output = up.log.read_text()
    assert code == 0, output
    assert "Coopgate is up" in output
    assert processes_using(str(up.data_dir)) == []

    # The data dir keeps the case: a new `up` serves it again.
    again = up.start()
    try:
        await wait_serving(target, creds)
        async with secure_channel(target, creds) as channel:
            view = await cases_pb2_grpc.CaseServiceStub(channel).GetCaseView(
                cases_pb2.GetCaseViewRequest(case_id=opened.case_id, purpose="customer-care")
            )
        assert view.view.header.case_id == opened.case_id
    finally:
        assert await stop(again) == 0
    assert processes_using(str(up.data_dir)) == []


def reference_partners(data_dir: Path) -> list[int]:
    """Pids of the reference partner backends run for ``data_dir``'s stack."""
    return [
        pid
        for pid in processes_using(str(data_dir))
        if b"partners.reference" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


async def test_up_runs_the_whole_system_with_the_reference_partners(up: UpProcess) -> None:
    """`make run`: the reference partners run beside the stack, a case on nfc-payment is
    diagnosed and owned within 30 s, the CLI's default certificates are there, nothing
    outlives Ctrl-C; `--no-partners` is the bare stack."""
    up.env["COOPGATE_REFERENCE_PARTNERS"] = "true"
    target = f"127.0.0.1:{up.gateway_port}"
    clients = up.data_dir / "pki" / "clients"
    creds = PartnerCredentials(
        cert=clients / "bank-a-advisor.pem",
        key=clients / "bank-a-advisor.key",
        ca=up.data_dir / "pki" / "ca.pem",
    )
    first = up.start()
    try:
        await wait_for_file(creds.key)
        await wait_serving(target, creds)
        assert {p.name for p in clients.glob("*.pem")} >= {
            f"{partner}-{role}.pem"
            for partner in ("telco-a", "bank-a", "transit-a")
            for role in ("partner", "advisor", "compliance", "admin")
        } | {"coopgate-admin.pem", "coopgate-compliance.pem"}
        async with secure_channel(target, creds) as channel:
            stub = cases_pb2_grpc.CaseServiceStub(channel)
            opened = await stub.OpenCase(
                cases_pb2.OpenCaseRequest(
                    idempotency_key="whole-system-1",
                    service_id="nfc-payment",
                    customer_local_id="bank-cust-42",
                    channel=common_pb2.CHANNEL_PHONE,
                    summary="Cannot pay by phone at a restaurant",
                )
            )
            async with asyncio.timeout(30):
                while True:
                    view = await stub.GetCaseView(
                        cases_pb2.GetCaseViewRequest(
                            case_id=opened.case_id, purpose="incident-resolution"
                        )
                    )
                    if view.view.header.relationship_owner_id:
                        break
                    await asyncio.sleep(0.2)
        assert view.view.header.relationship_owner_id == "bank-a"
        assert list(view.view.header.resolver_ids) == ["telco-a"]
        findings = {
            item.finding.partner_id
            for item in view.view.timeline
            if item.WhichOneof("item") == "finding"
        }
        assert "bank-a" in findings  # answered by the bank's backend itself
        assert len(reference_partners(up.data_dir)) == 8
        # The bank's web console serves, and its first sign-ins were written for the banner.
        console = f"http://{up.env['COOPGATE_CONSOLE_LISTEN']}"
        page = await wait_for_page(f"{console}/sign-in")
        assert page.status == 200
        assert "script-src 'self'" in page.headers["content-security-policy"]
        sign_ins = (up.data_dir / "console" / "sign-in.txt").read_text()
        assert sign_ins.startswith("advisor / ")
        # The CLI finds its default certificate with no flag but the data dir's setting.
        (up.data_dir.parent / "cwd").mkdir()
        shown = subprocess.run(
            [str(BIN / "coopgate"), "case", "show", opened.case_id, "--as", "bank-a"],
            cwd=up.data_dir.parent / "cwd",
            env=up.env | {"COOPGATE_DATA_DIR": str(up.data_dir)},
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert shown.returncode == 0, shown.stderr
        assert b"relationship owner" in shown.stdout
        assert b"owned" in shown.stdout
    finally:
        code = await stop(first)
    output = up.log.read_text()
    assert code == 0, output
    assert "reference partner" in output
    assert "injected faults (a drill)" in output
    assert "payment-applet-locked" in output  # Telco A's, said before anything happens
    assert "case open --as bank-a" in output
    assert "console (bank-a)" in output
    assert f"{console}/" in output
    assert sign_ins.splitlines()[0] in output
    assert processes_using(str(up.data_dir)) == []
    assert "stopped    telco-a" in (up.data_dir / "partners" / "telco-a.log").read_text()

    bare = up.start("--no-partners")
    try:
        await wait_serving(target, creds)
        assert reference_partners(up.data_dir) == []
    finally:
        assert await stop(bare) == 0
    assert processes_using(str(up.data_dir)) == []


def test_freezing_the_heap_keeps_what_was_made_and_still_collects_new_garbage() -> None:
    """`coopgate up` and `coopgate gateway` freeze what they made to start: it leaves the
    cyclic collector's sight, while garbage made afterwards is collected as before. In a
    process of its own (freezing is for the whole process)."""
    script = """
import gc
from gateway.stack import freeze_heap

kept = [[i] for i in range(5000)]
freeze_heap()
frozen = gc.get_freeze_count()
assert frozen >= 5000, frozen
watched = {id(o) for o in gc.get_objects()}  # what the collector still walks
assert id(kept) not in watched and id(kept[0]) not in watched

class Cycle:
    pass

made = Cycle()
made.me = made
del made
assert gc.collect() >= 1
print("ok", frozen)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")


@pytest.mark.parametrize("taken", ["gateway", "temporal", "ui"])
def test_up_refuses_a_taken_port_naming_it_and_its_holder(up: UpProcess, taken: str) -> None:
    port = {
        "gateway": up.gateway_port,
        "temporal": up.temporal_port,
        "ui": int(up.env["COOPGATE_TEMPORAL_DEV_UI_PORT"]),
    }[taken]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        refused = subprocess.run(
            [str(BIN / "coopgate"), "up", "--data-dir", str(up.data_dir)],
            env=up.env,
            capture_output=True,
            timeout=60,
        )
    said = b" ".join(refused.stderr.split())
    assert refused.returncode == 1, said
    assert f"port {port} (".encode() in said
    assert f"pid {os.getpid()}".encode() in said
    assert not (up.data_dir / "temporal.db").exists()  # no dev server was started
