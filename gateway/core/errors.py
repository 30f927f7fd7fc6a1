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

# What an error may carry back to the caller. A status travels in trailers, which a
# default grpcio client refuses beyond 8 KiB (16 KiB hard): a 1 MiB id echoed in the
# message and again in the details made 2 MB of them, and the caller saw
# RESOURCE_EXHAUSTED instead of its real status. With these bounds a whole status,
# details base64-encoded, stays under 4 KiB whatever the request held.
MAX_MESSAGE = 240
MAX_METADATA = 8
MAX_METADATA_KEY = 40
MAX_METADATA_VALUE = 64
MAX_VIOLATIONS = 8
MAX_FIELD = 100
MAX_DESCRIPTION = 160


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


@dataclass(slots=True, frozen=True)
class FieldViolation:
    """One offending request field (``google.rpc.BadRequest.FieldViolation``)."""

    field: str
    description: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "field", clip(self.field, MAX_FIELD))
        object.__setattr__(self, "description", clip(self.description, MAX_DESCRIPTION))


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
        message = clip(message, MAX_MESSAGE)
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = {
            clip(key, MAX_METADATA_KEY): clip(value, MAX_METADATA_VALUE)
            for key, value in list((metadata or {}).items())[:MAX_METADATA]
        }


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
        self.violations = tuple(violations[:MAX_VIOLATIONS])
        fields = ", ".join(f"{v.field}: {v.description}" for v in self.violations)
        more = len(violations) - len(self.violations)
        if more:
            fields += f" (and {more} more)"
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


class ResourceExhausted(CoopgateError):
    """A quota is used up for now; ``retry_after`` says when trying again makes sense
    (``google.rpc.RetryInfo``)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after
