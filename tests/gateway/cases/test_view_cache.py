"""The kept case view: `CaseViews.get_view` serves a view again only while nothing it was made
from has changed. Every test reads a view until it is kept (the second read builds
nothing), then changes one thing the view depends on (through the API, through another
writer on the same database, or only by letting time pass) and checks that the very
next read shows the change. Also: each read, kept or not, is audited; the triggers of
migration 0007 version consents and agreements; `Store.read_rows` returns the driver's
rows and fails as UNAVAILABLE. On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from coopgate.v1 import (
    admin_pb2,
    audit_pb2,
    audit_pb2_grpc,
    cases_pb2,
    common_pb2,
    consents_pb2,
)
from google.protobuf import timestamp_pb2
from sqlalchemy import (
    Connection,
    Executable,
    bindparam,
    delete,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.cases.view import _VIEW_CASE, CaseViews, ServedView
from gateway.core.caller import Caller, Role
from gateway.core.errors import Unavailable
from gateway.store import Store, create_store, migrate
from gateway.store.migrate import current_revision, downgrade
from gateway.store.schema import (
    case_participants,
    cases,
    change_counters,
    consents,
    partners,
    services,
    sharing_agreements,
    subjects,
)
from gateway.store.statements import driver_statement
from tests.conftest import Api, Stack
from tests.gateway.cases.test_case_view import open_case, own_service, say, summaries
from tests.helpers import error_info

Key = Callable[[str], str]
PURPOSE = "incident-resolution"
SIM_NOTE = "SIM applet locked"
#: What the bank reads of the operator's data in every scenario here.
SIM_FLOW = ("telco-a", "device.sim")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _stamp(at: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(at)
    return stamp


# -- instruments ---------------------------------------------------------------------


@dataclass
class Builds:
    """How many views `CaseViews._make_view` built: a read that adds none was served kept."""

    count: int = 0


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> Builds:
    made = Builds()
    original = CaseViews._make_view

    def counted(
        self: CaseViews, conn: Connection, caller: Caller, case_id: str, purpose: str
    ) -> ServedView:
        made.count += 1
        return original(self, conn, caller, case_id, purpose)

    monkeypatch.setattr(CaseViews, "_make_view", counted)
    return made


@pytest.fixture
async def other_writer(stack: Stack) -> AsyncIterator[Store]:
    """A second store on the gateway's database: a writer the gateway's code knows nothing
    of (another process, an operator's hand-made fix)."""
    store = create_store(stack.settings.effective_database_url)
    try:
        yield store
    finally:
        await store.close()


async def quiesce(stack: Stack, case_id: str) -> None:
    """Stop the case's workflow and wait until its last activities have landed, so that
    nothing but the test changes the case afterwards."""
    await stack.client.get_workflow_handle(case_id).terminate("the test drives this case")
    loop = asyncio.get_running_loop()
    last: int | None = None
    since = loop.time()
    async with asyncio.timeout(5):
        while True:
            async with stack.runtime.store.read() as conn:
                position = (
                    await conn.execute(
                        select(cases.c.last_sequence).where(cases.c.case_id == case_id)
                    )
                ).scalar_one()
            if position != last:
                last, since = position, loop.time()
            elif loop.time() - since >= 0.3:
                return
            await asyncio.sleep(0.05)


async def read(api: Api, case_id: str, purpose: str = PURPOSE) -> cases_pb2.CaseView:
    request = cases_pb2.GetCaseViewRequest(case_id=case_id, purpose=purpose)
    return (await api.cases.GetCaseView(request)).view


def withheld(view: cases_pb2.CaseView) -> list[tuple[str, str, int]]:
    return sorted((w.source_partner_id, w.category, w.count) for w in view.withheld)


def shows_sim(view: cases_pb2.CaseView) -> bool:
    shown = SIM_NOTE in summaries(view)
    # Consistent either way: an item is served or counted as withheld, never both.
    assert shown != ((*SIM_FLOW, 1) in withheld(view)), view
    return shown


def kept(stack: Stack, case_id: str, partner: str = "bank-a", purpose: str = PURPOSE) -> ServedView:
    return stack.runtime.domain.cases.views._views[(case_id, partner, purpose)]


async def current_rows(stack: Stack, case_id: str) -> list[tuple[Any, ...]]:
    return await stack.runtime.store.read_rows(_VIEW_CASE, {"case_id": case_id})


async def audit_trail(stack: Stack, case_id: str) -> list[dict[str, Any]]:
    """Every audit entry of the case, as their canonical bodies, in log order."""
    compliance = audit_pb2_grpc.AuditServiceStub(stack.api("coopgate", Role.COMPLIANCE).channel)
    bodies: list[dict[str, Any]] = []
    token = ""
    while True:
        page = await compliance.QueryAudit(
            audit_pb2.QueryAuditRequest(
                case_id=case_id, page=common_pb2.PageRequest(page_size=1000, page_token=token)
            )
        )
        bodies += [json.loads(entry.canonical) for entry in page.entries]
        token = page.next_page_token
        if not token:
            return bodies


def case_reads(trail: list[dict[str, Any]], reader: str = "bank-a") -> list[dict[str, Any]]:
    return [b for b in trail if b["action"] == "case.read" and b["actor_partner_id"] == reader]


def sim_decisions(trail: list[dict[str, Any]], reader: str = "bank-a") -> list[dict[str, Any]]:
    source, category = SIM_FLOW
    return [
        b
        for b in trail
        if b["action"] == "read"
        and b["actor_partner_id"] == reader
        and b["source_partner_id"] == source
        and b["categories"] == [category]
    ]


async def last_sim_reason(stack: Stack, case_id: str) -> tuple[str, str]:
    """(decision, reason) of the bank's last read of the operator's SIM data."""
    last = sim_decisions(await audit_trail(stack, case_id))[-1]
    return last["decision"], last["reason"]


# -- scenarios -----------------------------------------------------------------------


@dataclass
class Shared:
    """A case the bank opened, with the operator's SIM note on it."""

    service_id: str
    case_id: str
    customer: str
    bank: Api
    telco: Api


async def shared_case(stack: Stack, unique: Key, *, agreement: bool = True) -> Shared:
    agreements = [("telco-a", "bank-a", "device.sim")] if agreement else []
    service_id = await own_service(stack, unique, agreements)
    bank, telco = stack.api("bank-a", Role.ADVISOR), stack.api("telco-a", Role.ADVISOR)
    customer = unique("cust")
    case_id = await open_case(bank, service_id, customer, unique)
    await quiesce(stack, case_id)
    await say(telco, case_id, SIM_NOTE, unique, category="device.sim")
    return Shared(service_id, case_id, customer, bank, telco)


async def grant(
    shared: Shared,
    unique: Key,
    *,
    valid_until: dt.datetime | None = None,
    purposes: tuple[str, ...] = (PURPOSE,),
) -> str:
    request = consents_pb2.GrantConsentRequest(
        idempotency_key=unique("k"),
        customer_local_id=shared.customer,
        source_partner_id="telco-a",
        recipient_partner_ids=["bank-a"],
        categories=["device.sim"],
        purposes=list(purposes),
        channel=common_pb2.CHANNEL_PHONE,
        notice_version="v1",
    )
    if valid_until is not None:
        request.valid_until.CopyFrom(_stamp(valid_until))
    return (await shared.bank.consents.GrantConsent(request)).consent.consent_id


async def read_until_kept(
    builds: Builds, api: Api, case_id: str, purpose: str = PURPOSE
) -> cases_pb2.CaseView:
    """Read twice: the first builds the view, the second is served kept (and the same)."""
    first = await read(api, case_id, purpose)
    before = builds.count
    second = await read(api, case_id, purpose)
    assert builds.count == before, "the second read should have been served the kept view"
    assert second == first
    return second


async def sleep_until(at: dt.datetime) -> None:
    pause = (at - _now()).total_seconds() + 0.1
    assert 0 < pause <= 5, f"the scenario's clock went wrong: {pause:.2f} s to wait"
    await asyncio.sleep(pause)


# -- 1. a change through the API -----------------------------------------------------


async def test_a_consent_granted_then_withdrawn_through_the_api_shows_on_the_next_view(
    stack: Stack, unique: Key, builds: Builds
) -> None:
    shared = await shared_case(stack, unique)
    before = await read_until_kept(builds, shared.bank, shared.case_id)
    assert not shows_sim(before)
    assert await last_sim_reason(stack, shared.case_id) == ("deny", "no-consent")

    consent_id = await grant(shared, unique)
    made = builds.count
    granted = await read(shared.bank, shared.case_id)
    assert shows_sim(granted)
    assert withheld(granted) == []
    assert builds.count == made + 1
    assert await read(shared.bank, shared.case_id) == granted  # kept again
    assert builds.count == made + 1

    await shared.bank.consents.RevokeConsent(
        consents_pb2.RevokeConsentRequest(
            idempotency_key=unique("k"), consent_id=consent_id, channel=common_pb2.CHANNEL_PHONE
        )
    )
    withdrawn = await read(shared.bank, shared.case_id)
    assert not shows_sim(withdrawn)
    assert withheld(withdrawn) == [(*SIM_FLOW, 1)]
    assert await last_sim_reason(stack, shared.case_id) == ("deny", "consent-withdrawn")
    # What did not change is the same as before.
    assert withdrawn.header == granted.header
    assert withdrawn.position == granted.position


async def test_views_are_kept_apart_per_reader_and_purpose(
    stack: Stack, unique: Key, builds: Builds
) -> None:
    """The customer allowed the SIM data for resolution only; the operator may see none
    of the bank's data. Reads alternating between readers and purposes never get one
    another's kept view."""
    shared = await shared_case(stack, unique)
    await grant(shared, unique, purposes=(PURPOSE,))
    for _ in range(2):
        resolution = await read(shared.bank, shared.case_id, PURPOSE)
        diagnosis = await read(shared.bank, shared.case_id, "incident-diagnosis")
        telco = await read(shared.telco, shared.case_id, PURPOSE)
        assert shows_sim(resolution)
        assert not shows_sim(diagnosis)
        assert withheld(diagnosis) == [(*SIM_FLOW, 1)]
        assert resolution.header.summary == "payment refused at the restaurant"
        assert telco.header.summary == ""  # the customer's words stay with the bank
        assert summaries(telco) == [SIM_NOTE]
        assert withheld(telco) == [("bank-a", "interaction.history", 1)]
        assert telco.header.subject_id != resolution.header.subject_id
    assert builds.count == 3  # one per reader and purpose; the second round was kept


# -- 2. a change by another writer: the triggers, not the gateway's code, tell ------


@pytest.mark.parametrize("change", ["withdrawn", "deleted"])
async def test_a_consent_changed_by_another_writer_shows_on_the_next_view(
    stack: Stack, unique: Key, builds: Builds, other_writer: Store, change: str
) -> None:
    shared = await shared_case(stack, unique)
    consent_id = await grant(shared, unique)
    assert shows_sim(await read_until_kept(builds, shared.bank, shared.case_id))
    epoch = stack.runtime.domain.consents.rules.epoch

    async with other_writer.write() as conn:
        if change == "withdrawn":
            result = await conn.execute(
                text("UPDATE consents SET state = :state WHERE consent_id = :consent"),
                {"state": consents_pb2.CONSENT_STATE_WITHDRAWN, "consent": consent_id},
            )
        else:
            result = await conn.execute(
                text("DELETE FROM consents WHERE consent_id = :consent"), {"consent": consent_id}
            )
        assert result.rowcount == 1

    assert stack.runtime.domain.consents.rules.epoch == epoch  # the gateway was not told
    made = builds.count
    after = await read(shared.bank, shared.case_id)
    assert builds.count == made + 1
    assert not shows_sim(after)
    assert withheld(after) == [(*SIM_FLOW, 1)]
    reason = "consent-withdrawn" if change == "withdrawn" else "no-consent"
    assert await last_sim_reason(stack, shared.case_id) == ("deny", reason)


@pytest.mark.parametrize("change", ["ended", "deleted", "narrowed"])
async def test_an_agreement_changed_by_another_writer_shows_on_the_next_view(
    stack: Stack, unique: Key, builds: Builds, other_writer: Store, change: str
) -> None:
    shared = await shared_case(stack, unique)
    await grant(shared, unique)
    assert shows_sim(await read_until_kept(builds, shared.bank, shared.case_id))
    own = sharing_agreements.c.service_id == shared.service_id

    statement: Executable
    async with other_writer.write() as conn:
        if change == "ended":
            statement = update(sharing_agreements).where(own).values(valid_until=_now())
        elif change == "deleted":
            statement = delete(sharing_agreements).where(own)
        else:  # the definition no longer covers the SIM data
            (definition,) = (
                await conn.execute(select(sharing_agreements.c.definition).where(own))
            ).one()
            agreement = admin_pb2.SharingAgreement.FromString(definition)
            agreement.categories[:] = ["payment.card"]
            statement = (
                update(sharing_agreements)
                .where(own)
                .values(definition=agreement.SerializeToString(deterministic=True))
            )
        assert (await conn.execute(statement)).rowcount == 1

    made = builds.count
    after = await read(shared.bank, shared.case_id)
    assert builds.count == made + 1
    assert not shows_sim(after)
    assert withheld(after) == [(*SIM_FLOW, 1)]
    assert await last_sim_reason(stack, shared.case_id) == ("deny", "no-sharing-agreement")


async def test_a_consent_given_by_another_writer_shows_on_the_next_view(
    stack: Stack, unique: Key, builds: Builds, other_writer: Store
) -> None:
    """The other way round: a withheld view kept, then the consent written by hand (as a
    copy of one the customer gave for another of the bank's customers)."""
    shared = await shared_case(stack, unique)
    assert not shows_sim(await read_until_kept(builds, shared.bank, shared.case_id))
    donor = await shared_case(stack, unique)
    donor_consent = await grant(donor, unique)
    assert not shows_sim(await read(shared.bank, shared.case_id))  # another subject's consent

    async with other_writer.write() as conn:
        row = (
            await conn.execute(select(consents).where(consents.c.consent_id == donor_consent))
        ).one()
        subject = (
            await conn.execute(select(cases.c.subject_id).where(cases.c.case_id == shared.case_id))
        ).scalar_one()
        await conn.execute(
            insert(consents).values(
                {**row._asdict(), "consent_id": unique("cns"), "subject_id": subject}
            )
        )

    made = builds.count
    after = await read(shared.bank, shared.case_id)
    assert builds.count == made + 1
    assert shows_sim(after)
    assert await last_sim_reason(stack, shared.case_id) == ("allow", "consent")


# -- 3. time alone -------------------------------------------------------------------


async def test_a_consent_that_expires_is_withheld_from_the_next_view_without_any_write(
    stack: Stack, unique: Key, builds: Builds
) -> None:
    shared = await shared_case(stack, unique)
    until = _now() + dt.timedelta(seconds=2)
    await grant(shared, unique, valid_until=until)
    assert shows_sim(await read_until_kept(builds, shared.bank, shared.case_id))
    assert _now() < until
    assert kept(stack, shared.case_id).holds_until == until

    await sleep_until(until)
    # Nothing was written: only the clock can tell the kept view is over.
    assert await current_rows(stack, shared.case_id) == kept(stack, shared.case_id).rows
    made = builds.count
    after = await read(shared.bank, shared.case_id)
    assert builds.count == made + 1
    assert not shows_sim(after)
    assert await last_sim_reason(stack, shared.case_id) == ("deny", "consent-expired")
    assert kept(stack, shared.case_id).holds_until is None  # nothing left to start or end


async def test_an_agreement_is_shown_from_its_start_and_withheld_after_its_end(
    stack: Stack, unique: Key, builds: Builds
) -> None:
    shared = await shared_case(stack, unique, agreement=False)
    admin = stack.api("coopgate", Role.ADMIN)
    start = _now() + dt.timedelta(seconds=1.5)
    end = start + dt.timedelta(seconds=1.5)
    await admin.admin.DefineSharingAgreement(
        admin_pb2.DefineSharingAgreementRequest(
            idempotency_key=unique("k"),
            agreement=admin_pb2.SharingAgreement(
                source_partner_id="telco-a",
                recipient_partner_id="bank-a",
                service_id=shared.service_id,
                categories=["device.sim"],
                purposes=[PURPOSE],
                valid_from=_stamp(start),
                valid_until=_stamp(end),
            ),
        )
    )
    await grant(shared, unique)  # allowed already: the agreement has not ended

    assert not shows_sim(await read_until_kept(builds, shared.bank, shared.case_id))
    assert await last_sim_reason(stack, shared.case_id) == ("deny", "no-sharing-agreement")
    assert _now() < start
    assert kept(stack, shared.case_id).holds_until == start

    await sleep_until(start)
    assert await current_rows(stack, shared.case_id) == kept(stack, shared.case_id).rows
    started = await read(shared.bank, shared.case_id)
    assert shows_sim(started)
    assert await last_sim_reason(stack, shared.case_id) == ("allow", "consent")
    made = builds.count
    assert await read(shared.bank, shared.case_id) == started
    assert builds.count == made  # kept until the end
    assert _now() < end
    assert kept(stack, shared.case_id).holds_until == end

    await sleep_until(end)
    assert await current_rows(stack, shared.case_id) == kept(stack, shared.case_id).rows
    ended = await read(shared.bank, shared.case_id)
    assert builds.count == made + 1
    assert not shows_sim(ended)
    assert await last_sim_reason(stack, shared.case_id) == ("deny", "no-sharing-agreement")


# -- 4. the case itself --------------------------------------------------------------


async def test_changes_to_the_case_show_on_the_next_view(
    stack: Stack, unique: Key, builds: Builds, other_writer: Store
) -> None:
    shared = await shared_case(stack, unique)
    case_id = shared.case_id
    before = await read_until_kept(builds, shared.bank, case_id)

    # A new interaction, through the API.
    sequence = await say(shared.bank, case_id, "customer called back", unique)
    after = await read(shared.bank, case_id)
    assert after.position == sequence > before.position
    assert len(after.timeline) == len(before.timeline) + 1
    assert summaries(after)[-1] == "customer called back"
    before = await read_until_kept(builds, shared.bank, case_id)

    # A status change, through the gateway's own activity (with its timeline event).
    await stack.runtime.domain.cases.progress.record_status(case_id, "DIAGNOSING")
    after = await read(shared.bank, case_id)
    assert after.header.status == cases_pb2.CASE_STATUS_DIAGNOSING
    assert after.timeline[-1].status_change.status == cases_pb2.CASE_STATUS_DIAGNOSING
    assert after.position == before.position + 1
    before = await read_until_kept(builds, shared.bank, case_id)

    # By another writer, without a timeline event: status, owner, a new participant.
    async with other_writer.write() as conn:
        await conn.execute(
            update(cases)
            .where(cases.c.case_id == case_id)
            .values(status=cases_pb2.CASE_STATUS_OWNED, relationship_owner_id="telco-a")
        )
    after = await read(shared.bank, case_id)
    assert after.header.status == cases_pb2.CASE_STATUS_OWNED
    assert after.header.relationship_owner_id == "telco-a"
    assert (after.position, list(after.timeline)) == (before.position, list(before.timeline))
    await read_until_kept(builds, shared.bank, case_id)

    async with other_writer.write() as conn:
        await conn.execute(
            insert(case_participants).values(
                case_id=case_id,
                partner_id="telco-a",
                role=cases_pb2.PARTICIPANT_ROLE_RESOLVER,
                person_id="tech-7",
            )
        )
    after = await read(shared.bank, case_id)
    assert list(after.header.resolver_ids) == ["telco-a"]
    assert ("telco-a", cases_pb2.PARTICIPANT_ROLE_RESOLVER, "tech-7") in {
        (p.partner_id, p.role, p.person_id) for p in after.participants
    }
    await read_until_kept(builds, shared.bank, case_id)

    # The service redefined (its levels feed the header's deadlines): the view is made again.
    async with other_writer.write() as conn:
        await conn.execute(
            update(services)
            .where(services.c.service_id == shared.service_id)
            .values(version=services.c.version + 1)
        )
    made = builds.count
    await read(shared.bank, case_id)
    assert builds.count == made + 1


async def test_a_partner_taken_off_the_case_is_not_served_its_kept_view(
    stack: Stack, unique: Key, builds: Builds, other_writer: Store
) -> None:
    shared = await shared_case(stack, unique)
    await read_until_kept(builds, shared.telco, shared.case_id)
    async with other_writer.write() as conn:
        await conn.execute(
            delete(case_participants).where(
                case_participants.c.case_id == shared.case_id,
                case_participants.c.partner_id == "telco-a",
            )
        )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read(shared.telco, shared.case_id)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).reason == "CASE_NOT_FOUND"


