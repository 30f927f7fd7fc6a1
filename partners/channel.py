"""An mTLS channel to the gateway from a partner's certificate files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(slots=True, frozen=True)
class PartnerCredentials:
    """The three PEM files ``coopgate ca issue`` hands a partner."""

    cert: Path
    key: Path
    ca: Path

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes(),
            certificate_chain=self.cert.read_bytes(),
        )


def secure_channel(
    target: str, credentials: PartnerCredentials, *, server_name: str = "localhost"
) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel; create it on the event loop that will use it."""
    return grpc.aio.secure_channel(
        target,
        credentials.channel_credentials(),
        options=[("grpc.ssl_target_name_override", server_name)],
    )
