"""The demo's child processes: started with a line reader or a log file, and
stopped by pid — SIGTERM, then SIGKILL after a grace period — so that none
outlives the demo."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    """Linux: the child gets SIGTERM when the demo dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(slots=True)
class Child:
    """A started process, and the lines it printed when they are read."""

    name: str
    process: asyncio.subprocess.Process
    reader: asyncio.Task[None] | None = None
    lines: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.returncode is None


class Children:
    """Every process this demo started, in start order."""

    def __init__(self) -> None:
        self._children: list[Child] = []

    async def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log: Path | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> Child:
        """Start ``argv``; its output goes to ``log`` if given, else line by line to ``on_line``."""
        if log is not None:
            with log.open("ab") as sink:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=sink,
                    stderr=sink,
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                    preexec_fn=_die_with_parent,
                )
            child = Child(name, process)
        else:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                preexec_fn=_die_with_parent,
            )
            child = Child(name, process)
            child.reader = asyncio.create_task(self._pump(child, on_line))
        self._children.append(child)
        return child

    @staticmethod
    async def _pump(child: Child, on_line: Callable[[str], None] | None) -> None:
        stream = child.process.stdout
        if stream is None:
            return
        async for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            child.lines.append(line)
            if on_line is not None:
                on_line(line)

    async def stop(self, child: Child, grace: float = 15.0) -> int:
        """SIGTERM by pid, SIGKILL after ``grace`` seconds; returns the exit status."""
        if child.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(child.process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
                await child.process.wait()
        if child.reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await child.reader
        return child.process.returncode or 0

    async def stop_all(self) -> None:
        """Stop the most recently started first (the partners before the stack)."""
        while self._children:
            child = self._children.pop()
            await self.stop(child)

    async def stop_many(self, children: Sequence[Child]) -> None:
        await asyncio.gather(*(self.stop(c) for c in children))
        for child in children:
            if child in self._children:
                self._children.remove(child)
