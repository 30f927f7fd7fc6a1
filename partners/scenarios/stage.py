"""What a scenario plays on: the cast of partners, their advisors' and the
administrator's connections, the narration, and the outcome it reports.

A scenario is a script of the humans' actions — customers, advisors, the
gateway's administrator — while the reference backends (running elsewhere)
do the companies' automated part.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from coopgate.v1 import admin_pb2, cases_pb2

from partners.channel import PartnerCredentials
from partners.client import PartnerClient
from partners.enums import CaseStatus, Purpose
from partners.reference import COMPANIES

#: The administrator's identity in the gateway's certificates.
ADMIN_PARTNER = "coopgate"
CATALOGUE = {c.kind: c.partner_id for c in COMPANIES.values()}

CredentialsFor = Callable[[str, str], PartnerCredentials]
"""The certificate files for (partner id, role: partner|advisor|admin|compliance)."""
WaitObserver = Callable[[str | None, float], None]
"""What a stage's wait is for (None: it ended) and the seconds it has lasted."""


@dataclass(slots=True, frozen=True)
class Cast:
    """Which partner plays each company (by kind): the catalogue's by default.

    A cast with a ``tag`` plays on its own copies of the services, named
    ``<service>-<tag>``, so that it shares no work queue with anybody else.
    """

    partners: Mapping[str, str] = field(default_factory=lambda: dict(CATALOGUE))
    tag: str = ""

    @classmethod
    def fresh(cls, tag: str) -> Cast:
        """New partner ids for every company (register them before playing)."""
        return cls({kind: f"{kind}-{tag}" for kind in CATALOGUE}, tag)

    def __getitem__(self, kind: str) -> str:
        return self.partners[kind]

    def kind_of(self, catalogue_partner: str) -> str:
        return next(kind for kind, partner in CATALOGUE.items() if partner == catalogue_partner)


@dataclass(slots=True, frozen=True)
class Timings:
    """Durations (seconds) for a scenario's own copy of a service, so deadlines and
    SLA breaches happen within the scenario rather than in hours."""

    diagnosis: Mapping[str, float]
    acceptance: float
    time_to_owner: float
    time_to_resolution: float
    confirmation_window: float


class Narrator(Protocol):
    """Where a scenario tells what happens (the demo prints it; tests record it)."""

    def chapter(self, title: str, story: str) -> None: ...

    def step(self, text: str) -> None: ...

    def view(
        self, title: str, view: cases_pb2.CaseView, *, reader: str, only_from: str = ""
    ) -> None:
        """Show what ``reader`` sees; with ``only_from``, just that partner's items and
        what consent withheld of them."""

    def decision(self, decision: cases_pb2.OwnershipDecision) -> None: ...


@dataclass(slots=True)
class RecordingNarrator:
    """Keeps what was told, in order, as text (for tests and plain logs)."""

    lines: list[str] = field(default_factory=list)
    views: list[tuple[str, cases_pb2.CaseView]] = field(default_factory=list)

    def chapter(self, title: str, story: str) -> None:
        self.lines.append(f"== {title}: {story}")

    def step(self, text: str) -> None:
        self.lines.append(text)

    def view(
        self, title: str, view: cases_pb2.CaseView, *, reader: str, only_from: str = ""
    ) -> None:
        self.views.append((title, view))
        self.lines.append(f"[view] {title} ({reader})")

    def decision(self, decision: cases_pb2.OwnershipDecision) -> None:
        self.lines.append(f"[decision] {decision.rule}: {decision.explanation}")


@dataclass(slots=True, frozen=True)
class ConsentEffect:
    """What one consent changed in an advisor's view of the case."""

    source_partner_id: str
    category: str
    withheld_before: int
    shown_with_consent: int
    withheld_after_withdrawal: int


@dataclass(slots=True, frozen=True)
class Outcome:
    """How a scenario ended, as the relationship owner's advisor sees it."""

    scenario: str
    case_id: str
    service_id: str
    customer_local_id: str
    status: CaseStatus
    owner: str
    resolvers: tuple[str, ...]
    decision: cases_pb2.OwnershipDecision | None
    escalations: tuple[str, ...]
    owner_view: cases_pb2.CaseView
    consent: ConsentEffect | None = None
    views: Mapping[str, cases_pb2.CaseView] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Scenario:
    """A script of customer and advisor actions, with the faults the companies'
    backends must run with for the story to happen (company kind → ``--fault`` values)."""

    name: str
    title: str
    story: str
    companies: tuple[str, ...]
    faults: Mapping[str, tuple[str, ...]]
    play: Callable[[Stage], Awaitable[Outcome]]


class ScenarioFailed(Exception):
    """The story did not happen as scripted (a wait ran out); says what was awaited."""


