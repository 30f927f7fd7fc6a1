"""Against a gateway that does not answer, commands say so within seconds."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from tests.helpers import run_coopgate


async def test_a_client_command_names_a_silent_gateway_within_seconds(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "var")
    assert (await run_coopgate("ca", "init", "--data-dir", data_dir))[0] == 0
    issued = await run_coopgate(
        "ca", "issue", "--data-dir", data_dir, "--partner", "bank-a", "--role", "advisor"
    )
    assert issued[0] == 0, issued
    # Accepts connections and never says a word (a hung or wrong host).
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    async with silent:
        for target in (f"127.0.0.1:{port}", "127.0.0.1:1"):  # silent, then refused
            started = time.monotonic()
            code, out, err = await run_coopgate(
                "case", "list", "--as", "bank-a", "--role", "advisor",
                "--data-dir", data_dir, "--target", target,
            )  # fmt: skip
            assert code == 1, (out, err)
            assert f"the gateway at {target} does not answer" in " ".join(err.split())
            assert "Traceback" not in err
            assert time.monotonic() - started < 15
        for writer in held:
            writer.close()


async def test_demo_without_a_stack_fails_at_once(tmp_path: Path) -> None:
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "coopgate"), "demo",
        "--data-dir", str(tmp_path / "var"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COOPGATE_LISTEN": "127.0.0.1:1", "COLUMNS": "250"},
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert "the gateway at 127.0.0.1:1 does not answer" in err.decode()
    # It used to wait 107 s; the bound leaves room for a loaded machine's slow start
    # (11 s was measured with a load average of 17 on 2 cores).
    assert time.monotonic() - started < 30