# -- 5. every read is audited, kept or not --------------------------------------------


async def test_every_read_is_audited_whether_its_view_was_kept_or_built(
    stack: Stack, unique: Key, builds: Builds
) -> None:
    shared = await shared_case(stack, unique)
    consent_id = await grant(shared, unique)
    first = await read(shared.bank, shared.case_id)
    trail = await audit_trail(stack, shared.case_id)
    reads, decisions = len(case_reads(trail)), len(sim_decisions(trail))

    made = builds.count
    for _ in range(3):
        assert await read(shared.bank, shared.case_id) == first
    assert builds.count == made  # all three kept
    await say(shared.bank, shared.case_id, "customer called back", unique)
    rebuilt = await read(shared.bank, shared.case_id)
    assert builds.count == made + 1

    trail = await audit_trail(stack, shared.case_id)
    new_reads = case_reads(trail)[reads:]
    new_decisions = sim_decisions(trail)[decisions:]
    assert len(new_reads) == len(new_decisions) == 4
    served = len(first.timeline)
    assert [r["reason"] for r in new_reads] == [f"{served} items served, 0 withheld"] * 3 + [
        f"{served + 1} items served, 0 withheld"
    ]
    assert {(d["decision"], d["reason"], d["consent_id"]) for d in new_decisions} == {
        ("allow", "consent", consent_id)
    }
    assert len(rebuilt.timeline) == served + 1


