"""What the gateway asks of this partner's people rather than its machines: ownership
offers to accept or decline, and consent prompts the advisor puts to the customer on
the line. The console receives them on the partner's work stream (partner-role
certificate), only these two kinds, leaving the rest to the partner's backend; and
``CaseSignals`` tells open case pages to read the case again when something the watch
does not carry changed (a consent granted here, an offer answered). With an
``Inbox`` the desk writes each item down before the subscription acknowledges it, so a
restarted console still has the offers and prompts nobody answered yet."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import defaultdict

from partners.client import PartnerClient
from partners.console.inbox import Inbox
from partners.work import ConsentPrompt, OwnershipOffer, WorkItem, WorkSubscription


class CaseSignals:
    """Wakes the open pages of a case: each page holds a queue while it is open."""

    def __init__(self) -> None:
        self._pages: dict[str, set[asyncio.Queue[str]]] = defaultdict(set)
        self._versions: dict[str, int] = defaultdict(int)

    def version(self, case_id: str) -> int:
        """How many changes the case has had here: a page rendered at one version and
        whose stream opens at another missed one (it is read again)."""
        return self._versions.get(case_id, 0)

    def open(self, case_id: str) -> asyncio.Queue[str]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._pages[case_id].add(queue)
        return queue

    def close(self, case_id: str, queue: asyncio.Queue[str]) -> None:
        pages = self._pages.get(case_id)
        if pages is not None:
            pages.discard(queue)
            if not pages:
                del self._pages[case_id]

    def changed(self, case_id: str, why: str) -> None:
        self._versions[case_id] += 1
        for queue in self._pages.get(case_id, ()):
            queue.put_nowait(why)


class Desk:
    """Offers and consent prompts waiting for one of this partner's people."""

    def __init__(self, signals: CaseSignals, inbox: Inbox | None = None) -> None:
        self.signals = signals
        self.inbox = inbox
        self.offers: dict[str, OwnershipOffer] = {}
        self.prompts: dict[str, dict[str, ConsentPrompt]] = defaultdict(dict)
        self._subscription: WorkSubscription | None = None
        if inbox is not None:
            offers, prompts = inbox.load(dt.datetime.now(dt.UTC))
            for offer in offers:
                self.offers[offer.case_id] = offer
            for prompt in prompts:
                self.prompts[prompt.case_id][prompt.consent_request_id] = prompt

    async def handle(self, item: WorkItem) -> None:
        """Keep the item (written down first: a failed write leaves it unacknowledged,
        so the gateway sends it again) and wake the case's open pages."""
        match item.payload:
            case OwnershipOffer() as offer:
                if self.inbox is not None:
                    await asyncio.to_thread(self.inbox.put_offer, offer)
                self.offers[offer.case_id] = offer
                self.signals.changed(offer.case_id, "offer")
            case ConsentPrompt() as prompt:
                if self.inbox is not None:
                    now = dt.datetime.now(dt.UTC)
                    await asyncio.to_thread(self.inbox.put_prompt, prompt, now)
                self.prompts[prompt.case_id][prompt.consent_request_id] = prompt
                self.signals.changed(prompt.case_id, "prompt")

    def start(self, client: PartnerClient) -> WorkSubscription:
        self._subscription = client.subscribe(
            self.handle, max_in_flight=256, concurrency=4, kinds=(OwnershipOffer, ConsentPrompt)
        )
        return self._subscription

    def offer(self, case_id: str) -> OwnershipOffer | None:
        """The open offer of this case, if any and not past its deadline."""
        offer = self.offers.get(case_id)
        if offer is None:
            return None
        if offer.deadline is not None and offer.deadline < dt.datetime.now(dt.UTC):
            del self.offers[case_id]
            if self.inbox is not None:
                self.inbox.drop_offer(case_id)
            return None
        return offer

    async def answered(self, case_id: str) -> None:
        self.offers.pop(case_id, None)
        if self.inbox is not None:
            await asyncio.to_thread(self.inbox.drop_offer, case_id)
        self.signals.changed(case_id, "offer answered")

    async def forget(self, case_id: str) -> None:
        """The case is gone at the gateway (erased): so are its offer and prompts here."""
        self.offers.pop(case_id, None)
        prompts = self.prompts.pop(case_id, {})
        if self.inbox is not None:
            await asyncio.to_thread(self.inbox.drop_offer, case_id)
            for request_id in prompts:
                await asyncio.to_thread(self.inbox.drop_prompt, case_id, request_id)

    def prompts_of(self, case_id: str) -> list[ConsentPrompt]:
        return list(self.prompts.get(case_id, {}).values())

    def prompt(self, case_id: str, request_id: str) -> ConsentPrompt | None:
        return self.prompts.get(case_id, {}).get(request_id)

    async def prompt_answered(self, case_id: str, request_id: str) -> None:
        waiting = self.prompts.get(case_id, {})
        waiting.pop(request_id, None)
        if not waiting:
            self.prompts.pop(case_id, None)
        if self.inbox is not None:
            await asyncio.to_thread(self.inbox.drop_prompt, case_id, request_id)
        self.signals.changed(case_id, "consent")
