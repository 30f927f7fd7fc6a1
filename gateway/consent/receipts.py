"""Signed consent receipts: a JWT (RFC 7519) in JWS compact serialization (RFC 7515),
signed with Ed25519 (the algorithm named ``Ed25519`` as RFC 9864 defines it, an OKP key
per RFC 8037) by the gateway's receipt key, through joserfc.

The protected header is ``{"alg": "Ed25519", "kid": <RFC 7638 thumbprint of the public
JWK>, "typ": "consent-receipt+jwt"}``. ``typ`` types the token explicitly (RFC 8725
§3.11) so that a receipt is never taken for another kind of JWT signed by the same key:
the payload is a JWT claims set, hence the ``+jwt`` suffix (as ``secevent+jwt``, RFC 8417,
and ``at+jwt``, RFC 9068); the ``application/`` prefix is left out as RFC 7515 §4.1.9
recommends. Kantara's receipt specification registers no media type of its own.

The claims follow the Kantara Consent Receipt v1.1 and ISO/IEC TS 27560 where they fit,
with JWT's registered claims where one exists for the field:

- ``jti``: the receipt's own id, one per event (Kantara ``consentReceiptID``); a grant
  and its withdrawal share ``consent_id`` but never a ``jti``;
- ``iat``: when the event happened, NumericDate (Kantara ``consentTimestamp``);
- ``iss``: the gateway issuing receipts (``COOPGATE_RECEIPT_ISSUER``);
- ``sub``: the customer as the partner that asked for the receipt knows them (their
  pairwise pseudonym, Kantara ``piiPrincipalId``) — the receipt holds no other
  customer data;
- ``controller``: name and contact of the data controller answering for the
  receipts (Kantara ``piiControllers``, configuration), ``jurisdiction`` and
  ``policy_url`` (Kantara ``jurisdiction``, ``policyUrl``; configuration);
  ``notice_version``: the notice the customer was shown (27560 notice);
- ``source_partner``, ``recipient_partners``, ``categories``, ``purposes``,
  ``legal_basis``, ``collected_by``, ``channel``, ``valid_from``, ``valid_until``
  (Kantara ``services``/``purposes``/``piiCategory``/``thirdPartyName``,
  ``collectionMethod``, ``termination``); ``event`` and ``state``: what this receipt
  records (27560's consent record event and state).

Receipts issued before (``alg`` ``EdDSA``, no ``typ``, a ``kid`` of 16 hex digits of the
raw key's SHA-256, claims version ``coopgate-consent-receipt/1``) still verify with the
same key; they keep their own claims.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coopgate.v1 import common_pb2, consents_pb2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from joserfc import jws
from joserfc.errors import BadSignatureError, JoseError, UnsupportedAlgorithmError
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import OKPKey
from joserfc.jws import JWSRegistry

from gateway.crypto.keyfiles import read_secret
from gateway.settings import Settings

RECEIPT_VERSION = "coopgate-consent-receipt/2"
RECEIPT_TYP = "consent-receipt+jwt"
ALGORITHM = "Ed25519"
LEGACY_VERSION = "coopgate-consent-receipt/1"
LEGACY_ALGORITHM = "EdDSA"


class ReceiptError(ValueError):
    """A receipt that is malformed or whose signature does not verify."""


@dataclass(frozen=True)
class ReceiptProfile:
    """Who issues the receipts and answers for them: the same on every receipt."""

    issuer: str
    controller: str
    contact: str
    jurisdiction: str
    policy_url: str

    @classmethod
    def from_settings(cls, settings: Settings) -> ReceiptProfile:
        return cls(
            issuer=settings.effective_receipt_issuer,
            controller=settings.effective_receipt_controller,
            contact=settings.effective_receipt_contact,
            jurisdiction=settings.receipt_jurisdiction,
            policy_url=settings.effective_receipt_policy_url,
        )


def legacy_key_id(public_key: bytes) -> str:
    """The ``kid`` of receipts issued before RFC 7638 thumbprints: 16 hex digits of the
    raw key's SHA-256."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def public_jwk(key: OKPKey) -> dict[str, Any]:
    """The verifier key as a JWK (RFC 7517, RFC 8037), named by its thumbprint."""
    return {
        **key.as_dict(private=False),
        "kid": key.thumbprint(),
        "alg": ALGORITHM,
        "use": "sig",
    }


