"""The SDK's errors: one small tree, translated from gRPC at the boundary.

A partner's code catches these, never ``grpc.aio.AioRpcError``. Each carries
the gRPC code, the gateway's machine-readable reason (``google.rpc.ErrorInfo``)
and, for bad input, the offending fields (``google.rpc.BadRequest``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(slots=True, frozen=True)
class FieldViolation:
    """One request field the gateway refused, and why."""

    field: str
    description: str


class GatewayError(Exception):
    """A call to the gateway failed.

    ``reason`` is the gateway's stable UPPER_SNAKE_CASE identifier (empty when the
    failure came from the transport); ``attempts`` counts the tries made, retries
    included.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
        method: str = "",
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.violations = tuple(violations)
        self.method = method
        self.attempts = attempts

    def __str__(self) -> str:
        where = f"{self.method}: " if self.method else ""
        why = f" [{self.reason}]" if self.reason else ""
        fields = "".join(f"\n  {v.field}: {v.description}" for v in self.violations)
        return f"{where}{self.code.name}{why}: {self.message}{fields}"

    @property
    def retryable(self) -> bool:
        """Only UNAVAILABLE is safe to retry: the call did not reach a handler, or a
        retried mutation replays under its idempotency key."""
        return self.code == grpc.StatusCode.UNAVAILABLE


class InvalidArgument(GatewayError):
    """The request is malformed; ``violations`` name each offending field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(GatewayError):
    """It does not exist, or this partner may not know that it does."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(GatewayError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(GatewayError):
    """The certificate's partner or role does not allow this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(GatewayError):
    code = grpc.StatusCode.UNAUTHENTICATED


class FailedPrecondition(GatewayError):
    """The case (or consent, or offer) is not in a state where this can be done."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(GatewayError):
    """The gateway could not be reached, even after the retries."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(GatewayError):
    """The call's deadline passed; a mutation may or may not have happened, so
    retry it with the same idempotency key."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unimplemented(GatewayError):
    """This gateway does not serve the RPC (yet)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(GatewayError):
    """The gateway failed; its log holds the reference in the message."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[GatewayError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        Unauthenticated,
        FailedPrecondition,
        Unavailable,
        DeadlineExceeded,
        Unimplemented,
        Internal,
    )
}


def from_rpc_error(
    error: grpc.aio.AioRpcError, *, method: str = "", attempts: int = 1
) -> GatewayError:
    """The SDK error for a failed call, with the rich status details unpacked."""
    code = error.code()
    reason, domain, metadata, violations = _details(error.trailing_metadata())
    cls = _BY_CODE.get(code, GatewayError)
    translated = cls(
        error.details() or code.name,
        reason=reason,
        domain=domain,
        metadata=metadata,
        violations=violations,
        method=method,
        attempts=attempts,
    )
    if cls is GatewayError:
        translated.code = code
    return translated


def _details(
    trailing: grpc.aio.Metadata | None,
) -> tuple[str, str, dict[str, str], list[FieldViolation]]:
    reason, domain = "", ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    for key, value in trailing or ():
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(info):
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Unpack(bad):
                violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
    return reason, domain, metadata, violations
