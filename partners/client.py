"""The partner SDK's client: every RPC of the gateway's API as an ``async`` method.

- mTLS from the partner's certificate files (its identity; no header changes it);
- a deadline on every call (``deadline`` seconds, retries included; per call or
  the client's default);
- retries with exponential backoff and jitter on UNAVAILABLE only: any other
  failure may have had an effect or will not change by retrying;
- an idempotency key on every mutating call, generated unless given, and the
  same on every retry of that call, so a retry the gateway already executed
  returns the first result instead of doing it twice;
- failures raised as ``partners.errors.GatewayError`` subclasses.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import grpc

from partners.admin_calls import AdminCalls
from partners.audit_calls import AuditCalls
from partners.calls import PERSON_METADATA_KEY
from partners.case_calls import CaseCalls
from partners.channel import PartnerCredentials, gateway_target, secure_channel
from partners.consent_calls import ConsentCalls
from partners.retry import RetryPolicy
from partners.work_calls import WorkCalls

__all__ = ["DEFAULT_RETRY", "PERSON_METADATA_KEY", "PartnerClient"]

DEFAULT_RETRY = RetryPolicy()


class PartnerClient(CaseCalls, ConsentCalls, AdminCalls, AuditCalls, WorkCalls):
    """One partner's connection to the gateway, as the certificate's partner and role.

    Create it inside the event loop that uses it; ``async with`` closes the channel.
    ``person`` is the acting advisor recorded with every call (asserted, not trusted).
    """

    def __init__(
        self,
        target: str | Sequence[str],
        credentials: PartnerCredentials,
        *,
        person: str = "",
        deadline: float = 10.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        server_name: str = "localhost",
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        key_prefix: str = "sdk",
        rng: random.Random | None = None,
    ) -> None:
        channel = secure_channel(
            target, credentials, server_name=server_name, interceptors=interceptors
        )
        self._init(channel, person=person, deadline=deadline, retry=retry, key_prefix=key_prefix)
        self._owns_channel = True
        self._rng = rng or random.Random()
        self.target = gateway_target(target)

    def acting_as(self, person: str) -> PartnerClient:
        """The same connection, recording ``person`` as the acting advisor."""
        other = PartnerClient.__new__(PartnerClient)
        other._init(
            self._channel,
            person=person,
            deadline=self._deadline,
            retry=self._retry,
            key_prefix=self._key_prefix,
            stubs_of=self,
        )
        other._rng = self._rng
        other.target = self.target
        return other
