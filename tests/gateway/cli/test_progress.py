"""A wait longer than a second shows progress once connected (plain lines when stderr
is not a terminal), and a quick call shows none: `gateway.cli.client.call` run in a
process of its own, as a command runs it, against the real gateway."""

from __future__ import annotations

import asyncio
import sys

import pytest

from gateway.core.caller import Role
from tests.conftest import Stack

#: A call that connects and gets its answer, then takes ``sys.argv[5]`` seconds more.
SCRIPT = """
import asyncio, sys
from pathlib import Path
from coopgate.v1 import admin_pb2, admin_pb2_grpc
from gateway.cli import client
from gateway.core.caller import Role

target, cert, key, ca, extra = sys.argv[1:6]
options = client.client_options(
    None, "bank-a", Role.ADVISOR, target, Path(cert), Path(key), Path(ca)
)
client.PLAIN_EVERY = 1.0

async def answer() -> int:
    async with options.channel() as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        services = await stub.ListServices(admin_pb2.ListServicesRequest())
        await asyncio.sleep(float(extra))
        return len(services.services)

print(client.call(answer(), waiting="the case's owner"))
"""


async def _run(stack: Stack, extra: float) -> tuple[int, str, str]:
    creds = stack.credentials("bank-a", Role.ADVISOR)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRIPT, stack.target,
        str(creds.cert), str(creds.key), str(creds.ca), str(extra),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)  # the store plays no part
async def test_a_slow_answer_shows_progress_a_quick_one_none(stack: Stack) -> None:
    code, out, err = await _run(stack, 2.4)
    assert code == 0, err
    assert int(out) >= 3  # the answer, alone on stdout
    # The first line after a second, then one a second (PLAIN_EVERY here); a connection
    # slow on a loaded machine may have its own line first.
    owner = [line for line in err.splitlines() if "waiting for the case's owner (" in line]
    assert owner
    assert all(line.startswith(("… waiting for", "… still waiting for")) for line in owner)

    code, out, err = await _run(stack, 0)
    assert code == 0, err
    assert int(out) >= 3
    assert "the case's owner" not in err
