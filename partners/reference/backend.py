"""A reference partner backend: one company's systems model behind the SDK.

It answers diagnosis requests from its model, accepts or declines ownership
offers by policy (expertise, load), shows customer notifications on the
channel the customer used, lets its customers answer consent prompts, and, as
a resolver, repairs its component and says so on the case. Behaviour faults
(slow, dropping the stream, garbage, silence) make it misbehave on purpose.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from coopgate.v1 import admin_pb2

from partners.client import PartnerClient
from partners.enums import AuthorKind, Channel, ErasureReason, FindingStatus, Purpose
from partners.errors import (
    FailedPrecondition,
    GatewayError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from partners.work import (
    CaseNotice,
    ConsentPrompt,
    CustomerNotification,
    DiagnosisRequest,
    ErasureNotice,
    OwnershipOffer,
    WorkItem,
    WorkSubscription,
)

#: What a customer's note from a partner's systems is filed under on the case.
NOTE_CATEGORY = "interaction.history"


@dataclass(slots=True, frozen=True)
class Diagnosis:
    """A company's verdict on its component, with the human-readable reason."""

    status: FindingStatus
    confidence: float
    fault_code: str = ""
    evidence_ref: str = ""
    detail: str = ""


@dataclass(slots=True, frozen=True)
class Repair:
    """What a resolver did to its component, written on the case for the owner's advisor."""

    note: str
    channel: Channel = Channel.APP


class CompanyModel(Protocol):
    """A company's own systems, as far as a reference backend needs them."""

    def diagnose(self, request: DiagnosisRequest) -> Diagnosis: ...

    def repair(self, diagnosis: Diagnosis) -> Repair | None: ...


def serves(service_id: str, base: str) -> bool:
    """Whether ``service_id`` is the catalogue service ``base`` or a copy of it
    (``nfc-payment-drill``), as scenarios define for short deadlines."""
    return service_id == base or service_id.startswith(f"{base}-")


@dataclass(slots=True, frozen=True)
class Faults:
    """What is broken: ``model`` faults in the company's systems, and behaviour
    faults of the backend itself (``slow`` seconds before answering, dropping its
    stream, answering garbage first, not answering at all)."""

    model: frozenset[str] = frozenset()
    slow: float = 0.0
    drop_stream: bool = False
    garbage: bool = False
    silent: bool = False

    BEHAVIOUR = {
        "slow[:SECONDS]": "answer diagnosis requests and offers after a delay (default 2 s)",
        "drop-stream": "drop the work stream on every new item (it comes back redelivered)",
        "garbage": "answer a diagnosis request with a malformed finding first",
        "silent": "never answer diagnosis requests or ownership offers",
    }

    @classmethod
    def parse(cls, values: Sequence[str], known: Mapping[str, str]) -> Faults:
        """Faults from ``--fault`` values; an unknown name raises ValueError listing the known."""
        model: set[str] = set()
        slow, drop, garbage, silent = 0.0, False, False, False
        for value in values:
            name, _, arg = value.partition(":")
            if name == "slow":
                try:
                    slow = float(arg) if arg else 2.0
                except ValueError:
                    raise ValueError(f"slow takes seconds, not {arg!r}") from None
            elif name == "drop-stream":
                drop = True
            elif name == "garbage":
                garbage = True
            elif name == "silent":
                silent = True
            elif name in known:
                model.add(name)
            else:
                choices = ", ".join([*known, *cls.BEHAVIOUR])
                raise ValueError(f"unknown fault {value!r}; choose from: {choices}")
        return cls(frozenset(model), slow, drop, garbage, silent)


@dataclass(slots=True, frozen=True)
class OwnershipPolicy:
    """When this company agrees to own a customer relationship: the service is in
    its expertise and it has room for one more case."""

    expertise: tuple[str, ...]
    capacity: int = 25

    def decide(self, service_id: str, owned: int) -> tuple[bool, str]:
        if not any(serves(service_id, base) for base in self.expertise):
            return False, f"outside our expertise (we support {', '.join(self.expertise)})"
        if owned >= self.capacity:
            return False, f"at capacity ({owned} open cases owned, limit {self.capacity})"
        return True, f"within our expertise; load {owned + 1}/{self.capacity}"