class Stage:
    """Connections for every partner and role a scenario acts as, over one cast."""

    def __init__(
        self,
        target: str,
        credentials: CredentialsFor,
        *,
        cast: Cast | None = None,
        narrator: Narrator | None = None,
        server_name: str = "localhost",
        poll: float = 0.2,
        patience: float = 60.0,
        on_wait: WaitObserver | None = None,
    ) -> None:
        self.target = target
        self.cast = cast or Cast()
        self.narrator: Narrator = narrator or RecordingNarrator()
        self.credentials = credentials
        self._server_name = server_name
        self._poll = poll
        #: Told at every poll of a wait (`until`) what is awaited and for how long so
        #: far, and (None) when the wait ends: the demo shows it as progress.
        self.on_wait = on_wait
        self._patience = patience
        self._clients: dict[tuple[str, str], PartnerClient] = {}
        #: The copies of catalogue services `service` defined, in order (see `retire_copies`).
        self.copies: list[str] = []

    def client(self, partner: str, role: str = "partner", person: str = "") -> PartnerClient:
        """A connection as ``partner`` with ``role``'s certificate, acting as ``person``."""
        key = (partner, role)
        if key not in self._clients:
            self._clients[key] = PartnerClient(
                self.target,
                self.credentials(partner, role),
                server_name=self._server_name,
                key_prefix=f"scenario-{partner}",
            )
        base = self._clients[key]
        return base.acting_as(person) if person else base

    @property
    def admin(self) -> PartnerClient:
        return self.client(ADMIN_PARTNER, "admin", "scenario-admin")

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    def customer(self, partner: str) -> str:
        """A new customer number at ``partner`` (each run has its own customer)."""
        return f"{partner}-cust-{uuid.uuid4().hex[:8]}"

    async def service(self, base: str, timings: Timings | None = None) -> str:
        """The service to play on: the catalogue's ``base`` itself, or, for a tagged
        cast or short timings, an own copy with the cast's partners."""
        if not self.cast.tag and timings is None:
            return base
        service = admin_pb2.Service()
        service.CopyFrom(await self.admin.get_service(base))
        service.service_id = f"{base}-{self.cast.tag or 'drill'}"
        service.display_name = f"{service.display_name} ({self.cast.tag or 'drill'})"
        for component in service.components:
            component.partner_id = self.cast[self.cast.kind_of(component.partner_id)]
            if timings is not None and component.name in timings.diagnosis:
                component.diagnosis_deadline.FromTimedelta(
                    timedelta(seconds=timings.diagnosis[component.name])
                )
        policy = service.ownership_policy
        if policy.host_partner_id:
            policy.host_partner_id = self.cast[self.cast.kind_of(policy.host_partner_id)]
        if timings is not None:
            policy.acceptance_deadline.FromTimedelta(timedelta(seconds=timings.acceptance))
            levels = service.service_level
            levels.time_to_owner.FromTimedelta(timedelta(seconds=timings.time_to_owner))
            levels.time_to_resolution.FromTimedelta(timedelta(seconds=timings.time_to_resolution))
            levels.confirmation_window.FromTimedelta(timedelta(seconds=timings.confirmation_window))
        defined = await self.admin.define_service(service)
        self.copies.append(defined.service_id)
        return defined.service_id

    async def retire_copies(self, since: int = 0) -> None:
        """Retire the copies `service` defined (from the ``since``-th on), their sharing
        agreements ended with them: the catalogue is left as the scenario found it."""
        for service_id in dict.fromkeys(self.copies[since:]):
            retired = await self.admin.retire_service(service_id)
            ended = len(retired.ended_agreement_ids)
            self.narrator.step(
                f"Retired {service_id}, the scenario's copy, and ended its {ended} sharing "
                "agreement(s): the catalogue is as the scenario found it."
            )
        del self.copies[since:]

    async def agree(
        self,
        service_id: str,
        source: str,
        recipient: str,
        categories: Iterable[str],
        purposes: Iterable[str],
    ) -> admin_pb2.SharingAgreement:
        """The partners' sharing agreement source → recipient (defined by the administrator)."""
        agreement = admin_pb2.SharingAgreement(
            agreement_id=f"agr-{service_id}-{source}-{recipient}"[:64],
            source_partner_id=source,
            recipient_partner_id=recipient,
            service_id=service_id,
            categories=list(categories),
            purposes=list(purposes),
        )
        return await self.admin.define_sharing_agreement(agreement)

    async def until(
        self, what: str, probe: Callable[[], Awaitable[bool]], patience: float | None = None
    ) -> None:
        """Poll ``probe`` until it holds; ScenarioFailed naming ``what`` when it never does."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(patience or self._patience):
                while True:
                    if await probe():
                        return
                    if self.on_wait is not None:
                        self.on_wait(what, time.monotonic() - started)
                    await asyncio.sleep(self._poll)
        except TimeoutError:
            raise ScenarioFailed(f"gave up waiting for {what}") from None
        finally:
            if self.on_wait is not None:
                self.on_wait(None, time.monotonic() - started)

    async def view_when(
        self,
        reader: PartnerClient,
        case_id: str,
        what: str,
        check: Callable[[cases_pb2.CaseView], bool],
        *,
        purpose: str = Purpose.INCIDENT_RESOLUTION,
        patience: float | None = None,
    ) -> cases_pb2.CaseView:
        """The reader's view of the case once ``check`` holds for it."""
        seen: list[cases_pb2.CaseView] = []

        async def probe() -> bool:
            view = await reader.get_case_view(case_id, purpose=purpose)
            seen[:] = [view]
            return check(view)

        await self.until(what, probe, patience)
        return seen[0]


def told(milestone: str) -> Callable[[cases_pb2.CaseView], bool]:
    """The customer was notified of ``milestone``: the workflow is past it (the
    status in the view alone can run ahead of the workflow's own state)."""
    return lambda view: any(
        item.notification.milestone == milestone
        for item in view.timeline
        if item.WhichOneof("item") == "notification"
    )


def closed(view: cases_pb2.CaseView) -> bool:
    """Closed, and the customer was told so."""
    return CaseStatus.of(view.header.status) == CaseStatus.CLOSED and told("closed")(view)


def owned_by(partner: str) -> Callable[[cases_pb2.CaseView], bool]:
    return lambda view: (
        view.header.relationship_owner_id == partner
        and CaseStatus.of(view.header.status)
        in (CaseStatus.OWNED, CaseStatus.RESOLVED, CaseStatus.CLOSED)
    )
