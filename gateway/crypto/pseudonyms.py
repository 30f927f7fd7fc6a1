"""Pairwise pseudonymous subject ids: each partner sees a different, stable id
for the same customer, and only the gateway can map it back.

The pseudonym is AES-SIV (deterministic authenticated encryption) of the
internal subject id, with the partner id as associated data: stable for one
partner, unlinkable across partners, reversible by the gateway without a
lookup table, and a pseudonym presented by the wrong partner does not decrypt.
"""

from __future__ import annotations

import base64
import functools
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from gateway.core.errors import InvalidArgument
from gateway.crypto.keyfiles import read_secret

_PREFIX = "sub_"
#: Pseudonyms kept, by (partner, subject).
PSEUDONYM_CACHE = 8192
KEY_BYTES = 64  # AES-256-SIV


class Pseudonyms:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"pseudonym key must be {KEY_BYTES} bytes")
        self._siv = AESSIV(key)
        self._for_partner = functools.lru_cache(maxsize=PSEUDONYM_CACHE)(self._seal)

    @classmethod
    def from_file(cls, path: Path) -> Pseudonyms:
        return cls(read_secret(path, KEY_BYTES))

    def for_partner(self, partner_id: str, subject_id: str) -> str:
        """``subject_id`` is the internal id (32 hex digits). A pure function of its
        arguments (deterministic encryption), so the most recent are kept."""
        return self._for_partner(partner_id, subject_id)

    def _seal(self, partner_id: str, subject_id: str) -> str:
        sealed = self._siv.encrypt(bytes.fromhex(subject_id), [partner_id.encode()])
        return _PREFIX + base64.b32encode(sealed).decode().rstrip("=").lower()

    def resolve(self, partner_id: str, pseudonym: str, field: str = "subject_id") -> str:
        """The internal subject behind ``pseudonym`` as issued to ``partner_id``."""
        if not pseudonym.startswith(_PREFIX):
            raise InvalidArgument.field(field, "is not a subject id issued to this partner")
        body = pseudonym[len(_PREFIX) :].upper()
        try:
            sealed = base64.b32decode(body + "=" * (-len(body) % 8))
            return self._siv.decrypt(sealed, [partner_id.encode()]).hex()
        except (ValueError, InvalidTag):
            raise InvalidArgument.field(
                field, "is not a subject id issued to this partner"
            ) from None
