"""Thin gRPC servicers: proto in, call the domain with the caller, proto out.

RPCs declared in the v1 contract but not yet built answer UNIMPLEMENTED (the
generated base classes' default).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from coopgate.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    cases_pb2,
    cases_pb2_grpc,
    consents_pb2,
    consents_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    work_pb2,
    work_pb2_grpc,
)
from grpc_status import rpc_status

from gateway.admin.agreements import SharingAgreements
from gateway.admin.registry import Admin
from gateway.api.interceptors import Encoded, status_for
from gateway.cases.service import Cases
from gateway.consent.records import Consents
from gateway.core.caller import current_caller
from gateway.core.errors import Aborted
from gateway.identity.erasure import Erasure
from gateway.identity.linking import Identity
from gateway.telemetry import annotate
from gateway.work.delivery import PartnerWork

Context = grpc.aio.ServicerContext[Any, Any]


class CaseServicer(cases_pb2_grpc.CaseServiceServicer):
    def __init__(self, cases: Cases) -> None:
        self._intake = cases.intake
        self._progress = cases.progress
        self._views = cases.views
        self._watching = cases.watching
        self._listing = cases.listing

    async def OpenCase(
        self, request: cases_pb2.OpenCaseRequest, context: Context
    ) -> cases_pb2.OpenCaseResponse:
        response = await self._intake.open_case(current_caller(), request)
        annotate(case_id=response.case_id, service=request.service_id)
        return response

    async def GetCaseView(self, request: cases_pb2.GetCaseViewRequest, context: Context) -> Any:
        # A `GetCaseViewResponse`, sent as encoded when the view was made.
        return Encoded((await self._views.serve_view(current_caller(), request)).encoded)

    async def ListCases(
        self, request: cases_pb2.ListCasesRequest, context: Context
    ) -> cases_pb2.ListCasesResponse:
        return await self._listing.list_cases(current_caller(), request)

    async def AppendInteraction(
        self, request: cases_pb2.AppendInteractionRequest, context: Context
    ) -> cases_pb2.AppendInteractionResponse:
        return await self._intake.append_interaction(current_caller(), request)

    async def SubmitFinding(
        self, request: cases_pb2.SubmitFindingRequest, context: Context
    ) -> cases_pb2.SubmitFindingResponse:
        return await self._intake.submit_finding(current_caller(), request)

    async def AcceptOwnership(
        self, request: cases_pb2.AcceptOwnershipRequest, context: Context
    ) -> cases_pb2.AcceptOwnershipResponse:
        response = await self._progress.answer_offer(current_caller(), request)
        assert isinstance(response, cases_pb2.AcceptOwnershipResponse)
        return response

    async def DeclineOwnership(
        self, request: cases_pb2.DeclineOwnershipRequest, context: Context
    ) -> cases_pb2.DeclineOwnershipResponse:
        response = await self._progress.answer_offer(current_caller(), request)
        assert isinstance(response, cases_pb2.DeclineOwnershipResponse)
        return response

    async def ResolveCase(
        self, request: cases_pb2.ResolveCaseRequest, context: Context
    ) -> cases_pb2.ResolveCaseResponse:
        return await self._progress.resolve(current_caller(), request)

    async def ConfirmResolution(
        self, request: cases_pb2.ConfirmResolutionRequest, context: Context
    ) -> cases_pb2.ConfirmResolutionResponse:
        response = await self._progress.customer_answer(current_caller(), request)
        assert isinstance(response, cases_pb2.ConfirmResolutionResponse)
        return response

    async def ReopenCase(
        self, request: cases_pb2.ReopenCaseRequest, context: Context
    ) -> cases_pb2.ReopenCaseResponse:
        response = await self._progress.customer_answer(current_caller(), request)
        assert isinstance(response, cases_pb2.ReopenCaseResponse)
        return response

    async def WatchCase(
        self, request: cases_pb2.WatchCaseRequest, context: Context
    ) -> AsyncIterator[cases_pb2.WatchCaseResponse]:
        async def drop(resume_after: int) -> None:
            error = Aborted(
                "this watcher stopped reading and was dropped; "
                "watch again with after_sequence to resume",
                reason="SLOW_CONSUMER",
                metadata={"resume_after": str(resume_after)},
            )
            with contextlib.suppress(grpc.aio.AbortError):
                await context.abort_with_status(rpc_status.to_status(status_for(error)))

        stream = self._watching.watch(current_caller(), request, on_slow=drop)
        try:
            async for response in stream:
                yield response
        finally:
            await stream.aclose()


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, admin: Admin, agreements: SharingAgreements) -> None:
        self._admin = admin
        self._agreements = agreements

    async def RegisterPartner(
        self, request: admin_pb2.RegisterPartnerRequest, context: Context
    ) -> admin_pb2.RegisterPartnerResponse:
        return await self._admin.register_partner(current_caller(), request)

    async def ListPartners(
        self, request: admin_pb2.ListPartnersRequest, context: Context
    ) -> admin_pb2.ListPartnersResponse:
        return await self._admin.list_partners(current_caller())

    async def DefineService(
        self, request: admin_pb2.DefineServiceRequest, context: Context
    ) -> admin_pb2.DefineServiceResponse:
        return await self._admin.define_service(current_caller(), request)

    async def GetService(
        self, request: admin_pb2.GetServiceRequest, context: Context
    ) -> admin_pb2.GetServiceResponse:
        current_caller()
        return admin_pb2.GetServiceResponse(
            service=await self._admin.get_service(request.service_id)
        )

    async def ListServices(
        self, request: admin_pb2.ListServicesRequest, context: Context
    ) -> admin_pb2.ListServicesResponse:
        current_caller()
        return await self._admin.list_services()

    async def DefineSharingAgreement(
        self, request: admin_pb2.DefineSharingAgreementRequest, context: Context
    ) -> admin_pb2.DefineSharingAgreementResponse:
        return await self._agreements.define_sharing_agreement(current_caller(), request)

    async def ListSharingAgreements(
        self, request: admin_pb2.ListSharingAgreementsRequest, context: Context
    ) -> admin_pb2.ListSharingAgreementsResponse:
        current_caller()
        return await self._agreements.list_sharing_agreements(request)


class ConsentServicer(consents_pb2_grpc.ConsentServiceServicer):
    def __init__(self, consents: Consents) -> None:
        self._consents = consents

    async def GrantConsent(
        self, request: consents_pb2.GrantConsentRequest, context: Context
    ) -> consents_pb2.GrantConsentResponse:
        return await self._consents.grant(current_caller(), request)

    async def RevokeConsent(
        self, request: consents_pb2.RevokeConsentRequest, context: Context
    ) -> consents_pb2.RevokeConsentResponse:
        return await self._consents.revoke(current_caller(), request)

    async def ListConsents(
        self, request: consents_pb2.ListConsentsRequest, context: Context
    ) -> consents_pb2.ListConsentsResponse:
        return await self._consents.list(current_caller(), request)

    async def RequestConsent(
        self, request: consents_pb2.RequestConsentRequest, context: Context
    ) -> consents_pb2.RequestConsentResponse:
        return await self._consents.request(current_caller(), request)

    async def RefuseConsentRequest(
        self, request: consents_pb2.RefuseConsentRequestRequest, context: Context
    ) -> consents_pb2.RefuseConsentRequestResponse:
        return await self._consents.refuse_request(current_caller(), request)

    async def GetReceiptKey(
        self, request: consents_pb2.GetReceiptKeyRequest, context: Context
    ) -> consents_pb2.GetReceiptKeyResponse:
        current_caller()
        return self._consents.receipt_key()


class PartnerWorkServicer(work_pb2_grpc.PartnerWorkServiceServicer):
    def __init__(self, work: PartnerWork) -> None:
        self._work = work

    async def Subscribe(
        self, request: work_pb2.SubscribeRequest, context: Context
    ) -> AsyncIterator[work_pb2.SubscribeResponse]:
        async for response in self._work.subscribe(current_caller(), request):
            yield response

    async def Acknowledge(
        self, request: work_pb2.AcknowledgeRequest, context: Context
    ) -> work_pb2.AcknowledgeResponse:
        return await self._work.acknowledge(current_caller(), request)


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(self, identity: Identity, erasure: Erasure) -> None:
        self._identity = identity
        self._erasure = erasure

    async def IssueLinkCode(
        self, request: identity_pb2.IssueLinkCodeRequest, context: Context
    ) -> identity_pb2.IssueLinkCodeResponse:
        return await self._identity.issue_link_code(current_caller(), request)

    async def RedeemLinkCode(
        self, request: identity_pb2.RedeemLinkCodeRequest, context: Context
    ) -> identity_pb2.RedeemLinkCodeResponse:
        return await self._identity.redeem_link_code(current_caller(), request)

    async def Unlink(
        self, request: identity_pb2.UnlinkRequest, context: Context
    ) -> identity_pb2.UnlinkResponse:
        return await self._identity.unlink(current_caller(), request)

    async def ResolveSubject(
        self, request: identity_pb2.ResolveSubjectRequest, context: Context
    ) -> identity_pb2.ResolveSubjectResponse:
        return await self._identity.resolve_subject(current_caller(), request)

    async def RegisterIdentifiers(
        self, request: identity_pb2.RegisterIdentifiersRequest, context: Context
    ) -> identity_pb2.RegisterIdentifiersResponse:
        return await self._identity.register_identifiers(current_caller(), request)

    async def EraseCustomer(
        self, request: identity_pb2.EraseCustomerRequest, context: Context
    ) -> identity_pb2.EraseCustomerResponse:
        return await self._erasure.erase(current_caller(), request)

    async def ConfirmMatch(
        self, request: identity_pb2.ConfirmMatchRequest, context: Context
    ) -> identity_pb2.ConfirmMatchResponse:
        return await self._identity.confirm_match(current_caller(), request)