class ReceiptSigner:
    def __init__(self, private_key: Ed25519PrivateKey, profile: ReceiptProfile) -> None:
        self._key = OKPKey.import_key(private_key)
        self.profile = profile
        self.public_key_bytes = private_key.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw
        )
        self.key_id = self._key.thumbprint()
        self.jwk = json.dumps(public_jwk(self._key), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_file(cls, path: Path, profile: ReceiptProfile) -> ReceiptSigner:
        """Load the 32-byte Ed25519 private key (random bytes), created on first use."""
        return cls(Ed25519PrivateKey.from_private_bytes(read_secret(path, 32)), profile)

    @classmethod
    def from_settings(cls, settings: Settings) -> ReceiptSigner:
        return cls.from_file(
            settings.secrets_dir / "receipt.key", ReceiptProfile.from_settings(settings)
        )

    def receipt(self, consent: consents_pb2.Consent, event: str) -> consents_pb2.ConsentReceipt:
        at = consent.events[-1].at if consent.events else consent.valid_from
        claims = {
            "version": RECEIPT_VERSION,
            "jti": f"rct-{uuid.uuid4().hex}",
            "iat": at.seconds,
            "iss": self.profile.issuer,
            "sub": consent.subject_id,
            "consent_id": consent.consent_id,
            "event": event,
            "state": consents_pb2.ConsentState.Name(consent.state)
            .removeprefix("CONSENT_STATE_")
            .lower(),
            "controller": {"name": self.profile.controller, "contact": self.profile.contact},
            "jurisdiction": self.profile.jurisdiction,
            "policy_url": self.profile.policy_url,
            "notice_version": consent.notice_version,
            "source_partner": consent.source_partner_id,
            "recipient_partners": list(consent.recipient_partner_ids),
            "categories": list(consent.categories),
            "purposes": list(consent.purposes),
            "legal_basis": consents_pb2.LegalBasis.Name(consent.legal_basis),
            "collected_by": consent.collected_by_partner_id,
            "channel": common_pb2.Channel.Name(consent.channel),
            "valid_from": consent.valid_from.ToJsonString(),
            "valid_until": (
                consent.valid_until.ToJsonString() if consent.HasField("valid_until") else None
            ),
        }
        payload = json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()
        header = {"alg": ALGORITHM, "kid": self.key_id, "typ": RECEIPT_TYP}
        token = jws.serialize_compact(header, payload, self._key, algorithms=[ALGORITHM])
        signature = token.rsplit(".", 1)[1]
        return consents_pb2.ConsentReceipt(
            payload=payload,
            signature=base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
            key_id=self.key_id,
            jws=token,
        )


def load_public_key(key: bytes | str) -> OKPKey:
    """The gateway's receipt key as published: a JWK (JSON text), a PEM public key, the
    raw 32 bytes, or those bytes in base64 (what ``receipt-key --format base64`` prints)."""
    try:
        if isinstance(key, bytes):
            if len(key) != 32:
                raise ReceiptError("an Ed25519 public key is 32 bytes")
            return OKPKey.import_key(Ed25519PublicKey.from_public_bytes(key))
        text = key.strip()
        if text.startswith("{"):
            jwk = json.loads(text)
            if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
                raise ReceiptError("the key is not an Ed25519 JWK (kty OKP, crv Ed25519)")
            parsed = OKPKey.import_key({k: v for k, v in jwk.items() if k != "d"})
        elif text.startswith("-----BEGIN"):
            parsed = OKPKey.import_key(text)
        else:
            return load_public_key(base64.b64decode(text, validate=True))
    except (JoseError, ValueError, TypeError, binascii.Error) as exc:
        if isinstance(exc, ReceiptError):
            raise
        raise ReceiptError(f"not an Ed25519 public key: {exc}") from exc
    if parsed.curve_name != "Ed25519":
        raise ReceiptError("the key is not an Ed25519 key")
    # The bare key (no alg, use or private part): the receipt's header names the
    # algorithm, checked against what each kind of receipt is signed with.
    public = parsed.as_dict(private=False)
    return OKPKey.import_key({name: public[name] for name in ("kty", "crv", "x")})


class _LegacyRegistry(JWSRegistry):
    """Receipts signed before RFC 9864 named the algorithm: ``EdDSA`` over the same
    Ed25519 key gives the same signature. joserfc warns on ``EdDSA`` (deprecated for
    new tokens); verifying what was issued under that name is deliberate, so only this
    registry, used for those receipts alone, takes it without the warning."""

    def get_alg(self, name: str) -> JWSAlgModel:
        if name != LEGACY_ALGORITHM:
            raise UnsupportedAlgorithmError(f"Algorithm of '{name}' is not allowed")
        return self.algorithms[name]


_LEGACY = _LegacyRegistry(algorithms=[LEGACY_ALGORITHM])


def verify_receipt(token: str, public_key: bytes | str) -> dict[str, Any]:
    """Verify a receipt offline with the gateway's public key (see `load_public_key`);
    returns its claims or raises ReceiptError."""
    key = load_public_key(public_key)
    token = token.strip()
    if token.count(".") != 2:
        raise ReceiptError("a receipt has three dot-separated parts")
    try:
        header = jws.extract_compact(token.encode()).headers()
    except (JoseError, ValueError) as exc:
        raise ReceiptError(f"receipt is not a JWS: {exc}") from exc
    if header.get("alg") == ALGORITHM:
        if header.get("typ") != RECEIPT_TYP:
            raise ReceiptError(f"not a consent receipt (typ is not {RECEIPT_TYP!r})")
        if header.get("kid") != key.thumbprint():
            raise ReceiptError("receipt was signed by another key")
        version, registry = RECEIPT_VERSION, None
    elif header.get("alg") == LEGACY_ALGORITHM and "typ" not in header:
        x = str(key.as_dict(private=False)["x"])
        raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
        if header.get("kid") != legacy_key_id(raw):
            raise ReceiptError("receipt was signed by another key")
        version, registry = LEGACY_VERSION, _LEGACY
    else:
        raise ReceiptError(f"receipt is not signed with {ALGORITHM}")
    try:
        verified = jws.deserialize_compact(
            token, key, algorithms=[header["alg"]], registry=registry
        )
    except BadSignatureError as exc:
        raise ReceiptError("signature does not verify: the receipt was altered") from exc
    except JoseError as exc:
        raise ReceiptError(f"receipt does not verify: {exc}") from exc
    try:
        claims = json.loads(verified.payload)
    except ValueError as exc:
        raise ReceiptError("receipt payload is not JSON") from exc
    if not isinstance(claims, dict) or claims.get("version") != version:
        raise ReceiptError("not a Coopgate consent receipt")
    return claims