@dataclass(slots=True, frozen=True)
class Company:
    """One kind of company the reference backends can play."""

    kind: str
    partner_id: str
    display_name: str
    partner_kind: admin_pb2.PartnerKind.ValueType
    faults: Mapping[str, str]
    expertise: tuple[str, ...]
    make_model: Callable[[frozenset[str]], CompanyModel]
    #: How this company reaches a customer on each channel (for the printed notification).
    channel_phrases: Mapping[Channel, str] = field(default_factory=dict)


DEFAULT_PHRASES: Mapping[Channel, str] = {
    Channel.PHONE: "text message to the customer's phone",
    Channel.IVR: "automated voice call-back",
    Channel.CHAT: "chat message",
    Channel.EMAIL: "e-mail",
    Channel.WEB: "web self-care inbox",
    Channel.APP: "push notification in the app",
    Channel.STORE: "note handed over at the store counter",
    Channel.SOCIAL: "direct message",
}


@dataclass(slots=True, frozen=True)
class Shown:
    """A customer notification as this backend displayed it."""

    case_id: str
    customer_local_id: str
    channel: Channel
    milestone: str
    message: str


#: How a backend's output marks what an injected fault made it do (never a real error).
INJECTED = "injected"


class InjectedFault(Exception):
    """A failure made on purpose by an injected fault (a drill): its message says so, as
    does the SDK's log line when the item is left for redelivery."""

    def __init__(self, fault: str, what: str) -> None:
        super().__init__(f"injected fault {fault} (expected, a drill): {what}")
        self.fault = fault


class StreamDropped(InjectedFault):
    """Raised on purpose by the drop-stream fault so the item stays unacknowledged."""

    def __init__(self, work_id: str) -> None:
        super().__init__("drop-stream", f"{work_id} left for redelivery")


class GarbageRefused(InjectedFault):
    """The gateway refused the garbage finding, as it must: the item is redelivered and
    then answered properly."""

    def __init__(self, work_id: str) -> None:
        super().__init__("garbage", f"{work_id} refused as it should be, left for redelivery")


def short(case_id: str) -> str:
    return case_id[:13]


