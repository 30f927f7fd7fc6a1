"""The gateway's domain errors: one small tree, each carrying its gRPC status.

Domain code raises these; the error interceptor (``gateway.api.interceptors``)
turns them into a ``google.rpc.Status`` with rich details. Anything else that
escapes a handler becomes INTERNAL with no internals in the message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

#: ``google.rpc.ErrorInfo.domain`` for every error the gateway raises.
ERROR_DOMAIN = "coopgate.dev"


@dataclass(slots=True, frozen=True)
class FieldViolation:
    """One offending request field (``google.rpc.BadRequest.FieldViolation``)."""

    field: str
    description: str


class CoopgateError(Exception):
    """Base of every domain error.

    ``reason`` is a stable UPPER_SNAKE_CASE identifier for machines
    (``ErrorInfo.reason``); the message is for humans.
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(CoopgateError):
    """The request is malformed; ``violations`` name each offending field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: Sequence[FieldViolation],
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.violations = tuple(violations)
        fields = ", ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(f"invalid request: {fields}", reason=reason, metadata=metadata)

    @classmethod
    def field(cls, field: str, description: str, *, reason: str | None = None) -> InvalidArgument:
        return cls([FieldViolation(field, description)], reason=reason)


class NotFound(CoopgateError):
    """The thing does not exist, or the caller may not know that it does."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(CoopgateError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class PermissionDenied(CoopgateError):
    """The caller's certificate role or organisation does not allow this."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(CoopgateError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class FailedPrecondition(CoopgateError):
    """The system is not in a state where this can be done (e.g. case closed)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Unavailable(CoopgateError):
    """A dependency (store, Temporal) cannot be reached; the call may be retried."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class Aborted(CoopgateError):
    """The call was cut short (e.g. a watcher too slow to keep up); retry or resume."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"
