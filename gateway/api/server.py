"""The gateway gRPC server: mutual TLS always, health and reflection always on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    identity_pb2,
    identity_pb2_grpc,
    work_pb2,
    work_pb2_grpc,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from gateway.admin.agreements import SharingAgreements
from gateway.admin.registry import Admin
from gateway.api.interceptors import GatewayInterceptor
from gateway.api.servicers import (
    AdminServicer,
    CaseServicer,
    ConsentServicer,
    IdentityServicer,
    PartnerWorkServicer,
)
from gateway.audit.service import Audit, AuditServicer
from gateway.cases.service import Cases
from gateway.consent.rules import Consents
from gateway.identity.erasure import Erasure
from gateway.identity.linking import Identity
from gateway.work.delivery import PartnerWork

#: Every service of the v1 contract, by full name (for health and reflection).
SERVICE_NAMES: tuple[str, ...] = (
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    cases_pb2.DESCRIPTOR.services_by_name["CaseService"].full_name,
    consents_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name,
    identity_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name,
    work_pb2.DESCRIPTOR.services_by_name["PartnerWorkService"].full_name,
)


@dataclass(slots=True, frozen=True)
class ServerTLS:
    """The gateway's own certificate and the CA its clients must chain to."""

    cert: Path
    key: Path
    client_ca: Path

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.client_ca.read_bytes(),
            require_client_auth=True,
        )


@dataclass(slots=True)
class Domain:
    """What the servicers call."""

    admin: Admin
    agreements: SharingAgreements
    cases: Cases
    consents: Consents
    work: PartnerWork
    identity: Identity
    erasure: Erasure
    audit: Audit


def create_server(
    address: str, tls: ServerTLS, domain: Domain
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Build the server (not started). Returns it, its bound port and its health servicer."""
    server = grpc.aio.server(
        interceptors=[aio_server_interceptor(), GatewayInterceptor()],  # type: ignore[no-untyped-call]
        options=[
            ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )
    cases_pb2_grpc.add_CaseServiceServicer_to_server(CaseServicer(domain.cases), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminServicer(domain.admin, domain.agreements), server
    )
    consents_pb2_grpc.add_ConsentServiceServicer_to_server(ConsentServicer(domain.consents), server)
    work_pb2_grpc.add_PartnerWorkServiceServicer_to_server(PartnerWorkServicer(domain.work), server)
    identity_pb2_grpc.add_IdentityServiceServicer_to_server(
        IdentityServicer(domain.identity, domain.erasure), server
    )
    audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(domain.audit), server)

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port = server.add_secure_port(address, tls.credentials())
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return server, port, health_servicer


async def mark_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    await health_servicer.set("", status)
    for name in SERVICE_NAMES:
        await health_servicer.set(name, status)
