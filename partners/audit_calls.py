"""The partner SDK's calls to the gateway's audit service beyond the checkpoint
(``PartnerClient`` composes them): searching the log (compliance role), proofs
(any role) and the data-subject access report."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

from coopgate.v1 import audit_pb2

from partners.calls import ClientBase


class AuditCalls(ClientBase):
    """Audit search, inclusion and consistency proofs, subject access reports."""

    async def query_audit(
        self,
        *,
        subject_id: str = "",
        partner_id: str = "",
        case_id: str = "",
        purpose: str = "",
        decision: audit_pb2.Decision.ValueType = audit_pb2.DECISION_UNSPECIFIED,
        kind: audit_pb2.AuditKind.ValueType = audit_pb2.AUDIT_KIND_UNSPECIFIED,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        page_size: int = 100,
        deadline: float | None = None,
    ) -> AsyncIterator[audit_pb2.AuditEntry]:
        """The entries that match, in the log's order, page by page (compliance role)."""
        token = ""
        while True:
            request = audit_pb2.QueryAuditRequest(
                subject_id=subject_id,
                partner_id=partner_id,
                case_id=case_id,
                purpose=purpose,
                decision=decision,
                kind=kind,
            )
            if since is not None:
                request.time_range.start.FromDatetime(since)
            if until is not None:
                request.time_range.end.FromDatetime(until)
            request.page.page_size = page_size
            request.page.page_token = token
            page = await self._call("QueryAudit", self._audit.QueryAudit, request, deadline)
            for entry in page.entries:
                yield entry
            token = page.next_page_token
            if not token:
                return

    async def get_inclusion_proof(
        self, index: int, tree_size: int, *, deadline: float | None = None
    ) -> audit_pb2.GetInclusionProofResponse:
        """The hashes that prove entry ``index`` is in the tree of ``tree_size`` entries."""
        request = audit_pb2.GetInclusionProofRequest(index=index, tree_size=tree_size)
        return await self._call(
            "GetInclusionProof", self._audit.GetInclusionProof, request, deadline
        )

    async def get_consistency_proof(
        self, size1: int, size2: int, *, deadline: float | None = None
    ) -> audit_pb2.GetConsistencyProofResponse:
        """The hashes that prove the tree of ``size2`` extends the tree of ``size1``."""
        request = audit_pb2.GetConsistencyProofRequest(size1=size1, size2=size2)
        return await self._call(
            "GetConsistencyProof", self._audit.GetConsistencyProof, request, deadline
        )

    async def subject_access_report(
        self,
        *,
        customer_local_id: str = "",
        subject_id: str = "",
        deadline: float | None = None,
    ) -> audit_pb2.SubjectAccessReportResponse:
        """GDPR art. 15: who received which of the customer's data, when, why; erasures."""
        request = audit_pb2.SubjectAccessReportRequest(
            customer_local_id=customer_local_id, subject_id=subject_id
        )
        return await self._call(
            "SubjectAccessReport", self._audit.SubjectAccessReport, request, deadline
        )