async def test_each_reader_person_of_a_kept_view_is_audited_as_itself(
    stack: Stack, unique: Key, builds: Builds
) -> None:
    """The records a kept view keeps are per person: advisors of the same partner
    reading the same kept view are each named in their own records."""
    shared = await shared_case(stack, unique)
    await grant(shared, unique)
    request = cases_pb2.GetCaseViewRequest(case_id=shared.case_id, purpose=PURPOSE)
    await shared.bank.cases.GetCaseView(request, metadata=(("x-coopgate-person", "ada"),))
    made = builds.count
    for person in ("bob", "ada", "bob"):
        await shared.bank.cases.GetCaseView(request, metadata=(("x-coopgate-person", person),))
    assert builds.count == made  # one view, kept, for all four reads
    trail = await audit_trail(stack, shared.case_id)
    assert [r["actor_person_id"] for r in case_reads(trail)][-4:] == ["ada", "bob", "ada", "bob"]
    assert [d["actor_person_id"] for d in sim_decisions(trail)][-4:] == [
        "ada",
        "bob",
        "ada",
        "bob",
    ]


async def test_readers_finding_the_view_out_of_date_together_make_it_once(
    stack: Stack, unique: Key, builds: Builds
) -> None:
    """After a change, concurrent readers of the same view wait for the one being made
    from the rows they read instead of each making their own. (On SQLite a making
    never yields the loop, so readers find it made; on PostgreSQL they overlap.)"""
    shared = await shared_case(stack, unique)
    await grant(shared, unique)
    before = await read_until_kept(builds, shared.bank, shared.case_id)
    await say(shared.bank, shared.case_id, "customer called back", unique)
    made = builds.count
    views = await asyncio.gather(*(read(shared.bank, shared.case_id) for _ in range(24)))
    assert builds.count == made + 1
    assert all(view == views[0] for view in views)
    assert len(views[0].timeline) == len(before.timeline) + 1
    trail = await audit_trail(stack, shared.case_id)
    assert len(case_reads(trail)) >= 24 + 2  # each reading audited, shared making or not


