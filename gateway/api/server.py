"""The gateway gRPC server: mutual TLS always, health and reflection always on."""

from __future__ import annotations

import logging
from collections.abc import Mapping
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

from gateway.admin.agreements import SharingAgreements
from gateway.admin.registry import Admin
from gateway.api.authorization import RULES, Rule, require_rules
from gateway.api.interceptors import GatewayInterceptor
from gateway.api.quota import PartnerQuota
from gateway.api.servicers import (
    AdminServicer,
    CaseServicer,
    ConsentServicer,
    IdentityServicer,
    PartnerWorkServicer,
)
from gateway.audit.service import Audit, AuditServicer
from gateway.cases.service import Cases
from gateway.consent.records import Consents
from gateway.crypto.keyfiles import KeyFileError
from gateway.crypto.pki import check_server_files
from gateway.crypto.revocation import RevocationList
from gateway.identity.erasure import Erasure
from gateway.identity.linking import Identity
from gateway.telemetry import tracing_on
from gateway.telemetry.server import ServerSpans
from gateway.work.delivery import PartnerWork

log = logging.getLogger(__name__)

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
    #: The CA's revocation list, checked on every call (None: nothing is revoked).
    crl: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials that follow the files: a server certificate replaced on disk (with
        its key) is presented from the next handshake on; connections already open, and
        their streams, go on with the one they began with."""
        loaded = self._files()

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal loaded
            try:
                now = self._files()
                if now == loaded:
                    return None
                configuration = self._configuration()
            except (OSError, KeyFileError) as exc:  # half-written: keep the one in use
                log.warning("server certificate not reloaded: %s", exc)
                return None
            loaded = now
            log.info("server certificate reloaded from %s", self.cert)
            return configuration

        # grpc calls `fetch` at each handshake; None means "no change" (the stubs say
        # it always returns a configuration).
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(),
            fetch,  # type: ignore[arg-type]
            require_client_authentication=True,
        )

    def _files(self) -> tuple[tuple[int, int], ...]:
        return tuple(
            (stat.st_mtime_ns, stat.st_size)
            for stat in (self.cert.stat(), self.key.stat(), self.client_ca.stat())
        )

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        check_server_files(self.cert, self.key)
        return grpc.ssl_server_certificate_configuration(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.client_ca.read_bytes(),
        )

    def revocations(self) -> RevocationList | None:
        return None if self.crl is None else RevocationList(self.crl, self.client_ca)


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


#: The largest request the gateway reads, and the largest response it sends (a view of
#: many items is the largest; the stores bound what it can hold).
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
#: How long a call that reached the server may wait to be taken up (``Settings``).
CALL_QUEUE_SECONDS = 300


def create_server(
    address: str,
    tls: ServerTLS,
    domain: Domain,
    *,
    quota: PartnerQuota | None = None,
    rules: Mapping[str, Rule] = RULES,
    call_queue_seconds: int = CALL_QUEUE_SECONDS,
    untraced: frozenset[str] = frozenset(),
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Build the server (not started). Returns it, its bound port and its health servicer.

    Every method of the contract it serves must have its rule in ``rules`` (the
    authorization table), else it refuses (``MissingRule``). ``quota`` limits each
    partner's concurrent streams and in-flight calls (None: no limit). A call not
    taken up within ``call_queue_seconds`` of its arrival is cancelled by gRPC. When this
    process traces, every call gets a server span but those of the ``untraced`` methods."""
    require_rules(SERVICE_NAMES, rules)
    # The server spans only when this process traces: off, a call has no wrapping more
    # (OpenTelemetry's interceptor, idle, still cost about 10% of the case view's CPU).
    gateway = GatewayInterceptor(
        tls.revocations(),
        rules=rules,
        quota=quota,
        registered=domain.admin.is_registered,
        spans=ServerSpans() if tracing_on() else None,
        untraced=untraced,
    )
    server = grpc.aio.server(
        interceptors=[gateway],
        options=[
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
            # Bind exclusively: with SO_REUSEPORT (grpc's default) a second gateway could
            # bind the same port and the kernel would split partners' calls between them.
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            # grpc.aio takes new calls up on the event loop that serves the others: a burst
            # of streams on a busy replica (1,000 watches opened at once) waited past gRPC's
            # default 30 s and was cancelled. A unary call's deadline still ends it first.
            ("grpc.server_max_unrequested_time_in_server", call_queue_seconds),
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
    try:
        port = server.add_secure_port(address, tls.credentials())
    except RuntimeError:  # grpc: "Failed to bind to address"
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address}: the address is taken or not this host's")
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
