"""Bank A: payment cards, their tokens in phone wallets, and 3-D Secure for
online payments; it sees every authorisation that reaches it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from coopgate.v1 import admin_pb2

from partners.enums import Channel, FindingStatus
from partners.reference.backend import Company, Diagnosis, Repair
from partners.work import DiagnosisRequest

FAULTS = {
    "card-blocked": "the customer's card is blocked after a fraud alert",
    "card-expired": "the customer's card expired and its wallet token was not renewed",
    "token-suspended": "the token service suspended the card's wallet token",
    "3ds-failure": "the 3-D Secure access control server times out (online payments)",
}


@dataclass(slots=True)
class Card:
    last4: str
    expiry: str
    status: str
    token: str
    three_ds: str


class BankModel:
    """Each customer's card, its wallet token and 3-D Secure enrolment."""

    def __init__(self, faults: frozenset[str]) -> None:
        self.faults = set(faults)
        self.cards: dict[str, Card] = {}

    def card(self, customer_local_id: str) -> Card:
        if customer_local_id not in self.cards:
            digest = hashlib.sha256(customer_local_id.encode()).hexdigest()
            self.cards[customer_local_id] = Card(
                last4=str(int(digest[:6], 16) % 10000).zfill(4),
                expiry="2024-01" if "card-expired" in self.faults else "2029-08",
                status="blocked" if "card-blocked" in self.faults else "active",
                token="suspended" if "token-suspended" in self.faults else "active",
                three_ds="acs-timeout" if "3ds-failure" in self.faults else "enrolled",
            )
        return self.cards[customer_local_id]

    def diagnose(self, request: DiagnosisRequest) -> Diagnosis:
        if not request.customer_local_id:
            return Diagnosis(FindingStatus.UNKNOWN, 0.2, detail="the customer is not known here")
        card = self.card(request.customer_local_id)
        ref = f"cards://{card.last4}"
        if card.status == "blocked":
            return Diagnosis(
                FindingStatus.FAULTY, 0.97, "CARD_BLOCKED", ref, f"card ••{card.last4} is blocked"
            )
        if card.expiry < "2025":
            return Diagnosis(
                FindingStatus.FAULTY, 0.95, "CARD_EXPIRED", ref, f"card expired {card.expiry}"
            )
        if card.token == "suspended":
            return Diagnosis(
                FindingStatus.FAULTY,
                0.9,
                "WALLET_TOKEN_SUSPENDED",
                f"{ref}/tokens",
                "the phone wallet token is suspended",
            )
        if card.three_ds == "acs-timeout":
            return Diagnosis(
                FindingStatus.DEGRADED,
                0.4,
                "THREE_DS_ACS_TIMEOUT",
                "acs://status",
                "3-D Secure times out; contactless payments do not use it",
            )
        return Diagnosis(
            FindingStatus.OK,
            0.9,
            evidence_ref=f"{ref}/authorisations?last=24h",
            detail=f"card ••{card.last4} and its wallet token active; no contactless "
            "authorisation reached the bank in 24 h (it stops before us)",
        )

    def repair(self, diagnosis: Diagnosis) -> Repair | None:
        fixes = {
            "CARD_BLOCKED": ("card-blocked", "Bank A lifted the block on the card."),
            "CARD_EXPIRED": ("card-expired", "Bank A issued a new card and renewed the token."),
            "WALLET_TOKEN_SUSPENDED": ("token-suspended", "Bank A reactivated the wallet token."),
        }
        if diagnosis.fault_code not in fixes:
            return None
        fault, note = fixes[diagnosis.fault_code]
        self.faults.discard(fault)
        self.cards.clear()
        return Repair(note)


COMPANY = Company(
    kind="bank",
    partner_id="bank-a",
    display_name="Bank A",
    partner_kind=admin_pb2.PARTNER_KIND_BANK,
    faults=FAULTS,
    expertise=("nfc-payment",),
    make_model=BankModel,
    channel_phrases={
        Channel.PHONE: "SMS from the bank",
        Channel.APP: "push in the banking app",
    },
)