# -- 6. migration 0007 ---------------------------------------------------------------


async def _schema_state(store: Store) -> tuple[set[str], set[str], set[str]]:
    """(tables, columns of subjects, triggers and trigger functions)."""

    def look(conn: Connection) -> tuple[set[str], set[str], set[str]]:
        inspector = inspect(conn)
        tables = set(inspector.get_table_names())
        columns = {c["name"] for c in inspector.get_columns("subjects")}
        if conn.dialect.name == "sqlite":
            sql = "SELECT name FROM sqlite_master WHERE type = 'trigger'"
        else:
            sql = (
                "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal UNION ALL "
                "SELECT proname FROM pg_proc WHERE proname LIKE 'coopgate%'"
            )
        return tables, columns, set(conn.execute(text(sql)).scalars())

    async with store.engine.connect() as conn:
        return await conn.run_sync(look)


def _consent(consent_id: str, subject_id: str) -> dict[str, Any]:
    now = _now()
    return {
        "consent_id": consent_id,
        "subject_id": subject_id,
        "source_partner_id": "p-a",
        "collected_by_partner_id": "p-b",
        "state": consents_pb2.CONSENT_STATE_GIVEN,
        "valid_from": now,
        "definition": b"",
        "created_at": now,
        "updated_at": now,
    }


