"""A reference partner as its own process (``python -m partners.reference``):
it connects over mTLS with its certificate files, answers its work, and stops
cleanly on SIGTERM sent to its pid."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from gateway.core.caller import Role
from partners import Channel
from partners.scenarios import Stage


async def _line_with(
    stream: asyncio.StreamReader, needle: str, seen: list[str], timeout: float = 20
) -> str:
    async with asyncio.timeout(timeout):
        while True:
            raw = await stream.readline()
            if not raw:
                raise AssertionError(f"the process ended before {needle!r}:\n" + "\n".join(seen))
            line = raw.decode().rstrip()
            seen.append(line)
            if needle in line:
                return line


async def test_a_reference_partner_process_answers_and_stops_on_sigterm(stage: Stage) -> None:
    handset = stage.cast["handset"]
    creds = stage.credentials(handset, Role.PARTNER)
    service_id = await stage.service("transit-pass")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "partners.reference",
        "handset",
        "--partner",
        handset,
        "--cert",
        str(creds.cert),
        "--key",
        str(creds.key),
        "--ca",
        str(creds.ca),
        "--target",
        stage.target,
        "--fault",
        "firmware-regression",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    seen: list[str] = []
    try:
        ready = await _line_with(process.stdout, " ready ", seen)
        assert "firmware-regression" in ready
        transit = stage.cast["transport"]
        opened = await stage.client(transit, "advisor").open_case(
            service_id=service_id,
            customer_local_id=stage.customer(transit),
            channel=Channel.APP,
            summary="phone pass refused at the gate",
        )
        answer = await _line_with(process.stdout, opened.case_id[:13], seen)
        assert "nfc-stack → FAULTY NFC_FW_NFC_1182" in answer
    finally:
        if process.returncode is None:
            os.kill(process.pid, signal.SIGTERM)
    async with asyncio.timeout(15):
        rest = (await process.stdout.read()).decode()
        assert await process.wait() == 0
    assert f"stopped    {handset}" in rest
