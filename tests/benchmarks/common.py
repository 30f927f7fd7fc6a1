"""Shared helpers for the benchmarks (run with `make bench`, not part of `make test`).

Every figure is reported next to a bare-engine baseline measured in the same
run, on the same database, because these machines are noisy.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg


def run_and_exit(main: Coroutine[object, object, None]) -> None:
    """Run a benchmark's ``main`` and leave at once, its figures printed and written:
    gRPC's and Temporal's native threads could otherwise crash the interpreter's own
    shutdown after the run (seen as "Fatal Python error: PyGILState_Release"), and
    `make bench` would stop there (the CLI leaves the same way, sdk-python#300)."""
    code = 0
    try:
        asyncio.run(main)
    except SystemExit as exc:  # argparse's refusals, a benchmark's own verdict
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


PG_ADMIN_DSN = os.environ.get("COOPGATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass(slots=True, frozen=True)
class Latency:
    p50_us: float
    p99_us: float
    mean_us: float
    n: int

    def __str__(self) -> str:
        return f"p50 {self.p50_us:8.1f} µs  p99 {self.p99_us:8.1f} µs  (n={self.n})"


def summarize(samples_ns: list[int]) -> Latency:
    ordered = sorted(samples_ns)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return Latency(
        p50_us=statistics.median(ordered) / 1000,
        p99_us=p99 / 1000,
        mean_us=statistics.fmean(ordered) / 1000,
        n=len(ordered),
    )


def now_ns() -> int:
    return time.perf_counter_ns()


@asynccontextmanager
async def database(backend: str, workdir: str) -> AsyncIterator[str]:
    """A fresh database URL for one benchmark run; dropped afterwards."""
    if backend == "sqlite":
        path = os.path.join(workdir, f"bench-{uuid.uuid4().hex[:8]}.db")
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.remove(path + suffix)
        return
    name = f"coopgate_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()