def _agreement(agreement_id: str, now: dt.datetime) -> dict[str, Any]:
    return {
        "agreement_id": agreement_id,
        "source_partner_id": "p-a",
        "recipient_partner_id": "p-b",
        "service_id": "svc",
        "definition": b"",
        "valid_from": now,
    }


async def _seed(conn: AsyncConnection, *subject_ids: str) -> None:
    """Two partners, a service and the given subjects (for consents and agreements)."""
    now = _now()
    await conn.execute(
        insert(partners),
        [
            {"partner_id": p, "display_name": p, "kind": 1, "created_at": now}
            for p in ("p-a", "p-b")
        ],
    )
    await conn.execute(
        insert(services).values(service_id="svc", version=1, definition=b"", updated_at=now)
    )
    if subject_ids:
        await conn.execute(
            insert(subjects), [{"subject_id": s, "created_at": now} for s in subject_ids]
        )


async def _versions(store: Store) -> tuple[int, int, int]:
    """(consents version of subject s1, of subject s2, the agreements counter)."""
    async with store.read() as conn:
        rows = await conn.execute(select(subjects.c.subject_id, subjects.c.consents_version))
        by_subject: dict[str, int] = {subject: version for subject, version in rows}
        agreements = (
            await conn.execute(
                select(change_counters.c.value).where(
                    change_counters.c.name == "sharing_agreements"
                )
            )
        ).scalar_one()
    return by_subject["s1"], by_subject["s2"], agreements


