"""Who is calling: the partner and role from the verified client certificate.

The acting human (an advisor id) travels in the ``x-coopgate-person``
metadata key; it is recorded as asserted by the partner, never trusted for
authorization.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass

from gateway.core.errors import PermissionDenied, Unauthenticated


class Role(enum.StrEnum):
    """What a certificate's holder may do (its OU): a partner's backend, its advisors, a
    compliance officer, an administrator of the gateway."""

    PARTNER = "partner"
    ADVISOR = "advisor"
    COMPLIANCE = "compliance"
    ADMIN = "admin"


PERSON_METADATA_KEY = "x-coopgate-person"
_MAX_PERSON_LEN = 200


@dataclass(slots=True, frozen=True)
class Caller:
    partner_id: str
    role: Role
    person_id: str = ""

    def require(self, *roles: Role) -> None:
        """Raise PERMISSION_DENIED unless the caller holds one of ``roles``."""
        if self.role not in roles:
            allowed = ", ".join(r.value for r in roles)
            raise PermissionDenied(
                f"role {self.role.value!r} may not do this (needs one of: {allowed})",
                reason="ROLE_NOT_ALLOWED",
                metadata={"role": self.role.value, "allowed": allowed},
            )


_current: ContextVar[Caller | None] = ContextVar("coopgate_caller", default=None)


def current_caller() -> Caller:
    """The caller of the RPC being served (set by the gateway's interceptor)."""
    caller = _current.get()
    if caller is None:
        raise Unauthenticated("no authenticated caller")
    return caller


def person_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    for key, value in metadata or ():
        if key == PERSON_METADATA_KEY:
            text = value.decode() if isinstance(value, bytes) else value
            return text[:_MAX_PERSON_LEN]
    return ""


def set_caller(caller: Caller | None) -> object:
    return _current.set(caller)


def reset_caller(token: object) -> None:
    """Undo `set_caller`. A server stream abandoned while suspended at a reply is closed
    later by the loop, in a task and context of its own, where this call's caller was
    never set: there is nothing to undo there (and ContextVar.reset would refuse)."""
    with contextlib.suppress(ValueError):
        _current.reset(token)  # type: ignore[arg-type]


_deadline: ContextVar[float | None] = ContextVar("coopgate_deadline", default=None)


def set_deadline(seconds_left: float | None) -> object:
    """The caller's deadline for the RPC being served (set by the gateway's interceptor),
    from the seconds it has left; None when it set none."""
    return _deadline.set(None if seconds_left is None else time.monotonic() + seconds_left)


def reset_deadline(token: object) -> None:
    with contextlib.suppress(ValueError):
        _deadline.reset(token)  # type: ignore[arg-type]


def time_left(default: float) -> float:
    """Seconds left before the caller gives up, at most ``default`` (``default`` when the
    caller set no deadline, or outside any RPC)."""
    deadline = _deadline.get()
    return default if deadline is None else min(default, deadline - time.monotonic())
