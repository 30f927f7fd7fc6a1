"""Small helpers for tests: rich gRPC error details and health checks."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

import grpc
from coopgate.v1 import work_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status
from sqlalchemy import ColumnElement, select

from gateway.core.caller import Role
from gateway.store.schema import work_items

if TYPE_CHECKING:
    from gateway.stack import Runtime
    from tests.conftest import Stack


def rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the error carries no google.rpc.Status"
    return cast(status_pb2.Status, status)


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    out: dict[str, str] = {}
    for detail in rich_status(error).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out.update({v.field: v.description for v in bad.field_violations})
    return out


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    for detail in rich_status(error).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError("no ErrorInfo in the status details")


async def health_status(channel: grpc.aio.Channel, service: str = "", timeout: float = 5) -> int:
    """grpc.health.v1 Check (typeshed's HealthStub declares no methods)."""
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    reply: health_pb2.HealthCheckResponse = await check(
        health_pb2.HealthCheckRequest(service=service), timeout=timeout
    )
    return reply.status


COOPGATE = str(Path(sys.executable).parent / "coopgate")


async def run_coopgate(*args: str, columns: int = 250) -> tuple[int, str, str]:
    """Run the `coopgate` command; returns (exit status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        COOPGATE,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": str(columns)},  # rich wraps at 80 columns when piped
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def client_args(stack: Stack, partner: str, role: Role) -> list[str]:
    """Options that make a `coopgate` client command talk to the test stack."""
    creds = stack.credentials(partner, role)
    return [
        "--as", partner, "--role", role.value, "--target", stack.target,
        "--cert", str(creds.cert), "--key", str(creds.key), "--ca", str(creds.ca),
    ]  # fmt: skip


async def queued_items(runtime: Runtime, where: ColumnElement[bool]) -> list[work_pb2.WorkItem]:
    """The work items ``where`` selects, as the partner's stream would send them: the
    sealed ones (naming a partner's id for a customer) opened, oldest first."""
    sealer = runtime.domain.work.sealer
    assert sealer is not None
    async with runtime.store.read() as conn:
        rows = (
            await conn.execute(
                select(work_items.c.work_id, work_items.c.item, work_items.c.subject_id)
                .where(where)
                .order_by(work_items.c.created_at, work_items.c.work_id)
            )
        ).all()
        opened = [await sealer.open_item(conn, r.work_id, r.item, r.subject_id) for r in rows]
    return [work_pb2.WorkItem.FromString(raw) for raw in opened if raw is not None]
