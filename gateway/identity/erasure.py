"""The right to erasure: crypto-shred a customer's cases and forget every
partner's link to them, in one audited transaction."""

from __future__ import annotations

from coopgate.v1 import identity_pb2
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.log import AuditLog, AuditRecord
from gateway.core.caller import Caller, Role
from gateway.core.errors import NotFound
from gateway.crypto.sealing import Sealer
from gateway.identity.subjects import linked_subject, require_local_id
from gateway.store import Store
from gateway.store.idempotency import run_once
from gateway.store.schema import identifier_hashes, link_codes, match_proposals, subject_links


class Erasure:
    def __init__(self, store: Store, audit: AuditLog, sealer: Sealer) -> None:
        self.sealer = sealer
        self.store = store
        self.audit = audit

    async def erase(
        self, caller: Caller, request: identity_pb2.EraseCustomerRequest
    ) -> identity_pb2.EraseCustomerResponse:
        """Crypto-shred the customer's cases and forget every partner's link to them."""
        caller.require(Role.PARTNER, Role.ADVISOR)
        require_local_id(request.customer_local_id)

        async def action(conn: AsyncConnection) -> identity_pb2.EraseCustomerResponse:
            subject = await linked_subject(conn, caller.partner_id, request.customer_local_id)
            if subject is None:
                raise NotFound("no such customer of yours", reason="UNKNOWN_CUSTOMER")
            erased = await self.sealer.erase(conn, subject)
            links = (
                await conn.execute(
                    select(subject_links.c.partner_id, subject_links.c.local_id).where(
                        subject_links.c.subject_id == subject
                    )
                )
            ).all()
            for partner_id, local_id in links:
                await conn.execute(
                    delete(identifier_hashes).where(
                        identifier_hashes.c.partner_id == partner_id,
                        identifier_hashes.c.local_id == local_id,
                    )
                )
            for table in (subject_links, link_codes, match_proposals):
                await conn.execute(delete(table).where(table.c.subject_id == subject))
            await self.audit.record_in(
                conn,
                [
                    AuditRecord(
                        kind="erasure",
                        action="subject.erased",
                        actor_partner_id=caller.partner_id,
                        actor_person_id=caller.person_id,
                        subject_id=subject,
                        reason="customer request (right to erasure)",
                        details=(("cases", ",".join(erased)), ("links", str(len(links)))),
                    )
                ],
            )
            return identity_pb2.EraseCustomerResponse(erased_cases=len(erased))

        response, _ = await run_once(
            self.store, caller, "EraseCustomer", request, identity_pb2.EraseCustomerResponse, action
        )
        return response
