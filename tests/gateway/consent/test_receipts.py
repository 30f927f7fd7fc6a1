"""Receipts offline, without a gateway: those issued before RFC 9864 naming still
verify, and a receipt that is not typed as one, or names another algorithm, does not;
the two independent JOSE libraries the API's receipts are checked with
(test_consent_api.py)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping

import pytest
from coopgate.v1 import common_pb2, consents_pb2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from joserfc import jws as joserfc_jws
from joserfc.jwk import OKPKey
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jws as jwcrypto_jws

from gateway.consent.receipts import (
    ReceiptError,
    ReceiptProfile,
    ReceiptSigner,
    verify_receipt,
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(
    private: Ed25519PrivateKey, header: Mapping[str, str], claims: Mapping[str, object]
) -> str:
    """A JWS compact serialization made by hand, as the gateway made receipts until
    they were signed through joserfc."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(private.sign(signing_input.encode()))}"


def jwcrypto_claims(token: str, jwk_json: str) -> dict[str, object]:
    """Verify a receipt with jwcrypto, a JOSE library independent of the gateway's."""
    verifier = jwcrypto_jws.JWS()
    verifier.deserialize(token)
    verifier.allowed_algs = ["Ed25519"]
    verifier.verify(jwcrypto_jwk.JWK.from_json(jwk_json))
    claims: dict[str, object] = json.loads(verifier.payload)
    return claims


def joserfc_claims(token: str, jwk_json: str) -> dict[str, object]:
    """Verify a receipt with joserfc straight, the gateway's code left out."""
    verified = joserfc_jws.deserialize_compact(
        token, OKPKey.import_key(json.loads(jwk_json)), algorithms=["Ed25519"]
    )
    claims: dict[str, object] = json.loads(verified.payload)
    return claims


@pytest.fixture
def private() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def raw(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_receipts_issued_before_still_verify(private: Ed25519PrivateKey) -> None:
    legacy_kid = hashlib.sha256(raw(private)).hexdigest()[:16]
    claims = {"version": "coopgate-consent-receipt/1", "consent_id": "cns-1", "event": "given"}
    token = signed(private, {"alg": "EdDSA", "kid": legacy_kid}, claims)
    signer = ReceiptSigner(private, ReceiptProfile("iss", "controller", "contact", "EU", "url"))
    assert verify_receipt(token, signer.jwk) == claims
    assert verify_receipt(token, raw(private)) == claims

    other = Ed25519PrivateKey.generate()
    with pytest.raises(ReceiptError, match="another key"):
        verify_receipt(token, raw(other))
    header, payload, _ = token.split(".")
    forged = signed(other, {"alg": "EdDSA", "kid": legacy_kid}, claims).split(".")[2]
    with pytest.raises(ReceiptError, match="altered"):
        verify_receipt(f"{header}.{payload}.{forged}", raw(private))


def test_only_typed_ed25519_receipts_of_the_key_verify(private: Ed25519PrivateKey) -> None:
    signer = ReceiptSigner(private, ReceiptProfile("iss", "controller", "contact", "EU", "url"))
    consent = consents_pb2.Consent(
        consent_id="cns-1",
        subject_id="sub_1",
        state=consents_pb2.CONSENT_STATE_GIVEN,
        channel=common_pb2.CHANNEL_PHONE,
    )
    receipt = signer.receipt(consent, "given")
    claims = verify_receipt(receipt.jws, signer.jwk)
    assert claims["sub"] == "sub_1"
    assert claims["iss"] == "iss"
    assert claims["controller"] == {"name": "controller", "contact": "contact"}
    assert signer.receipt(consent, "given").jws != receipt.jws  # a receipt id of its own

    kid = signer.key_id
    for header, problem in (
        ({"alg": "Ed25519", "kid": kid}, "typ"),
        ({"alg": "Ed25519", "kid": kid, "typ": "JWT"}, "typ"),
        ({"alg": "EdDSA", "kid": kid, "typ": "consent-receipt+jwt"}, "Ed25519"),
        ({"alg": "none", "kid": kid, "typ": "consent-receipt+jwt"}, "Ed25519"),
        ({"alg": "Ed25519", "kid": "other", "typ": "consent-receipt+jwt"}, "another key"),
    ):
        with pytest.raises(ReceiptError, match=problem):
            verify_receipt(signed(private, header, claims), signer.jwk)
    with pytest.raises(ReceiptError, match="Coopgate consent receipt"):
        verify_receipt(
            signed(private, {"alg": "Ed25519", "kid": kid, "typ": "consent-receipt+jwt"}, {}),
            signer.jwk,
        )


@pytest.mark.parametrize(
    "key",
    [
        "",
        "not base64!",
        base64.b64encode(bytes(31)).decode(),
        '{"kty": "RSA", "n": "AQAB", "e": "AQAB"}',
        '{"kty": "OKP", "crv": "X25519", "x": "AAAA"}',
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
    ],
)
def test_a_key_that_is_not_an_ed25519_public_key_is_refused(
    private: Ed25519PrivateKey, key: str
) -> None:
    signer = ReceiptSigner(private, ReceiptProfile("iss", "controller", "contact", "EU", "url"))
    receipt = signer.receipt(consents_pb2.Consent(consent_id="cns-1"), "given")
    with pytest.raises(ReceiptError):
        verify_receipt(receipt.jws, key)
