"""Signed consent receipts: JWS compact serialization (RFC 7515) with EdDSA over
Ed25519 (RFC 8037), signed by the gateway's receipt key.

Anyone holding the gateway's published public key verifies a receipt offline;
the claims follow the Kantara consent receipt (who, what, for what, how long,
under which notice, collected where).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from coopgate.v1 import common_pb2, consents_pb2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.crypto.keyfiles import read_secret

RECEIPT_VERSION = "coopgate-consent-receipt/1"


class ReceiptError(ValueError):
    """A receipt that is malformed or whose signature does not verify."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise ReceiptError("receipt is not base64url") from exc


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


class ReceiptSigner:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key_bytes = private_key.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw
        )
        self.key_id = key_id(self.public_key_bytes)

    @classmethod
    def from_file(cls, path: Path) -> ReceiptSigner:
        """Load the 32-byte Ed25519 private key (random bytes), created on first use."""
        return cls(Ed25519PrivateKey.from_private_bytes(read_secret(path, 32)))

    def receipt(self, consent: consents_pb2.Consent, event: str) -> consents_pb2.ConsentReceipt:
        claims = {
            "version": RECEIPT_VERSION,
            "event": event,
            "consent_id": consent.consent_id,
            "subject": consent.subject_id,
            "controller": consent.source_partner_id,
            "recipients": list(consent.recipient_partner_ids),
            "categories": list(consent.categories),
            "purposes": list(consent.purposes),
            "legal_basis": consents_pb2.LegalBasis.Name(consent.legal_basis),
            "collected_by": consent.collected_by_partner_id,
            "channel": common_pb2.Channel.Name(consent.channel),
            "notice_version": consent.notice_version,
            "valid_from": consent.valid_from.ToJsonString(),
            "valid_until": (
                consent.valid_until.ToJsonString() if consent.HasField("valid_until") else None
            ),
            "issued_at": consent.events[-1].at.ToJsonString() if consent.events else None,
        }
        payload = json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()
        header = json.dumps({"alg": "EdDSA", "kid": self.key_id}, separators=(",", ":")).encode()
        signing_input = f"{_b64url(header)}.{_b64url(payload)}"
        signature = self._key.sign(signing_input.encode())
        return consents_pb2.ConsentReceipt(
            payload=payload,
            signature=signature,
            key_id=self.key_id,
            jws=f"{signing_input}.{_b64url(signature)}",
        )


def verify_receipt(jws: str, public_key: bytes) -> dict[str, Any]:
    """Verify a receipt offline; returns its claims or raises ReceiptError."""
    parts = jws.strip().split(".")
    if len(parts) != 3:
        raise ReceiptError("a receipt has three dot-separated parts")
    try:
        header = json.loads(_unb64url(parts[0]))
    except ValueError as exc:
        raise ReceiptError("receipt header is not JSON") from exc
    if not isinstance(header, dict) or header.get("alg") != "EdDSA":
        raise ReceiptError("receipt is not signed with EdDSA")
    if len(public_key) != 32:
        raise ReceiptError("an Ed25519 public key is 32 bytes")
    if header.get("kid") != key_id(public_key):
        raise ReceiptError("receipt was signed by another key")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            _unb64url(parts[2]), f"{parts[0]}.{parts[1]}".encode()
        )
    except InvalidSignature as exc:
        raise ReceiptError("signature does not verify: the receipt was altered") from exc
    try:
        claims = json.loads(_unb64url(parts[1]))
    except ValueError as exc:
        raise ReceiptError("receipt payload is not JSON") from exc
    if not isinstance(claims, dict) or claims.get("version") != RECEIPT_VERSION:
        raise ReceiptError("not a Coopgate consent receipt")
    return claims
