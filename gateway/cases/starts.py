"""Every opened case gets its incident workflow, even when the gateway stops between
the case's commit and the workflow's start (a transactional outbox).

OpenCase writes the start to make (`workflow_starts`) in the case's own transaction,
then starts the workflow. Once the start returned, the row is no longer needed: the
process notes the case and deletes the rows noted within a second in one statement. A
row still there after ``grace`` seconds is a start that may never have happened (the
process stopped, Temporal was unreachable and the caller did not retry): the sweep,
run by every gateway and worker at start and every ``interval`` seconds, starts it.
Starting is idempotent (workflow id = case id; a running workflow is kept, a finished
one is not started again), so replicas sweeping the same rows at once are safe: they
make the same start twice, never two workflows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from coopgate.v1 import cases_pb2
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.cases.incidents import Incidents
from gateway.core.errors import CoopgateError
from gateway.store import Store
from gateway.store.schema import cases, workflow_starts
from gateway.store.statements import execute

log = logging.getLogger(__name__)

#: Rows looked at per sweep (the sweep goes on at the next one).
SWEEP_BATCH = 200
#: How soon after a start its row is deleted (with every other start noted meanwhile,
#: in one statement): well within ``grace``, so that other processes' sweeps do not
#: make those starts again.
FLUSH_SECONDS = 1.0


#: A start to make, noted in the transaction that opens the case: built once.
_RECORD = insert(workflow_starts)


class WorkflowStarts:
    """The starts of the cases' incident workflows still to make, and their sweep."""

    def __init__(self, store: Store, incidents: Incidents, *, grace: float = 10.0) -> None:
        self.store = store
        self.incidents = incidents
        self.grace = grace
        self._started: set[str] = set()
        self._flushing: asyncio.Task[None] | None = None
        #: Workflows this process's sweeps started (for tests and diagnostics).
        self.swept = 0

    async def record(self, conn: AsyncConnection, case_id: str, now: dt.datetime) -> None:
        """In the transaction that opens ``case_id``: its workflow is to be started."""
        await execute(conn, _RECORD, {"case_id": case_id, "created_at": now})

    def started(self, case_id: str) -> None:
        """The workflow of ``case_id`` was started: its row goes within ``FLUSH_SECONDS``."""
        self._started.add(case_id)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(
                self._flush_soon(), name="workflow-starts-flush"
            )

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_SECONDS)
        try:
            await self._flush()
        except CoopgateError as exc:  # kept for the next flush or sweep
            log.warning("started workflows' rows not deleted yet: %s", exc)

    async def _flush(self) -> None:
        done, self._started = self._started, set()
        if not done:
            return
        try:
            async with self.store.write() as conn:
                await conn.execute(
                    delete(workflow_starts).where(workflow_starts.c.case_id.in_(sorted(done)))
                )
        except CoopgateError:
            self._started |= done  # the store is away: next time
            raise

    async def sweep(self) -> int:
        """Start the workflows of rows older than ``grace``; returns how many were
        started (or found started). A workflow engine that cannot be reached ends the
        sweep early: the rows stay for the next one."""
        await self._flush()
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.grace)
        async with self.store.read() as conn:
            rows = (
                await conn.execute(
                    select(
                        workflow_starts.c.case_id,
                        cases.c.service_id,
                        cases.c.first_contact_partner_id,
                        cases.c.status,
                    )
                    .join(cases, cases.c.case_id == workflow_starts.c.case_id)
                    .where(workflow_starts.c.created_at <= cutoff)
                    .order_by(workflow_starts.c.created_at)
                    .limit(SWEEP_BATCH)
                )
            ).all()
        handled: list[str] = []
        try:
            for case_id, service_id, first_contact, status in rows:
                if status != cases_pb2.CASE_STATUS_CLOSED:
                    await self.incidents.ensure_started(case_id, service_id, first_contact)
                    self.swept += 1
                handled.append(case_id)
        finally:
            if handled:
                log.warning("started %d incident workflows of cases left without", len(handled))
                async with self.store.write() as conn:
                    await conn.execute(
                        delete(workflow_starts).where(workflow_starts.c.case_id.in_(handled))
                    )
        return len(handled)

    async def run(self, interval: float) -> None:
        """Sweep now and every ``interval`` seconds, until cancelled."""
        while True:
            try:
                await self.sweep()
            except CoopgateError as exc:  # store or workflow engine away: next time
                log.warning("workflow start sweep did not finish: %s", exc)
            except Exception:
                log.exception("workflow start sweep failed; retrying")
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Delete the rows of the starts noted so far (before the store closes)."""
        if self._flushing is not None:
            self._flushing.cancel()
            self._flushing = None
        try:
            await self._flush()
        except CoopgateError as exc:  # swept later by any process: a start made again
            log.warning("started workflows' rows not deleted: %s", exc)
