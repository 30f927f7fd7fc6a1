"""An mTLS channel to the gateway from a partner's certificate files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

#: Reconnect quickly after the gateway restarts: gRPC's own default waits 1 s
#: first and up to 120 s, longer than a call's retries are willing to wait.
RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5000),
)


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
    target: str,
    credentials: PartnerCredentials,
    *,
    server_name: str = "localhost",
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel; create it on the event loop that will use it."""
    return grpc.aio.secure_channel(
        target,
        credentials.channel_credentials(),
        options=[("grpc.ssl_target_name_override", server_name), *RECONNECT_OPTIONS],
        interceptors=list(interceptors) or None,
    )
