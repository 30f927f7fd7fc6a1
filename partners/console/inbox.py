"""Where the desk keeps the ownership offers and consent prompts it received, so that a
console restarted (or crashed) still shows them: the gateway sent each once and took
its acknowledgement, which the subscription gives only after the desk's handler
returned, that is after the item was written here.

One SQLite file (the standard library's driver; a handful of rows, each written once
and deleted once), readable by the console's user alone: a prompt names the customer
as this partner knows them. Offers leave at their deadline or answer, prompts at their
answer or after :data:`PROMPT_DAYS`."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from partners.enums import Channel
from partners.items import ConsentPrompt, OwnershipDecision, OwnershipOffer

#: How long a consent prompt nobody answered is kept (the customer may call back).
PROMPT_DAYS = 30

SCHEMA = """
CREATE TABLE IF NOT EXISTS desk (
    kind TEXT NOT NULL,
    case_id TEXT NOT NULL,
    item_key TEXT NOT NULL,
    body TEXT NOT NULL,
    expires_at REAL,
    PRIMARY KEY (kind, case_id, item_key)
)
"""


def _time(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def offer_body(offer: OwnershipOffer) -> dict[str, Any]:
    d = offer.decision
    return {
        "offer_id": offer.offer_id,
        "case_id": offer.case_id,
        "service_id": offer.service_id,
        "deadline": _time(offer.deadline),
        "decision": {
            "decision_id": d.decision_id,
            "relationship_owner_id": d.relationship_owner_id,
            "resolver_ids": list(d.resolver_ids),
            "rule": d.rule,
            "explanation": d.explanation,
        },
    }


def offer_of(body: dict[str, Any]) -> OwnershipOffer:
    d = body["decision"]
    return OwnershipOffer(
        offer_id=body["offer_id"],
        case_id=body["case_id"],
        service_id=body["service_id"],
        deadline=_parse(body["deadline"]),
        decision=OwnershipDecision(
            decision_id=d["decision_id"],
            relationship_owner_id=d["relationship_owner_id"],
            resolver_ids=tuple(d["resolver_ids"]),
            rule=d["rule"],
            explanation=d["explanation"],
        ),
    )


def prompt_body(prompt: ConsentPrompt) -> dict[str, Any]:
    return {
        "consent_request_id": prompt.consent_request_id,
        "case_id": prompt.case_id,
        "customer_local_id": prompt.customer_local_id,
        "channel": int(prompt.channel),
        "source_partner_id": prompt.source_partner_id,
        "recipient_partner_id": prompt.recipient_partner_id,
        "categories": list(prompt.categories),
        "purposes": list(prompt.purposes),
        "reason": prompt.reason,
    }


def prompt_of(body: dict[str, Any]) -> ConsentPrompt:
    return ConsentPrompt(
        consent_request_id=body["consent_request_id"],
        case_id=body["case_id"],
        customer_local_id=body["customer_local_id"],
        channel=Channel.of(body["channel"]),
        source_partner_id=body["source_partner_id"],
        recipient_partner_id=body["recipient_partner_id"],
        categories=tuple(body["categories"]),
        purposes=tuple(body["purposes"]),
        reason=body["reason"],
    )


class Inbox:
    """The desk's items on disk. Calls are short and synchronous; the desk makes them
    from a thread (``asyncio.to_thread``), hence the lock around the one connection."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put_offer(self, offer: OwnershipOffer) -> None:
        """The case's open offer (a newer one replaces the one before)."""
        expires = offer.deadline.timestamp() if offer.deadline else None
        self._put("offer", offer.case_id, "", offer_body(offer), expires)

    def put_prompt(self, prompt: ConsentPrompt, now: dt.datetime) -> None:
        expires = (now + dt.timedelta(days=PROMPT_DAYS)).timestamp()
        self._put("prompt", prompt.case_id, prompt.consent_request_id, prompt_body(prompt), expires)

    def drop_offer(self, case_id: str) -> None:
        self._drop("offer", case_id, "")

    def drop_prompt(self, case_id: str, request_id: str) -> None:
        self._drop("prompt", case_id, request_id)

    def load(self, now: dt.datetime) -> tuple[list[OwnershipOffer], list[ConsentPrompt]]:
        """What is still open at ``now``; what expired is deleted."""
        with self._lock:
            self._db.execute("DELETE FROM desk WHERE expires_at < ?", (now.timestamp(),))
            rows = self._db.execute("SELECT kind, body FROM desk ORDER BY rowid").fetchall()
        offers = [offer_of(json.loads(body)) for kind, body in rows if kind == "offer"]
        prompts = [prompt_of(json.loads(body)) for kind, body in rows if kind == "prompt"]
        return offers, prompts

    def _put(
        self, kind: str, case_id: str, key: str, body: dict[str, Any], expires: float | None
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO desk (kind, case_id, item_key, body, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (kind, case_id, key, json.dumps(body), expires),
            )

    def _drop(self, kind: str, case_id: str, key: str) -> None:
        with self._lock:
            self._db.execute(
                "DELETE FROM desk WHERE kind = ? AND case_id = ? AND item_key = ?",
                (kind, case_id, key),
            )