class ReferenceBackend:
    """The automated side of one company on the gateway (partner role)."""

    def __init__(
        self,
        company: Company,
        client: PartnerClient,
        *,
        partner_id: str | None = None,
        faults: Faults | None = None,
        capacity: int = 25,
        out: Callable[[str], None] = print,
        standing_faults: bool = False,
    ) -> None:
        self.company = company
        self.partner_id = partner_id or company.partner_id
        self.client = client
        self.faults = faults or Faults()
        self.model = company.make_model(self.faults.model)
        self.policy = OwnershipPolicy(company.expertise, capacity)
        #: Whether the injected model faults stand: a repair fixes the case, and the next
        #: case meets the faults again (what `coopgate up` runs its partners with, so the
        #: README's tour and the demo can be played, and played again, on one stack).
        self.standing_faults = standing_faults
        self._out = out
        self.subscription: WorkSubscription | None = None
        self.diagnoses: dict[str, Diagnosis] = {}
        self.owned: set[str] = set()
        self.declined: list[tuple[str, str]] = []
        self.repaired: dict[str, Repair] = {}
        self.shown: list[Shown] = []
        self.notices: list[CaseNotice] = []
        self.consents: list[tuple[str, bool]] = []
        self.refused: list[GatewayError] = []
        #: Erasure notices acted on (their ids only: what they named is forgotten).
        self.erasures: list[str] = []

    def say(self, what: str, text: str) -> None:
        stamp = dt.datetime.now().strftime("%H:%M:%S.%f")[:-3]
        self._out(f"{stamp} {what:<10} {text}")

    async def run(self) -> None:
        """Handle this partner's work until cancelled or stopped."""
        self.subscription = self.client.subscribe(self.handle, max_in_flight=32, concurrency=8)
        await self.subscription.run()

    def stop(self) -> None:
        if self.subscription is not None:
            self.subscription.stop()

    async def handle(self, item: WorkItem) -> None:
        if self.faults.drop_stream and item.redeliveries == 0 and self.subscription is not None:
            kind = type(item.payload).__name__ if item.payload is not None else "item"
            if isinstance(item.payload, ErasureNotice):
                case = ", ".join(map(short, item.payload.case_ids))
            else:
                case = short(item.payload.case_id) if item.payload is not None else ""
            self.say(
                INJECTED,
                f"fault drop-stream (expected): dropping the work stream on a {kind} for "
                f"{case}; it comes back redelivered",
            )
            self.subscription.reconnect()
            raise StreamDropped(item.work_id)
        try:
            match item.payload:
                case DiagnosisRequest() as request:
                    await self._diagnose(item, request)
                case OwnershipOffer() as offer:
                    await self._offer(item, offer)
                case CustomerNotification() as notification:
                    self._show(notification)
                case ConsentPrompt() as prompt:
                    await self._consent(item, prompt)
                case CaseNotice() as notice:
                    await self._notice(item, notice)
                case ErasureNotice() as erasure:
                    self._forget(erasure)
                case None:
                    self.say("skip", f"unknown work kind in {item.work_id}")
        except (FailedPrecondition, NotFound, PermissionDenied) as exc:
            self.say("stale", f"{exc} (nothing left to do)")
        except GatewayError as exc:
            self.refused.append(exc)
            self.say("refused", str(exc).partition("\n")[0])
            raise

    # -- work kinds ------------------------------------------------------------

    async def _diagnose(self, item: WorkItem, request: DiagnosisRequest) -> None:
        if self.faults.silent:
            self.say(
                INJECTED,
                f"fault silent (expected): not answering {request.component} for "
                f"{short(request.case_id)}; the gateway records it UNRESPONSIVE at its deadline",
            )
            return
        if self.faults.slow:
            self.say(
                INJECTED,
                f"fault slow (expected): answering {short(request.case_id)} after "
                f"{self.faults.slow:g} s",
            )
            await asyncio.sleep(self.faults.slow)
        if self.faults.garbage and item.redeliveries == 0:
            self.say(
                INJECTED,
                f"fault garbage (expected): answering a malformed finding for "
                f"{short(request.case_id)} first",
            )
            try:
                await self.client.submit_finding(
                    request.case_id,
                    request_id=request.request_id,
                    component="",
                    status=FindingStatus.UNSPECIFIED,
                    confidence=7.5,
                    fault_code="?" * 120,
                    idempotency_key=f"{item.work_id}/garbage",
                )
            except InvalidArgument as exc:
                self.refused.append(exc)
                fields = ", ".join(v.field for v in exc.violations)
                self.say(
                    INJECTED,
                    f"fault garbage (expected): the gateway refused it as it should "
                    f"(INVALID_ARGUMENT on {fields}); answering properly on redelivery",
                )
                raise GarbageRefused(item.work_id) from None
        diagnosis = self.model.diagnose(request)
        await self.client.submit_finding(
            request.case_id,
            request_id=request.request_id,
            component=request.component,
            status=diagnosis.status,
            confidence=diagnosis.confidence,
            fault_code=diagnosis.fault_code,
            evidence_ref=diagnosis.evidence_ref,
            idempotency_key=f"{item.work_id}/finding",
        )
        self.diagnoses[request.case_id] = diagnosis
        code = f" {diagnosis.fault_code}" if diagnosis.fault_code else ""
        cause = ""
        if self.faults.model and diagnosis.status in (FindingStatus.FAULTY, FindingStatus.DEGRADED):
            cause = f" [{INJECTED} fault: {', '.join(sorted(self.faults.model))}]"
        self.say(
            "diagnosis",
            f"{short(request.case_id)} {request.component} → {diagnosis.status.name}{code} "
            f"({diagnosis.confidence:.2f}): {diagnosis.detail}{cause}",
        )

    async def _offer(self, item: WorkItem, offer: OwnershipOffer) -> None:
        if self.faults.silent:
            self.say(
                INJECTED,
                f"fault silent (expected): not answering the offer for {short(offer.case_id)}",
            )
            return
        if self.faults.slow:
            await asyncio.sleep(self.faults.slow)
        accept, why = self.policy.decide(offer.service_id, len(self.owned))
        if accept:
            await self.client.accept_ownership(
                offer.case_id, offer.offer_id, idempotency_key=f"{item.work_id}/accept"
            )
            self.owned.add(offer.case_id)
            self.say("offer", f"{short(offer.case_id)} accepted: we own the relationship ({why})")
        else:
            await self.client.decline_ownership(
                offer.case_id, offer.offer_id, reason=why, idempotency_key=f"{item.work_id}/decline"
            )
            self.declined.append((offer.case_id, why))
            self.say("offer", f"{short(offer.case_id)} declined: {why}")

    def _show(self, notification: CustomerNotification) -> None:
        phrase = self.company.channel_phrases.get(notification.channel) or DEFAULT_PHRASES.get(
            notification.channel, notification.channel.label
        )
        self.shown.append(
            Shown(
                notification.case_id,
                notification.customer_local_id,
                notification.channel,
                notification.milestone,
                notification.message,
            )
        )
        if notification.milestone == "closed":
            self.owned.discard(notification.case_id)
        self.say(
            "notify",
            f"{notification.channel.name} ({phrase}) to {notification.customer_local_id}: "
            f"{notification.message}",
        )

    def _forget(self, erasure: ErasureNotice) -> None:
        """The customer was erased: forget them (by our id) and the cases named; at the
        end of the cases' retention, only those cases."""
        local = erasure.customer_local_id
        cases = {s.case_id for s in self.shown if local and s.customer_local_id == local}
        cases.update(erasure.case_ids)
        self.shown = [
            s
            for s in self.shown
            if s.case_id not in cases and not (local and s.customer_local_id == local)
        ]
        for case_id in cases:
            self.diagnoses.pop(case_id, None)
            self.repaired.pop(case_id, None)
            self.owned.discard(case_id)
        self.notices = [n for n in self.notices if n.case_id not in cases]
        self.erasures.append(erasure.notice_id)
        what = (
            "retention expired"
            if erasure.reason == ErasureReason.RETENTION_EXPIRED
            else "customer erased"
        )
        self.say("erasure", f"{what}: forgot {len(cases)} case(s) ({erasure.notice_id})")

    async def _consent(self, item: WorkItem, prompt: ConsentPrompt) -> None:
        """The customer answers on the channel they use: yes to fixing the incident,
        no to anything that includes marketing."""
        agrees = Purpose.MARKETING not in prompt.purposes
        flow = (
            f"{prompt.source_partner_id} → {prompt.recipient_partner_id} "
            f"{', '.join(prompt.categories)} for {', '.join(prompt.purposes)}"
        )
        if agrees:
            await self.client.grant_consent(
                customer_local_id=prompt.customer_local_id,
                source_partner_id=prompt.source_partner_id,
                recipient_partner_ids=[prompt.recipient_partner_id],
                categories=prompt.categories,
                purposes=prompt.purposes,
                channel=prompt.channel,
                notice_version=f"{self.partner_id}-privacy-notice-v3",
                consent_request_id=prompt.consent_request_id,
                idempotency_key=f"{item.work_id}/grant",
            )
        else:
            await self.client.refuse_consent_request(
                prompt.consent_request_id,
                channel=prompt.channel,
                idempotency_key=f"{item.work_id}/refuse",
            )
        self.consents.append((prompt.consent_request_id, agrees))
        answer = "agreed" if agrees else "refused"
        self.say("consent", f"customer {answer} on {prompt.channel.name}: {flow}")

    async def _notice(self, item: WorkItem, notice: CaseNotice) -> None:
        self.notices.append(notice)
        if notice.kind == "escalation" and f"expert of {self.partner_id}" in notice.message:
            self.say("notice", f"{short(notice.case_id)} {notice.message} — level-2 expert paged")
            return
        self.say("notice", f"{short(notice.case_id)} {notice.kind}: {notice.message}")
        if notice.kind != "ownership" or notice.case_id in self.repaired:
            return
        header = (
            await self.client.get_case_view(notice.case_id, purpose=Purpose.INCIDENT_RESOLUTION)
        ).header
        if header.relationship_owner_id == self.partner_id:
            self.owned.add(notice.case_id)
        if self.partner_id not in header.resolver_ids:
            return
        diagnosis = self.diagnoses.get(notice.case_id)
        repair = self.model.repair(diagnosis) if diagnosis is not None else None
        if repair is None:
            self.say("repair", f"{short(notice.case_id)}: nothing on record to repair")
            return
        await self.client.append_interaction(
            notice.case_id,
            channel=repair.channel,
            summary=repair.note,
            author_kind=AuthorKind.SYSTEM,
            author_id=f"{self.partner_id}-operations",
            category=NOTE_CATEGORY,
            idempotency_key=f"repair-{notice.case_id}",
        )
        self.fixed(notice.case_id, repair)

    def fixed(self, case_id: str, repair: Repair) -> None:
        """The repair of the case is done and said on it; with standing faults, the
        injected ones are back for the next case (a drill's faults do not run out)."""
        self.repaired[case_id] = repair
        self.say("repair", f"{short(case_id)}: {repair.note}")
        if self.standing_faults and self.faults.model:
            self.model = self.company.make_model(self.faults.model)
            injected = ", ".join(sorted(self.faults.model))
            self.say(INJECTED, f"fault {injected} stands (a drill): the next case meets it again")
