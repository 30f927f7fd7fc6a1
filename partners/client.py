"""The partner SDK's client: every RPC of the gateway's API as an ``async`` method.

- mTLS from the partner's certificate files (its identity; no header changes it);
- a deadline on every call (``deadline`` seconds, retries included; per call or
  the client's default);
- retries with exponential backoff and jitter on UNAVAILABLE only: any other
  failure may have had an effect or will not change by retrying;
- an idempotency key on every mutating call, generated unless given, and the
  same on every retry of that call, so a retry the gateway already executed
  returns the first result instead of doing it twice;
- failures raised as ``partners.errors.GatewayError`` subclasses.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import Self, TypeVar

import grpc
from coopgate.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    cases_pb2,
    cases_pb2_grpc,
    consents_pb2,
    consents_pb2_grpc,
    work_pb2,
    work_pb2_grpc,
)
from google.protobuf.message import Message

from partners.channel import PartnerCredentials, secure_channel
from partners.enums import AuthorKind, CaseStatus, Channel, ConsentState, FindingStatus
from partners.errors import from_rpc_error
from partners.retry import Backoff, RetryPolicy
from partners.work import RECONNECT, REDELIVERY, Handler, WorkSubscription

PERSON_METADATA_KEY = "x-coopgate-person"
DEFAULT_RETRY = RetryPolicy()

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


class PartnerClient:
    """One partner's connection to the gateway, as the certificate's partner and role.

    Create it inside the event loop that uses it; ``async with`` closes the channel.
    ``person`` is the acting advisor recorded with every call (asserted, not trusted).
    """

    def __init__(
        self,
        target: str,
        credentials: PartnerCredentials,
        *,
        person: str = "",
        deadline: float = 10.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        server_name: str = "localhost",
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        key_prefix: str = "sdk",
        rng: random.Random | None = None,
    ) -> None:
        channel = secure_channel(
            target, credentials, server_name=server_name, interceptors=interceptors
        )
        self._init(channel, person=person, deadline=deadline, retry=retry, key_prefix=key_prefix)
        self._owns_channel = True
        self._rng = rng or random.Random()
        self.target = target

    def _init(
        self,
        channel: grpc.aio.Channel,
        *,
        person: str,
        deadline: float,
        retry: RetryPolicy,
        key_prefix: str,
    ) -> None:
        self._channel = channel
        self._person = person
        self._deadline = deadline
        self._retry = retry
        self._key_prefix = key_prefix
        self._owns_channel = False
        self._cases = cases_pb2_grpc.CaseServiceStub(channel)
        self._consents = consents_pb2_grpc.ConsentServiceStub(channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(channel)
        self._work = work_pb2_grpc.PartnerWorkServiceStub(channel)
        self._audit = audit_pb2_grpc.AuditServiceStub(channel)

    def acting_as(self, person: str) -> PartnerClient:
        """The same connection, recording ``person`` as the acting advisor."""
        other = PartnerClient.__new__(PartnerClient)
        other._init(
            self._channel,
            person=person,
            deadline=self._deadline,
            retry=self._retry,
            key_prefix=self._key_prefix,
        )
        other._rng = self._rng
        other.target = self.target
        return other

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def person(self) -> str:
        return self._person

    def new_idempotency_key(self) -> str:
        return f"{self._key_prefix}-{uuid.uuid4().hex}"

    # -- the call path ------------------------------------------------------

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        return ((PERSON_METADATA_KEY, self._person),) if self._person else None

    def _key(self, given: str | None) -> str:
        return given or self.new_idempotency_key()

    async def _call(
        self,
        name: str,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        deadline: float | None,
    ) -> Resp:
        """One RPC within its deadline (seconds, retries included), retried on
        UNAVAILABLE with the same request and so the same idempotency key."""
        loop = asyncio.get_running_loop()
        end = loop.time() + (deadline or self._deadline)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await method(
                    request, timeout=max(0.001, end - loop.time()), metadata=self._metadata()
                )
            except grpc.aio.AioRpcError as exc:
                pause = self._retry.delay(attempt - 1, self._rng)
                if (
                    exc.code() == grpc.StatusCode.UNAVAILABLE
                    and attempt < self._retry.max_attempts
                    and loop.time() + pause < end
                ):
                    await asyncio.sleep(pause)
                    continue
                raise from_rpc_error(exc, method=name, attempts=attempt) from exc

    # -- cases ----------------------------------------------------------------

    async def open_case(
        self,
        *,
        service_id: str,
        customer_local_id: str,
        channel: Channel,
        summary: str,
        author_id: str = "",
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> cases_pb2.OpenCaseResponse:
        """Open a case for one of this partner's customers; starts the cross-company diagnosis."""
        request = cases_pb2.OpenCaseRequest(
            idempotency_key=self._key(idempotency_key),
            service_id=service_id,
            customer_local_id=customer_local_id,
            channel=channel.wire(),
            summary=summary,
            author_id=author_id,
        )
        return await self._call("OpenCase", self._cases.OpenCase, request, deadline)

    async def get_case_view(
        self, case_id: str, *, purpose: str, deadline: float | None = None
    ) -> cases_pb2.CaseView:
        """The combined view of a case as this partner may see it for ``purpose``."""
        request = cases_pb2.GetCaseViewRequest(case_id=case_id, purpose=purpose)
        return (await self._call("GetCaseView", self._cases.GetCaseView, request, deadline)).view

    async def list_cases(
        self,
        *,
        service_id: str = "",
        status: CaseStatus | None = None,
        customer_local_id: str = "",
        subject_id: str = "",
        purpose: str = "",
        page_size: int = 50,
        deadline: float | None = None,
    ) -> AsyncIterator[cases_pb2.CaseHeader]:
        """Every case this partner takes part in that matches, newest first, page by page."""
        token = ""
        while True:
            request = cases_pb2.ListCasesRequest(
                service_id=service_id,
                customer_local_id=customer_local_id,
                subject_id=subject_id,
                purpose=purpose,
            )
            if status is not None:
                request.status = status.wire()
            request.page.page_size = page_size
            request.page.page_token = token
            page = await self._call("ListCases", self._cases.ListCases, request, deadline)
            for header in page.cases:
                yield header
            token = page.next_page_token
            if not token:
                return

    async def watch_case(
        self, case_id: str, *, purpose: str, after_sequence: int = 0
    ) -> AsyncIterator[cases_pb2.WatchCaseResponse]:
        """Every change to the case's view from ``after_sequence`` on; reconnects after a
        broken stream from the last item seen, and ends when the case is closed."""
        position = after_sequence
        backoff = Backoff(self._retry, self._rng)
        while True:
            call = self._cases.WatchCase(
                cases_pb2.WatchCaseRequest(
                    case_id=case_id, purpose=purpose, after_sequence=position
                ),
                metadata=self._metadata(),
            )
            try:
                async for response in call:
                    backoff.reset()
                    position = max(position, response.item.sequence)
                    yield response
                return
            except grpc.aio.AioRpcError as exc:
                if (
                    exc.code() != grpc.StatusCode.UNAVAILABLE
                    or backoff.retries + 1 >= self._retry.max_attempts
                ):
                    raise from_rpc_error(
                        exc, method="WatchCase", attempts=backoff.retries + 1
                    ) from exc
                await asyncio.sleep(backoff.next())
            finally:
                call.cancel()

    async def append_interaction(
        self,
        case_id: str,
        *,
        channel: Channel,
        summary: str,
        author_kind: AuthorKind = AuthorKind.ADVISOR,
        author_id: str = "",
        category: str = "",
        attachment_refs: Iterable[str] = (),
        occurred_at: dt.datetime | None = None,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> cases_pb2.AppendInteractionResponse:
        """Add what the customer said or was told, on any channel, to the case's timeline."""
        interaction = cases_pb2.Interaction(
            channel=channel.wire(),
            summary=summary,
            author_kind=author_kind.wire(),
            author_id=author_id,
            category=category,
            attachment_refs=list(attachment_refs),
        )
        if occurred_at is not None:
            interaction.occurred_at.FromDatetime(occurred_at)
        request = cases_pb2.AppendInteractionRequest(
            idempotency_key=self._key(idempotency_key), case_id=case_id, interaction=interaction
        )
        return await self._call(
            "AppendInteraction", self._cases.AppendInteraction, request, deadline
        )

    async def submit_finding(
        self,
        case_id: str,
        *,
        request_id: str,
        component: str,
        status: FindingStatus,
        confidence: float,
        fault_code: str = "",
        evidence_ref: str = "",
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> cases_pb2.Finding:
        """Answer a diagnosis request with this partner's verdict on its component."""
        request = cases_pb2.SubmitFindingRequest(
            idempotency_key=self._key(idempotency_key),
            case_id=case_id,
            request_id=request_id,
            finding=cases_pb2.Finding(
                component=component,
                status=status.wire(),
                confidence=confidence,
                fault_code=fault_code,
                evidence_ref=evidence_ref,
            ),
        )
        response = await self._call("SubmitFinding", self._cases.SubmitFinding, request, deadline)
        return response.finding

    async def accept_ownership(
        self,
        case_id: str,
        offer_id: str,
        *,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> cases_pb2.CaseHeader:
        request = cases_pb2.AcceptOwnershipRequest(
            idempotency_key=self._key(idempotency_key), case_id=case_id, offer_id=offer_id
        )
        response = await self._call(
            "AcceptOwnership", self._cases.AcceptOwnership, request, deadline
        )
        return response.header

    async def decline_ownership(
        self,
        case_id: str,
        offer_id: str,
        *,
        reason: str,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> None:
        request = cases_pb2.DeclineOwnershipRequest(
            idempotency_key=self._key(idempotency_key),
            case_id=case_id,
            offer_id=offer_id,
            reason=reason,
        )
        await self._call("DeclineOwnership", self._cases.DeclineOwnership, request, deadline)

    async def resolve_case(
        self,
        case_id: str,
        *,
        resolution: str,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> cases_pb2.CaseHeader:
        """The relationship owner says the problem is fixed; the customer then confirms."""
        request = cases_pb2.ResolveCaseRequest(
            idempotency_key=self._key(idempotency_key), case_id=case_id, resolution=resolution
        )
        response = await self._call("ResolveCase", self._cases.ResolveCase, request, deadline)
        return response.header

    async def confirm_resolution(
        self, case_id: str, *, idempotency_key: str | None = None, deadline: float | None = None
    ) -> cases_pb2.CaseHeader:
        """Relay the customer's confirmation that it works again."""
        request = cases_pb2.ConfirmResolutionRequest(
            idempotency_key=self._key(idempotency_key), case_id=case_id
        )
        response = await self._call(
            "ConfirmResolution", self._cases.ConfirmResolution, request, deadline
        )
        return response.header

    async def reopen_case(
        self,
        case_id: str,
        *,
        reason: str,
        channel: Channel,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> cases_pb2.CaseHeader:
        request = cases_pb2.ReopenCaseRequest(
            idempotency_key=self._key(idempotency_key),
            case_id=case_id,
            reason=reason,
            channel=channel.wire(),
        )
        response = await self._call("ReopenCase", self._cases.ReopenCase, request, deadline)
        return response.header

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

    # -- administration (admin role) ------------------------------------------------

    async def register_partner(
        self,
        partner_id: str,
        *,
        display_name: str,
        kind: admin_pb2.PartnerKind.ValueType,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> admin_pb2.Partner:
        request = admin_pb2.RegisterPartnerRequest(
            idempotency_key=self._key(idempotency_key),
            partner_id=partner_id,
            display_name=display_name,
            kind=kind,
        )
        response = await self._call(
            "RegisterPartner", self._admin.RegisterPartner, request, deadline
        )
        return response.partner

    async def list_partners(self, *, deadline: float | None = None) -> list[admin_pb2.Partner]:
        request = admin_pb2.ListPartnersRequest()
        return list(
            (await self._call("ListPartners", self._admin.ListPartners, request, deadline)).partners
        )

    async def define_service(
        self,
        service: admin_pb2.Service,
        *,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> admin_pb2.Service:
        request = admin_pb2.DefineServiceRequest(
            idempotency_key=self._key(idempotency_key), service=service
        )
        response = await self._call("DefineService", self._admin.DefineService, request, deadline)
        return response.service

    async def get_service(
        self, service_id: str, *, deadline: float | None = None
    ) -> admin_pb2.Service:
        request = admin_pb2.GetServiceRequest(service_id=service_id)
        return (await self._call("GetService", self._admin.GetService, request, deadline)).service

    async def list_services(self, *, deadline: float | None = None) -> list[admin_pb2.Service]:
        request = admin_pb2.ListServicesRequest()
        response = await self._call("ListServices", self._admin.ListServices, request, deadline)
        return list(response.services)

    async def define_sharing_agreement(
        self,
        agreement: admin_pb2.SharingAgreement,
        *,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> admin_pb2.SharingAgreement:
        request = admin_pb2.DefineSharingAgreementRequest(
            idempotency_key=self._key(idempotency_key), agreement=agreement
        )
        response = await self._call(
            "DefineSharingAgreement", self._admin.DefineSharingAgreement, request, deadline
        )
        return response.agreement

    async def list_sharing_agreements(
        self, *, partner_id: str = "", service_id: str = "", deadline: float | None = None
    ) -> list[admin_pb2.SharingAgreement]:
        request = admin_pb2.ListSharingAgreementsRequest(
            partner_id=partner_id, service_id=service_id
        )
        response = await self._call(
            "ListSharingAgreements", self._admin.ListSharingAgreements, request, deadline
        )
        return list(response.agreements)

    # -- audit (compliance role) -----------------------------------------------------

    async def get_checkpoint(
        self, *, deadline: float | None = None
    ) -> audit_pb2.GetCheckpointResponse:
        """The audit log's latest signed checkpoint (C2SP signed note)."""
        request = audit_pb2.GetCheckpointRequest()
        return await self._call("GetCheckpoint", self._audit.GetCheckpoint, request, deadline)

    # -- work ----------------------------------------------------------------------

    async def acknowledge(
        self,
        work_ids: Sequence[str],
        *,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> int:
        """Tell the gateway these items were handled; returns how many were still pending."""
        request = work_pb2.AcknowledgeRequest(
            idempotency_key=self._key(idempotency_key), work_ids=list(work_ids)
        )
        response = await self._call("Acknowledge", self._work.Acknowledge, request, deadline)
        return response.acknowledged

    def subscribe(
        self,
        handler: Handler,
        *,
        max_in_flight: int = 16,
        concurrency: int = 4,
        reconnect: RetryPolicy | None = None,
        redelivery: RetryPolicy | None = None,
    ) -> WorkSubscription:
        """This partner's work, handled by ``handler``; ``async with`` runs it in the
        background, ``await subscription.run()`` in the foreground (partner role only)."""
        return WorkSubscription(
            self,
            handler,
            max_in_flight=max_in_flight,
            concurrency=concurrency,
            reconnect=reconnect or RECONNECT,
            redelivery=redelivery or REDELIVERY,
        )

    def _subscribe_call(
        self, max_in_flight: int
    ) -> grpc.aio.UnaryStreamCall[work_pb2.SubscribeRequest, work_pb2.SubscribeResponse]:
        return self._work.Subscribe(
            work_pb2.SubscribeRequest(max_in_flight=max_in_flight), metadata=self._metadata()
        )
