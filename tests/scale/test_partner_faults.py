"""Partners that misbehave do not slow the others. Three partners of one service hang
(a work stream never read and a TLS connection that never says hello), drop their
stream on every item, and answer garbage (a finding out of the contract, and bytes
that are no protobuf at all); meanwhile the partners of another service, all
healthy, take their incidents to an owner while the misbehaving service's incidents
still wait for the hanging partner's diagnosis deadline."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
from coopgate.v1 import admin_pb2, cases_pb2, work_pb2

from gateway.core.caller import Role
from tests.conftest import Api, Stack
from tests.scale.cluster import open_request, until_status
from tests.scale.counting import CountingPartner

#: The misbehaving service's diagnosis deadline: the hang holds its incidents this long.
HANG_SECONDS = 40
HEALTHY_CASES = 6


async def _service(
    admin: Api, base: str, name: str, partners: dict[str, str], deadline: float
) -> str:
    service = (
        await admin.admin.GetService(admin_pb2.GetServiceRequest(service_id=base), timeout=20)
    ).service
    service.service_id = name
    for component in service.components:
        component.partner_id = partners[component.partner_id]
        component.diagnosis_deadline.FromTimedelta(timedelta(seconds=deadline))
    if service.ownership_policy.host_partner_id:
        service.ownership_policy.host_partner_id = partners[
            service.ownership_policy.host_partner_id
        ]
    service.ownership_policy.acceptance_deadline.FromTimedelta(timedelta(seconds=20))
    await admin.admin.DefineService(
        admin_pb2.DefineServiceRequest(idempotency_key=f"define-{name}", service=service),
        timeout=20,
    )
    return name


class DroppingPartner(CountingPartner):
    """Takes each item and drops the stream before acknowledging it."""

    async def run(self) -> None:
        while True:
            call = self.api.work.Subscribe(work_pb2.SubscribeRequest(max_in_flight=8))
            self.streams += 1
            with contextlib.suppress(grpc.aio.AioRpcError):
                async for response in call:
                    self.seen[response.item.WhichOneof("payload") or ""] += 1
                    break
            call.cancel()
            await asyncio.sleep(0.05)


class GarbagePartner(CountingPartner):
    """Answers every diagnosis request with a finding out of the contract, and sends
    bytes that do not decode, then acknowledges."""

    refusals: list[grpc.StatusCode]

    async def handle(self, item: work_pb2.WorkItem) -> None:
        if not hasattr(self, "refusals"):
            self.refusals = []
        if item.HasField("diagnosis_request"):
            request = item.diagnosis_request
            bad = cases_pb2.SubmitFindingRequest(
                idempotency_key=f"junk-{request.request_id}",
                case_id=request.case_id,
                request_id=request.request_id,
                finding=cases_pb2.Finding(component=request.component, confidence=7.5),
            )
            raw = self.api.channel.unary_unary(
                "/coopgate.v1.CaseService/SubmitFinding",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            for send in (
                lambda: self.api.cases.SubmitFinding(bad, timeout=10),
                lambda: raw(b"\xff\xfe not a protobuf \x00" * 50, timeout=10),
            ):
                try:
                    await send()
                except grpc.aio.AioRpcError as exc:
                    self.refusals.append(exc.code())
        await self.api.work.Acknowledge(
            work_pb2.AcknowledgeRequest(
                idempotency_key=f"ack-{item.work_id}", work_ids=[item.work_id]
            ),
            timeout=10,
        )


@contextlib.asynccontextmanager
async def hanging(stack: Stack, partner: str) -> AsyncIterator[None]:
    """A work stream opened and never read, and a TCP connection that never sends its
    TLS hello."""
    api = stack.api(partner)
    call = api.work.Subscribe(work_pb2.SubscribeRequest(max_in_flight=1000))
    host, _, port = stack.target.rpartition(":")
    silent = socket.create_connection((host, int(port)))
    try:
        yield
    finally:
        call.cancel()
        silent.close()


async def test_hanging_dropping_and_garbage_partners_do_not_slow_the_others(
    stack: Stack,
) -> None:
    tag = uuid.uuid4().hex[:6]
    admin = stack.api("coopgate", Role.ADMIN)
    names = {
        "telco-a": f"hang-{tag}",
        "acquirer-a": f"drop-{tag}",
        "handset-a": f"junk-{tag}",
        "bank-a": f"bank-{tag}",
        "thermo-a": f"thermo-{tag}",
        "energy-a": f"energy-{tag}",
        "isp-a": f"isp-{tag}",
    }
    for partner in names.values():
        await admin.admin.RegisterPartner(
            admin_pb2.RegisterPartnerRequest(
                idempotency_key=f"register-{partner}",
                partner_id=partner,
                display_name=partner,
                kind=admin_pb2.PARTNER_KIND_OPERATOR,
            ),
            timeout=20,
        )
    troubled = await _service(admin, "nfc-payment", f"nfc-{tag}", names, HANG_SECONDS)
    healthy = await _service(admin, "smart-heating", f"heat-{tag}", names, HANG_SECONDS)
    case_ids: set[str] = set()

    def make(
        cls: type[CountingPartner], name: str, *, faulty: bool = False, accepts: bool = False
    ) -> CountingPartner:
        return cls(stack.api(names[name]), names[name], case_ids, faulty=faulty, accepts=accepts)

    running = [
        make(CountingPartner, "bank-a", accepts=True),
        make(DroppingPartner, "acquirer-a"),
        make(GarbagePartner, "handset-a"),
        make(CountingPartner, "thermo-a", faulty=True),
        make(CountingPartner, "energy-a", accepts=True),
        make(CountingPartner, "isp-a"),
    ]
    tasks = [asyncio.create_task(p.run()) for p in running]
    try:
        async with hanging(stack, names["telco-a"]):
            bank = stack.api(names["bank-a"], Role.ADVISOR)
            energy = stack.api(names["energy-a"], Role.ADVISOR)
            stuck = (
                await bank.cases.OpenCase(
                    open_request(troubled, f"open-{tag}-stuck", f"c-{tag}-stuck"), timeout=20
                )
            ).case_id
            case_ids.add(stuck)
            opened = []
            for i in range(HEALTHY_CASES):
                reply = await energy.cases.OpenCase(
                    open_request(healthy, f"open-{tag}-{i}", f"c-{tag}-{i}"), timeout=20
                )
                case_ids.add(reply.case_id)
                opened.append(reply.case_id)
            finals = await asyncio.gather(
                *(
                    until_status(energy, case, cases_pb2.CASE_STATUS_OWNED, timeout=HANG_SECONDS)
                    for case in opened
                )
            )
            # The healthy incidents have their owner while the troubled one still waits
            # for the hanging partner.
            troubled_now = await until_status(bank, stuck, cases_pb2.CASE_STATUS_DIAGNOSING)
            assert troubled_now.header.status == cases_pb2.CASE_STATUS_DIAGNOSING
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert {v.header.relationship_owner_id for v in finals} == {names["energy-a"]}
    by = {p.partner: p for p in running}
    for name in ("thermo-a", "energy-a", "isp-a"):
        assert by[names[name]].seen["diagnosis_request"] == HEALTHY_CASES, name
        assert by[names[name]].again_after_ack == []
    dropping, garbage = by[names["acquirer-a"]], by[names["handset-a"]]
    assert dropping.streams >= 2  # it did drop and come back
    assert isinstance(garbage, GarbagePartner)
    assert set(garbage.refusals) == {grpc.StatusCode.INVALID_ARGUMENT}, garbage.refusals
