"""The case service's line to each case's incident workflow."""

from __future__ import annotations

from typing import Protocol

from workflows import contracts


class Incidents(Protocol):
    """The line to each case's incident workflow (`TemporalIncidents`, in orchestration)."""

    async def ensure_started(
        self, case_id: str, service_id: str, first_contact_partner_id: str
    ) -> None: ...

    async def send_finding(self, case_id: str, finding: contracts.Finding) -> None: ...

    async def accept(self, case_id: str, answer: contracts.OwnershipAnswer) -> str: ...

    async def decline(self, case_id: str, answer: contracts.OwnershipAnswer) -> str: ...

    async def resolve(self, case_id: str, request: contracts.ResolveRequest) -> str: ...

    async def confirm(self, case_id: str, answer: contracts.CustomerAnswer) -> str: ...

    async def reopen(self, case_id: str, answer: contracts.CustomerAnswer) -> str: ...