async def test_revision_0007_downgrades_and_upgrades_again(store: Store, database_url: str) -> None:
    sqlite = database_url.startswith("sqlite")
    new_triggers = (
        {
            f"tr_{table}_{op}_version"
            for table in ("consents", "sharing_agreements")
            for op in ("insert", "update", "delete")
        }
        if sqlite
        else {
            "tr_consents_version",
            "tr_consents_truncated",
            "tr_sharing_agreements_version",
            "coopgate_consents_version",
            "coopgate_consents_truncated",
            "coopgate_sharing_agreements_version",
        }
    )
    async with store.write() as conn:
        await _seed(conn, "s1", "s2")
    tables, columns, triggers = await _schema_state(store)
    assert "change_counters" in tables
    assert "consents_version" in columns
    assert new_triggers <= triggers

    await downgrade(store, "0006")
    assert await current_revision(store) == "0006"
    tables, columns, old_triggers = await _schema_state(store)
    assert "change_counters" not in tables
    assert "consents_version" not in columns
    assert not new_triggers & old_triggers
    # Without the triggers, consents are written as before 0007.
    async with store.write() as conn:
        await conn.execute(insert(consents).values(_consent("c0", "s1")))

    await migrate(store, "0007")
    assert await current_revision(store) == "0007"
    tables, columns, triggers = await _schema_state(store)
    assert "change_counters" in tables
    assert "consents_version" in columns
    assert triggers == old_triggers | new_triggers
    assert await _versions(store) == (0, 0, 0)  # existing rows start at 0
    # ...and the triggers work after the round trip.
    async with store.write() as conn:
        await conn.execute(delete(consents).where(consents.c.consent_id == "c0"))
    assert await _versions(store) == (1, 0, 0)


