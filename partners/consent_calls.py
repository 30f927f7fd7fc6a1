"""The partner SDK's calls to the gateway's consent service (``PartnerClient`` composes them)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from coopgate.v1 import consents_pb2

from partners.calls import ClientBase
from partners.enums import Channel, ConsentState


class ConsentCalls(ClientBase):
    """The consent service's calls: grant, revoke, list, request and refuse consent."""

    # -- consents ---------------------------------------------------------------

    async def grant_consent(
        self,
        *,
        customer_local_id: str,
        source_partner_id: str,
        recipient_partner_ids: Iterable[str],
        categories: Iterable[str],
        purposes: Iterable[str],
        channel: Channel,
        notice_version: str,
        valid_until: dt.datetime | None = None,
        consent_request_id: str = "",
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> consents_pb2.GrantConsentResponse:
        """Record one of this partner's customers' consent; returns it with a signed receipt."""
        request = consents_pb2.GrantConsentRequest(
            idempotency_key=self._key(idempotency_key),
            customer_local_id=customer_local_id,
            source_partner_id=source_partner_id,
            recipient_partner_ids=list(recipient_partner_ids),
            categories=list(categories),
            purposes=list(purposes),
            legal_basis=consents_pb2.LEGAL_BASIS_CONSENT,
            channel=channel.wire(),
            notice_version=notice_version,
            consent_request_id=consent_request_id,
        )
        if valid_until is not None:
            request.valid_until.FromDatetime(valid_until)
        return await self._call("GrantConsent", self._consents.GrantConsent, request, deadline)

    async def revoke_consent(
        self,
        consent_id: str,
        *,
        channel: Channel,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> consents_pb2.RevokeConsentResponse:
        """Record the customer's withdrawal; it applies from the very next read."""
        request = consents_pb2.RevokeConsentRequest(
            idempotency_key=self._key(idempotency_key),
            consent_id=consent_id,
            channel=channel.wire(),
        )
        return await self._call("RevokeConsent", self._consents.RevokeConsent, request, deadline)

    async def list_consents(
        self,
        *,
        customer_local_id: str = "",
        subject_id: str = "",
        state: ConsentState | None = None,
        deadline: float | None = None,
    ) -> list[consents_pb2.Consent]:
        found: list[consents_pb2.Consent] = []
        token = ""
        while True:
            request = consents_pb2.ListConsentsRequest(
                customer_local_id=customer_local_id, subject_id=subject_id
            )
            if state is not None:
                request.state = state.wire()
            request.page.page_token = token
            page = await self._call("ListConsents", self._consents.ListConsents, request, deadline)
            found.extend(page.consents)
            token = page.next_page_token
            if not token:
                return found

    async def request_consent(
        self,
        case_id: str,
        *,
        source_partner_id: str,
        categories: Iterable[str],
        purposes: Iterable[str],
        reason: str,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> consents_pb2.RequestConsentResponse:
        """Ask the customer, through the partner they talk to, to allow a withheld flow."""
        request = consents_pb2.RequestConsentRequest(
            idempotency_key=self._key(idempotency_key),
            case_id=case_id,
            source_partner_id=source_partner_id,
            categories=list(categories),
            purposes=list(purposes),
            reason=reason,
        )
        return await self._call("RequestConsent", self._consents.RequestConsent, request, deadline)

    async def refuse_consent_request(
        self,
        consent_request_id: str,
        *,
        channel: Channel,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> ConsentState:
        request = consents_pb2.RefuseConsentRequestRequest(
            idempotency_key=self._key(idempotency_key),
            consent_request_id=consent_request_id,
            channel=channel.wire(),
        )
        response = await self._call(
            "RefuseConsentRequest", self._consents.RefuseConsentRequest, request, deadline
        )
        return ConsentState.of(response.state)

    async def get_receipt_key(
        self, *, deadline: float | None = None
    ) -> consents_pb2.GetReceiptKeyResponse:
        request = consents_pb2.GetReceiptKeyRequest()
        return await self._call("GetReceiptKey", self._consents.GetReceiptKey, request, deadline)
