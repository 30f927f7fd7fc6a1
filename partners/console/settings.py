"""What a console runs with: the partner's gateway connection and certificates,
how people sign in, and its own address."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from partners.channel import PartnerCredentials


@dataclass(slots=True, frozen=True)
class ConsoleSettings:
    """One partner's console. ``advisor`` and ``compliance`` are that partner's
    certificates for those roles; ``work`` (its partner-role certificate), when given,
    lets the console receive ownership offers and consent prompts for its people."""

    partner_id: str
    target: str
    advisor: PartnerCredentials
    compliance: PartnerCredentials | None = None
    work: PartnerCredentials | None = None
    server_name: str = "localhost"
    #: The local accounts file; without it, only the trusted header signs people in.
    accounts: Path | None = None
    #: A header the partner's reverse proxy sets to the signed-in person's id, and one
    #: to their role; honoured only from ``trusted_proxies``.
    trusted_header: str = ""
    trusted_role_header: str = "x-console-role"
    trusted_proxies: tuple[str, ...] = ("127.0.0.1",)
    #: Signs the session cookie; random per start unless given (sessions then end
    #: with the process).
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    session_seconds: int = 8 * 3600
    idle_seconds: int = 30 * 60
    https_only: bool = False
    #: The gateway's checkpoint verifier key, pinned; empty: the first one seen is kept.
    verifier_key: str = ""
    #: Where the desk keeps the offers and consent prompts it received (SQLite); without
    #: it they live in memory alone, and a restart forgets those nobody answered yet.
    inbox: Path | None = None
    purpose: str = "incident-resolution"
    call_deadline: float = 10.0