async def test_consent_and_agreement_versions_follow_every_change(store: Store) -> None:
    now = _now()
    async with store.write() as conn:
        await _seed(conn, "s1", "s2")
    assert await _versions(store) == (0, 0, 0)

    async def change(statement: Executable) -> tuple[int, int, int]:
        async with store.write() as conn:
            assert (await conn.execute(statement)).rowcount == 1
        return await _versions(store)

    consent = consents.c.consent_id == "c1"
    assert await change(insert(consents).values(_consent("c1", "s1"))) == (1, 0, 0)
    assert await change(
        update(consents).where(consent).values(state=consents_pb2.CONSENT_STATE_WITHDRAWN)
    ) == (2, 0, 0)
    assert await change(
        update(consents).where(consent).values(valid_until=now + dt.timedelta(days=1))
    ) == (3, 0, 0)
    # Moved to another subject: both subjects' decisions change.
    assert await change(update(consents).where(consent).values(subject_id="s2")) == (4, 1, 0)
    assert await change(delete(consents).where(consent)) == (4, 2, 0)

    agreement = sharing_agreements.c.agreement_id == "a1"
    assert await change(insert(sharing_agreements).values(_agreement("a1", now))) == (4, 2, 1)
    assert await change(update(sharing_agreements).where(agreement).values(valid_until=now)) == (
        4,
        2,
        2,
    )
    assert await change(delete(sharing_agreements).where(agreement)) == (4, 2, 3)

    # A change that is rolled back leaves no trace in the versions either.
    with pytest.raises(RuntimeError):
        async with store.write() as conn:
            await conn.execute(insert(consents).values(_consent("c2", "s1")))
            raise RuntimeError("abandon the transaction")
    assert await _versions(store) == (4, 2, 3)


