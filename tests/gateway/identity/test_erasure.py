"""Erasure by crypto-shredding: customer data is sealed at rest per case; erasing
the customer destroys the keys, the data becomes unreadable everywhere, every
partner's link to them is gone, and the audit log stays complete and verifiable."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from coopgate.v1 import cases_pb2, common_pb2, identity_pb2, identity_pb2_grpc
from sqlalchemy import select

from gateway.audit.merkle import leaf_hash, node_hash, perfect_subtrees, root_from_leaf_hashes
from gateway.core.caller import Role
from gateway.crypto.sealing import ERASED_TEXT
from gateway.store.schema import audit_entries, audit_head, audit_nodes, case_events, cases
from tests.conftest import Stack


async def test_erasure_shreds_the_data_and_keeps_the_log_verifiable(
    stack: Stack, unique: Callable[[str], str]
) -> None:
    bank = stack.api("bank-a", Role.ADVISOR)
    identity = identity_pb2_grpc.IdentityServiceStub(bank.channel)
    customer = unique("cust")
    secret = f"card ending 4242 refused at Chez {unique('resto')}"
    opened = await bank.cases.OpenCase(
        cases_pb2.OpenCaseRequest(
            idempotency_key=unique("k"),
            service_id="nfc-payment",
            customer_local_id=customer,
            channel=common_pb2.CHANNEL_PHONE,
            summary=secret,
        )
    )
    request = cases_pb2.GetCaseViewRequest(case_id=opened.case_id, purpose="customer-care")
    before = (await bank.cases.GetCaseView(request)).view
    assert before.header.summary == secret
    assert secret in [i.interaction.summary for i in before.timeline]

    # Sealed at rest: the words are nowhere in the store.
    async with stack.runtime.store.read() as conn:
        blobs = (
            await conn.execute(
                select(case_events.c.item).where(case_events.c.case_id == opened.case_id)
            )
        ).scalars()
        summary = (
            await conn.execute(select(cases.c.summary).where(cases.c.case_id == opened.case_id))
        ).scalar_one()
    assert not any(secret.encode() in blob for blob in blobs)
    assert secret not in summary

    erased = await identity.EraseCustomer(
        identity_pb2.EraseCustomerRequest(idempotency_key=unique("k"), customer_local_id=customer)
    )
    assert erased.erased_cases == 1

    after = (await bank.cases.GetCaseView(request)).view
    assert after.header.summary == ERASED_TEXT
    summaries = [i.interaction.summary for i in after.timeline if i.HasField("interaction")]
    assert secret not in summaries
    assert ERASED_TEXT in summaries
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.ResolveSubject(
            identity_pb2.ResolveSubjectRequest(customer_local_id=customer)
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    # The log kept every entry, records the erasure, and still hashes to its root: the
    # first `size` entries (the shared stack's workflows go on appending meanwhile, and
    # each PostgreSQL statement reads committed rows as of its own start).
    async with stack.runtime.store.read() as conn:
        size = (await conn.execute(select(audit_head.c.size))).scalar_one()
        entries = list(
            (
                await conn.execute(
                    select(audit_entries.c.canonical).order_by(audit_entries.c.idx).limit(size)
                )
            ).scalars()
        )
        nodes = {
            (level, idx): bytes(h)
            for level, idx, h in await conn.execute(
                select(audit_nodes.c.level, audit_nodes.c.idx, audit_nodes.c.hash)
            )
        }
    assert len(entries) == size
    assert any(b'"action":"subject.erased"' in e for e in entries)
    assert not any(secret.encode() in e for e in entries)
    parts = [nodes[key] for key in perfect_subtrees(0, size)]
    stored_root = parts[-1]
    for part in reversed(parts[:-1]):
        stored_root = node_hash(part, stored_root)
    assert root_from_leaf_hashes([leaf_hash(bytes(e)) for e in entries]) == stored_root
