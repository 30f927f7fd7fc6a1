"""Issue 18 from outside, as it was found: `coopgate up`, a case opened by the bank
with unique markers in the customer id, summary and an advisor's note, `EraseCustomer`,
the erasure notice acknowledged on the bank's work stream, the stack stopped cleanly:
no file of the data directory (the store with its WAL, the Temporal dev server's
database, logs, keys) holds any marker."""

from __future__ import annotations

import asyncio
import subprocess
import uuid

from coopgate.v1 import (
    cases_pb2,
    cases_pb2_grpc,
    common_pb2,
    identity_pb2,
    identity_pb2_grpc,
    work_pb2,
    work_pb2_grpc,
)

from partners import PartnerCredentials, secure_channel
from tests.gateway.test_up import BIN, UpProcess, stop, up, wait_for_file, wait_serving

__all__ = ["up"]  # the fixture, used here


def _partner_credentials(process: UpProcess) -> PartnerCredentials:
    subprocess.run(
        [
            str(BIN / "coopgate"),
            *("ca", "issue", "--partner", "bank-a", "--role", "partner"),
            *("--data-dir", str(process.data_dir)),
        ],
        check=True,
        env=process.env,
        capture_output=True,
    )
    clients = process.data_dir / "pki" / "clients"
    return PartnerCredentials(
        cert=clients / "bank-a-partner.pem",
        key=clients / "bank-a-partner.key",
        ca=process.data_dir / "pki" / "ca.pem",
    )


async def test_after_erasure_no_file_of_the_data_dir_holds_the_customer(up: UpProcess) -> None:
    tag = uuid.uuid4().hex[:16]
    markers = {
        "local_id": f"L{tag}-customer",
        "summary": f"S{tag} phone payment refused",
        "note": f"N{tag} advisor's note",
    }
    target = f"127.0.0.1:{up.gateway_port}"
    first = up.start()
    try:
        await wait_for_file(up.data_dir / "pki" / "ca.pem")
        advisor, backend = up.credentials(), _partner_credentials(up)
        await wait_serving(target, advisor)
        async with secure_channel(target, advisor) as channel:
            cases = cases_pb2_grpc.CaseServiceStub(channel)
            opened = await cases.OpenCase(
                cases_pb2.OpenCaseRequest(
                    idempotency_key=f"open-{tag}",
                    service_id="nfc-payment",
                    customer_local_id=markers["local_id"],
                    channel=common_pb2.CHANNEL_PHONE,
                    summary=markers["summary"],
                )
            )
            await cases.AppendInteraction(
                cases_pb2.AppendInteractionRequest(
                    idempotency_key=f"note-{tag}",
                    case_id=opened.case_id,
                    interaction=cases_pb2.Interaction(
                        channel=common_pb2.CHANNEL_PHONE, summary=markers["note"]
                    ),
                )
            )
            await asyncio.sleep(1)  # the workflow queues its first notifications
            await identity_pb2_grpc.IdentityServiceStub(channel).EraseCustomer(
                identity_pb2.EraseCustomerRequest(
                    idempotency_key=f"erase-{tag}", customer_local_id=markers["local_id"]
                )
            )
        async with secure_channel(target, backend) as channel:
            work = work_pb2_grpc.PartnerWorkServiceStub(channel)
            async with asyncio.timeout(30):
                call = work.Subscribe(work_pb2.SubscribeRequest(max_in_flight=100))
                async for response in call:
                    if response.item.HasField("erasure_notice"):
                        notice = response.item.erasure_notice
                        assert notice.customer_local_id == markers["local_id"]
                        assert notice.case_ids == [opened.case_id]
                        assert notice.reason == work_pb2.ERASURE_REASON_CUSTOMER_REQUEST
                        call.cancel()
                        await work.Acknowledge(
                            work_pb2.AcknowledgeRequest(
                                idempotency_key=f"ack-{tag}", work_ids=[response.item.work_id]
                            )
                        )
                        break
    finally:
        code = await stop(first)
    assert code == 0, up.log.read_text()

    searched = sorted(p for p in up.data_dir.rglob("*") if p.is_file())
    assert {"coopgate.db", "temporal.db"} <= {p.name for p in searched}
    found = {
        (name, str(path.relative_to(up.data_dir)))
        for path in searched
        for name, marker in markers.items()
        if marker.encode() in path.read_bytes()
    }
    assert found == set(), found
