"""An mTLS channel to the gateway from a partner's certificate files, spread over
every gateway replica by gRPC's own client-side ``round_robin`` load balancing."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

#: Reconnect quickly after the gateway restarts: gRPC's own default waits 1 s
#: first and up to 120 s, longer than a call's retries are willing to wait. Not
#: ``grpc.min_reconnect_backoff_ms``: gRPC reads it as the time a connection attempt
#: (TCP, TLS handshake, HTTP/2 settings) may take — at 200 ms, a handshake slowed by a
#: busy gateway or client timed out, and every call waiting for the connection failed
#: UNAVAILABLE (300 of 1,000 watches opened at once on 10 channels). It keeps its
#: default, 20 s.
RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5000),
)


#: Calls and streams go to every address the target resolves to in turn (one
#: subchannel per replica), skipping those not connected: the default
#: (``pick_first``) would send everything to the first replica while it lives.
BALANCING_OPTIONS: tuple[tuple[str, str], ...] = (("grpc.lb_policy_name", "round_robin"),)


def gateway_target(addresses: str | Sequence[str]) -> str:
    """One gRPC target for several gateway replicas.

    ``["10.0.0.5:7443", "10.0.0.6:7443"]`` gives ``ipv4:10.0.0.5:7443,10.0.0.6:7443``
    (gRPC's static address list; IPv6 as ``[::1]:7443``). A single address or a
    target already spelled out (``dns:///gateway.example:7443``, whose every address
    record is a replica) is returned as it is. A comma-separated string is a list.
    """
    listed = [addresses] if isinstance(addresses, str) else list(addresses)
    if len(listed) == 1:
        listed = [a.strip() for a in listed[0].split(",") if a.strip()]
    if len(listed) == 1:
        return listed[0]
    if not listed:
        raise ValueError("no gateway address given")
    families = {_family(address) for address in listed}
    if len(families) != 1:
        raise ValueError(
            f"gateway addresses {listed} must all be IPv4 or all IPv6 host:port "
            "(for host names, one dns:/// name whose address records are the replicas)"
        )
    return f"{families.pop()}:{','.join(listed)}"


def _family(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"gateway address {address!r} is not host:port")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(
            f"gateway address {address!r}: a list of replicas takes IP addresses "
            "(for host names, one dns:/// name whose address records are the replicas)"
        ) from None
    return "ipv4" if ip.version == 4 else "ipv6"


@dataclass(slots=True, frozen=True)
class PartnerCredentials:
    """The three PEM files ``coopgate ca issue`` hands a partner."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def issued(cls, directory: Path, partner: str, role: str, ca: Path) -> PartnerCredentials:
        """The files ``coopgate ca issue --partner P --role R --out DIR`` wrote."""
        return cls(
            cert=directory / f"{partner}-{role}.pem", key=directory / f"{partner}-{role}.key", ca=ca
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes(),
            certificate_chain=self.cert.read_bytes(),
        )


def secure_channel(
    target: str | Sequence[str],
    credentials: PartnerCredentials,
    *,
    server_name: str = "localhost",
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to one gateway or several replicas (see
    :func:`gateway_target`), calls spread over them; create it on the event loop that
    will use it. Every replica must present a certificate for ``server_name`` issued by
    the gateway's CA, whatever address it was reached at."""
    return grpc.aio.secure_channel(
        gateway_target(target),
        credentials.channel_credentials(),
        options=[
            ("grpc.ssl_target_name_override", server_name),
            *RECONNECT_OPTIONS,
            *BALANCING_OPTIONS,
        ],
        interceptors=list(interceptors) or None,
    )
