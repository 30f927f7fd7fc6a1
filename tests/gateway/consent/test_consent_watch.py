"""A consent change reaches the case watches it concerns: a watch that asks for
``consent_changes`` receives a response carrying ``consent_change`` when a consent of the
case's customer naming the watcher's company is granted and when it is withdrawn (the
store's change notification wakes it; nothing on the client polls), after which the
view read again shows, then withholds, the source's items. A watch that did not ask,
or a consent for another recipient, sends nothing of the kind."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest
from coopgate.v1 import admin_pb2, cases_pb2, common_pb2, consents_pb2
from google.protobuf import timestamp_pb2

from tests.conftest import Stack
from tests.gateway.consent.test_consent_api import (
    Key,
    Scene,
    grant,
    telco_items,
    view,
)

PURPOSE = "incident-resolution"
#: Seconds a response may take: well under the watch's idle wake-up (5 s), so only the
#: notification can deliver it in time.
WITHIN = 4.0


@pytest.fixture(autouse=True)
async def listening(stack: Stack) -> AsyncIterator[None]:
    """The gateway listening for other processes' changes throughout (PostgreSQL): its
    listener starts with the first subscriber and, once connected, wakes every
    subscriber in case a change went by unheard, which a watch then reports as a
    consent change. Kept up, no such wake falls inside a test."""
    changes = stack.runtime.store.changes
    with changes.subscribe("test", "listening"):
        await changes.listening()
        yield


Watch = grpc.aio.UnaryStreamCall[cases_pb2.WatchCaseRequest, cases_pb2.WatchCaseResponse]


def watch(scene: Scene, after: int, consent_changes: bool) -> Watch:
    return scene.bank.cases.WatchCase(
        cases_pb2.WatchCaseRequest(
            case_id=scene.case_id,
            purpose=PURPOSE,
            after_sequence=after,
            consent_changes=consent_changes,
        )
    )


async def next_response(call: Watch) -> cases_pb2.WatchCaseResponse:
    """The next consent change or interaction (the gateway's own items, which its
    workflow adds meanwhile, are skipped)."""
    async with asyncio.timeout(WITHIN):
        while True:
            response = await call.read()
            assert isinstance(response, cases_pb2.WatchCaseResponse), response
            if response.HasField("consent_change") or response.item.HasField("interaction"):
                return response


async def bank_says(scene: Scene, unique: Key, summary: str) -> int:
    response = await scene.bank.cases.AppendInteraction(
        cases_pb2.AppendInteractionRequest(
            idempotency_key=unique("k"),
            case_id=scene.case_id,
            interaction=cases_pb2.Interaction(channel=common_pb2.CHANNEL_PHONE, summary=summary),
        )
    )
    return response.sequence


async def test_a_watch_is_told_of_a_grant_and_of_a_withdrawal(scene: Scene, unique: Key) -> None:
    start = await view(scene.bank, scene.case_id)
    assert telco_items(start) == []
    call = watch(scene, start.position, consent_changes=True)
    try:
        await asyncio.sleep(0.3)  # the watch subscribed (its first read is done)
        granted = await scene.bank.consents.GrantConsent(grant(scene, unique))
        told = await next_response(call)
        assert told.HasField("consent_change")
        assert not told.HasField("item")
        assert told.header.case_id == scene.case_id
        assert told.consent_change.noticed_at.seconds > 0
        assert telco_items(await view(scene.bank, scene.case_id)) == [
            "SIM applet locked after OTA update"
        ]

        await scene.bank.consents.RevokeConsent(
            consents_pb2.RevokeConsentRequest(
                idempotency_key=unique("k"),
                consent_id=granted.consent.consent_id,
                channel=common_pb2.CHANNEL_PHONE,
            )
        )
        told = await next_response(call)
        assert told.HasField("consent_change")
        assert telco_items(await view(scene.bank, scene.case_id)) == []

        # The watch goes on after the same position: the next item is the next one.
        said = await bank_says(scene, unique, "customer called back")
        following = await next_response(call)
        assert following.item.sequence == said
    finally:
        call.cancel()


async def test_no_consent_change_for_a_watch_that_did_not_ask_or_another_recipient(
    scene: Scene, unique: Key
) -> None:
    start = await view(scene.bank, scene.case_id)
    asked = watch(scene, start.position, consent_changes=True)
    plain = watch(scene, start.position, consent_changes=False)
    try:
        await asyncio.sleep(0.3)
        # A consent naming the acquirer, not the bank: the bank's watch is not told.
        await scene.admin.admin.DefineSharingAgreement(
            admin_pb2.DefineSharingAgreementRequest(
                idempotency_key=unique("k"),
                agreement=admin_pb2.SharingAgreement(
                    agreement_id=unique("agr"),
                    source_partner_id="telco-a",
                    recipient_partner_id="acquirer-a",
                    service_id=scene.service_id,
                    categories=["device.sim"],
                    purposes=[PURPOSE],
                ),
            )
        )
        await scene.bank.consents.GrantConsent(
            grant(scene, unique, recipient_partner_ids=["acquirer-a"])
        )
        said = await bank_says(scene, unique, "after the acquirer's consent")
        for stream in (asked, plain):
            first = await next_response(stream)
            assert first.item.sequence == said, first
        # A consent naming the bank: only the watch that asked is told.
        await scene.bank.consents.GrantConsent(grant(scene, unique))
        assert (await next_response(asked)).HasField("consent_change")
        said = await bank_says(scene, unique, "after the bank's consent")
        following = await next_response(plain)
        assert following.item.sequence == said, following
    finally:
        asked.cancel()
        plain.cancel()


async def test_a_watch_is_told_when_a_consent_ends_by_its_own_date(
    scene: Scene, unique: Key
) -> None:
    """A consent given until a moment a few seconds ahead: at that moment, with nothing
    written, the watch says the consent changed and the view withholds the source's
    items again."""
    start = await view(scene.bank, scene.case_id)
    call = watch(scene, start.position, consent_changes=True)
    try:
        await asyncio.sleep(0.3)
        until = timestamp_pb2.Timestamp()
        until.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2))
        await scene.bank.consents.GrantConsent(grant(scene, unique, valid_until=until))
        assert (await next_response(call)).HasField("consent_change")  # the grant
        assert telco_items(await view(scene.bank, scene.case_id)) == [
            "SIM applet locked after OTA update"
        ]
        ended = await next_response(call)  # within WITHIN of the grant's answer
        assert ended.HasField("consent_change")
        assert ended.consent_change.noticed_at.ToDatetime(dt.UTC) >= until.ToDatetime(dt.UTC)
        assert telco_items(await view(scene.bank, scene.case_id)) == []
    finally:
        call.cancel()
