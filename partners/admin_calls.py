"""The partner SDK's calls to the gateway's admin and audit services
(``PartnerClient`` composes them)."""

from __future__ import annotations

from coopgate.v1 import admin_pb2, audit_pb2

from partners.calls import ClientBase


class AdminCalls(ClientBase):
    """The admin service's calls (admin role) and the audit service's (compliance role)."""

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

    async def list_services(
        self, *, include_retired: bool = False, deadline: float | None = None
    ) -> list[admin_pb2.Service]:
        """The catalogue's services (with ``include_retired``, the retired ones too)."""
        request = admin_pb2.ListServicesRequest(include_retired=include_retired)
        response = await self._call("ListServices", self._admin.ListServices, request, deadline)
        return list(response.services)

    async def retire_service(
        self,
        service_id: str,
        *,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> admin_pb2.RetireServiceResponse:
        """Take the service out of the catalogue; its sharing agreements end."""
        request = admin_pb2.RetireServiceRequest(
            idempotency_key=self._key(idempotency_key), service_id=service_id
        )
        return await self._call("RetireService", self._admin.RetireService, request, deadline)

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