async def test_truncating_consents_or_agreements_changes_the_versions_on_postgresql(
    store: Store, database_url: str
) -> None:
    if database_url.startswith("sqlite"):
        # SQLite has no TRUNCATE: a DELETE without WHERE fires the row triggers (above).
        async with store.write() as conn:
            await _seed(conn, "s1", "s2")
            await conn.execute(insert(consents).values(_consent("c1", "s1")))
            await conn.execute(delete(consents))
        assert await _versions(store) == (2, 0, 0)
        return
    now = _now()
    async with store.write() as conn:
        await _seed(conn, "s1", "s2")
        await conn.execute(insert(consents).values(_consent("c1", "s1")))
        await conn.execute(insert(sharing_agreements).values(_agreement("a1", now)))
    assert await _versions(store) == (1, 0, 1)
    async with store.write() as conn:
        await conn.exec_driver_sql("TRUNCATE consents CASCADE")
    # Every subject's consents changed (which subjects had some is gone with them).
    assert await _versions(store) == (2, 1, 1)
    async with store.write() as conn:
        await conn.exec_driver_sql("TRUNCATE sharing_agreements")
    assert await _versions(store) == (2, 1, 2)


# -- 7. Store.read_rows --------------------------------------------------------------


async def test_read_rows_returns_the_drivers_rows(store: Store, database_url: str) -> None:
    at = dt.datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=dt.UTC)
    async with store.write() as conn:
        await conn.execute(
            insert(partners).values(partner_id="p-a", display_name="A", kind=3, created_at=at)
        )
    statement = select(partners.c.partner_id, partners.c.kind, partners.c.created_at).where(
        partners.c.partner_id == bindparam("partner")
    )
    rows = await store.read_rows(statement, {"partner": "p-a"})
    assert [type(r) for r in rows] == [tuple]
    ((partner, kind, created),) = rows
    assert (partner, kind) == ("p-a", 3)
    if database_url.startswith("sqlite"):
        assert created == "2026-01-02 03:04:05.678000"  # as stored: no type processing
    else:
        assert created == at
    # The same rows as the statement run on the driver inside a read transaction (what a
    # kept view is compared with).
    inside = await store.run_read(
        lambda conn: driver_statement(statement, conn.dialect).rows(conn, {"partner": "p-a"})
    )
    assert inside == rows
    assert await store.read_rows(statement, {"partner": "nobody"}) == []
    counter = select(change_counters.c.name, change_counters.c.value)
    assert await store.read_rows(counter, {}) == [("sharing_agreements", 0)]
    # Outside any transaction: the next call sees a write committed in between.
    async with store.write() as conn:
        await conn.execute(update(partners).values(kind=4))
    assert [r[1] for r in await store.read_rows(statement, {"partner": "p-a"})] == [4]


@pytest.mark.parametrize("damage", ["directory removed", "not a database"])
async def test_read_rows_on_sqlite_is_unavailable_when_the_file_cannot_be_read(
    tmp_path: Path, damage: str
) -> None:
    directory = tmp_path / "data"
    directory.mkdir()
    path = directory / "store.db"
    if damage == "directory removed":
        directory.rmdir()
    else:
        path.write_bytes(b"this is not an SQLite database, just some text " * 200)
    store = create_store(f"sqlite:///{path}")
    try:
        for _ in range(2):  # and again: the failure is not left behind as a broken state
            with pytest.raises(Unavailable) as caught:
                await store.read_rows(select(partners.c.partner_id), {})
            assert caught.value.reason == "STORE_UNAVAILABLE"
            assert isinstance(caught.value.__cause__, sqlite3.Error)
    finally:
        await store.close()
