"""The case header names the customer by the reader's own id for them (the one it
opened the case with, or linked): never by another partner's; a reader with none
sees its pseudonym only. The kept view follows a new link at once."""

from __future__ import annotations

from collections.abc import Callable

from coopgate.v1 import cases_pb2, common_pb2, identity_pb2, identity_pb2_grpc

from gateway.core.caller import Role
from tests.conftest import Stack

PURPOSE = "incident-resolution"


async def test_each_reader_sees_its_own_id_for_the_customer_never_another(
    stack: Stack, unique: Callable[[str], str]
) -> None:
    bank, telco = stack.api("bank-a", Role.ADVISOR), stack.api("telco-a", Role.ADVISOR)
    bank_id, telco_id = unique("bank-cust"), unique("telco-line")
    opened = await bank.cases.OpenCase(
        cases_pb2.OpenCaseRequest(
            idempotency_key=unique("k"),
            service_id="nfc-payment",
            customer_local_id=bank_id,
            channel=common_pb2.CHANNEL_PHONE,
            summary="phone payment refused at the till",
        )
    )
    # The answer of a change is kept for its retries: it holds no partner's id in clear.
    assert opened.header.customer_local_id == ""
    request = cases_pb2.GetCaseViewRequest(case_id=opened.case_id, purpose=PURPOSE)
    seen_by_bank = (await bank.cases.GetCaseView(request)).view
    assert seen_by_bank.header.customer_local_id == bank_id
    listed = await bank.cases.ListCases(cases_pb2.ListCasesRequest(customer_local_id=bank_id))
    assert [h.customer_local_id for h in listed.cases] == [bank_id]

    # The operator takes part but has no id of its own for this customer: its
    # pseudonym only, and nothing of the bank's id anywhere in what it is sent.
    answer = await telco.cases.GetCaseView(request)
    assert answer.view.header.customer_local_id == ""
    assert answer.view.header.subject_id not in ("", seen_by_bank.header.subject_id)
    assert bank_id.encode() not in answer.SerializeToString()
    # The customer links their operator account: the operator's view (kept since
    # its last read) now names the customer by the operator's id, still never the bank's.
    issued = await identity_pb2_grpc.IdentityServiceStub(bank.channel).IssueLinkCode(
        identity_pb2.IssueLinkCodeRequest(idempotency_key=unique("k"), customer_local_id=bank_id)
    )
    await identity_pb2_grpc.IdentityServiceStub(telco.channel).RedeemLinkCode(
        identity_pb2.RedeemLinkCodeRequest(
            idempotency_key=unique("k"), link_code=issued.link_code, customer_local_id=telco_id
        )
    )
    answer = await telco.cases.GetCaseView(request)
    assert answer.view.header.customer_local_id == telco_id
    assert bank_id.encode() not in answer.SerializeToString()
    assert (await bank.cases.GetCaseView(request)).view.header.customer_local_id == bank_id
