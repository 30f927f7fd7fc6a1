"""The partner SDK's calls to the gateway's case service (``PartnerClient`` composes them)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Iterable

import grpc
from coopgate.v1 import cases_pb2

from partners.calls import ClientBase
from partners.enums import AuthorKind, CaseStatus, Channel, FindingStatus
from partners.errors import from_rpc_error
from partners.retry import Backoff


class CaseCalls(ClientBase):
    """The case service's calls: open, view, list, watch and work a case."""

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
        self, case_id: str, *, purpose: str, after_sequence: int = 0, consent_changes: bool = False
    ) -> AsyncIterator[cases_pb2.WatchCaseResponse]:
        """Every change to the case's view from ``after_sequence`` on; reconnects after a
        broken stream from the last item seen, and ends when the case is closed. With
        ``consent_changes``, also a response with ``consent_change`` set (and no item)
        when a consent deciding what this partner sees of the case changed."""
        position = after_sequence
        backoff = Backoff(self._retry, self._rng)
        while True:
            call = self._cases.WatchCase(
                cases_pb2.WatchCaseRequest(
                    case_id=case_id,
                    purpose=purpose,
                    after_sequence=position,
                    consent_changes=consent_changes,
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
