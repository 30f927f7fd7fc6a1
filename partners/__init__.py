"""What a partner runs: a client over the generated gRPC API. Partners are
outside companies: this package imports the generated stubs (``coopgate.v1``)
and never ``gateway`` or ``workflows``."""

from partners.channel import PartnerCredentials, secure_channel

__all__ = ["PartnerCredentials", "secure_channel"]
