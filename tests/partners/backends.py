"""Reference partner backends run in-process, as asyncio tasks, over real gRPC
with mTLS against the test stack."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping

from gateway.core.caller import Role
from partners import PartnerClient
from partners.reference import COMPANIES, Faults, ReferenceBackend
from partners.scenarios import Stage


def _collector(lines: list[str], partner: str) -> Callable[[str], None]:
    return lambda line: lines.append(f"{partner} {line}")


async def eventually(check: Callable[[], bool], what: str, timeout: float = 5) -> None:
    """Until ``check`` holds (backends act on work a moment after the gateway queues it)."""
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


@contextlib.asynccontextmanager
async def running_backends(
    stage: Stage,
    kinds: Iterable[str],
    faults: Mapping[str, tuple[str, ...]],
    lines: list[str] | None = None,
) -> AsyncIterator[dict[str, ReferenceBackend]]:
    """One backend per company kind, playing the stage's cast, until the block ends;
    what they print goes to ``lines`` (as "<partner> <line>")."""
    backends: dict[str, ReferenceBackend] = {}
    tasks: list[asyncio.Task[None]] = []
    lines = [] if lines is None else lines
    for kind in kinds:
        company = COMPANIES[kind]
        partner = stage.cast[kind]
        client = PartnerClient(
            stage.target, stage.credentials(partner, Role.PARTNER), key_prefix=kind
        )
        backends[kind] = ReferenceBackend(
            company,
            client,
            partner_id=partner,
            faults=Faults.parse(faults.get(kind, ()), company.faults),
            out=_collector(lines, partner),
        )
        tasks.append(asyncio.create_task(backends[kind].run()))
    try:
        yield backends
    finally:
        for backend in backends.values():
            backend.stop()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for backend in backends.values():
            await backend.client.close()
        failed = [r for r in results if isinstance(r, BaseException)]
        assert not failed, f"a backend's subscription failed: {failed!r}\n" + "\n".join(lines)
